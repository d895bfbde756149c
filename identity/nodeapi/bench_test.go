package nodeapi_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/zfaas/zfaas/identity/ca"
	"github.com/zfaas/zfaas/runtime/nodeclient"
)

// BenchmarkAdmitTPM measures a worker's admission end to end against a
// software TPM: a new mTLS gRPC connection, the attestation stream (EK
// certificate chain, credential activation, quote and binding quote over
// PCRs 0-7, policy) and the issued worker SVID — beside the floor of
// issuing that SVID without any attestation (CA MintX509SVID with a fresh
// key).
func BenchmarkAdmitTPM(b *testing.B) {
	m := newMachine(b, "w1")
	e := newEnv(b, envOpts{roots: []*x509.Certificate{m.sim.Root}, admission: admission{GoldenPCRs: zeroPCRs()}})
	b.Run("admission", func(b *testing.B) {
		for b.Loop() {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			w, err := nodeclient.Join(ctx, nodeclient.Config{Addr: e.addr, Bundle: e.bundle, Node: "w1", Attester: m.att})
			cancel()
			if err != nil {
				b.Fatal(err)
			}
			w.Close()
		}
	})
	b.Run("baseline-mint-worker-svid", func(b *testing.B) {
		id := spiffeid.RequireFromString("spiffe://" + e.ca.TrustDomain().Name() + "/worker/w1")
		for b.Loop() {
			k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
			if _, err := e.ca.MintX509SVID(context.Background(), ca.X509Params{ID: id, PublicKey: k.Public()}); err != nil {
				b.Fatal(err)
			}
		}
	})
}
