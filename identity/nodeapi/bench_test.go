package nodeapi_test

import (
	"context"
	"crypto/x509"
	"testing"
	"time"

	"github.com/zfaas/zfaas/runtime/nodeclient"
)

// BenchmarkAdmitTPM measures one admission end to end: TLS dial, Attest
// stream, two activations and quotes on swtpm, verification, the shipped
// admission policy in real OPA, and the worker SVID.
func BenchmarkAdmitTPM(b *testing.B) {
	m := newMachine(b, "w1")
	e := newEnv(b, envOpts{roots: []*x509.Certificate{m.sim.Root}, admission: admission{GoldenPCRs: zeroPCRs()}})
	b.ResetTimer()
	for b.Loop() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		w, err := nodeclient.Join(ctx, nodeclient.Config{Addr: e.addr, Bundle: e.bundle, Node: "w1", Attester: m.att})
		cancel()
		if err != nil {
			b.Fatal(err)
		}
		w.Close()
	}
}
