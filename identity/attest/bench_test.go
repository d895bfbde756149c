package attest_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"testing"

	rattest "github.com/zfaas/zfaas/runtime/attest"
)

// BenchmarkAttestRound is one full attestation against swtpm: challenge
// (MakeCredential), activation, quote, PCR reads, verify.
func BenchmarkAttestRound(b *testing.B) {
	n := newNodeTB(b, rattest.EKRSA)
	v := newVerifierTB(b, n)
	ctx := context.Background()
	for b.Loop() {
		ch, err := v.Challenge(ctx, withChain(n))
		if err != nil {
			b.Fatal(err)
		}
		ev, err := n.att.Answer(ctx, ch)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := v.Verify(ctx, ev); err != nil {
			b.Fatal(err)
		}
	}
}

// BenchmarkECDSABaseline is the in-process ECDSA P-256 sign+verify the
// attestation round is compared with.
func BenchmarkECDSABaseline(b *testing.B) {
	k, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	d := sha256.Sum256([]byte("nonce"))
	for b.Loop() {
		sig, err := ecdsa.SignASN1(rand.Reader, k, d[:])
		if err != nil || !ecdsa.VerifyASN1(&k.PublicKey, d[:], sig) {
			b.Fatal("ecdsa")
		}
	}
}
