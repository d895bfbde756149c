// Package swtpmtest runs a software TPM 2.0 (swtpm) on loopback for tests
// of the attester and the verifier: a fresh TPM per test in a temp
// directory (runtime/attest/swtpm), killed and removed when the test ends.
//
// This package is for tests only; production code must never import it.
package swtpmtest

import (
	"context"
	"crypto/x509"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2/transport"

	"github.com/zfaas/zfaas/runtime/attest/swtpm"
)

// TPM is one running swtpm instance.
type TPM struct {
	// Dir holds the TPM state and its local CA.
	Dir string
	// CommandAddr and CtrlAddr are the loopback addresses of the TPM
	// command channel and the swtpm control channel.
	CommandAddr, CtrlAddr string
	// Root is the local CA's self-signed root certificate: the
	// "manufacturer root" the verifier must trust for this TPM.
	Root *x509.Certificate
	// Intermediate is the local CA's issuing certificate, which signed
	// the EK certificates.
	Intermediate *x509.Certificate

	t *swtpm.TPM
}

// Available reports whether swtpm and swtpm_setup are on PATH, and if
// not, why.
func Available() (bool, string) { return swtpm.Available() }

// Start manufactures and starts a new swtpm, skipping the test when swtpm
// is not installed. It fails the test on any other error.
func Start(tb testing.TB) *TPM {
	tb.Helper()
	if ok, why := Available(); !ok {
		tb.Skip(why)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	t, err := swtpm.Manufacture(ctx, tb.TempDir())
	if err != nil {
		tb.Fatal(err)
	}
	if err := t.Serve(ctx); err != nil {
		tb.Fatal(err)
	}
	tb.Cleanup(func() { t.Close() })
	return &TPM{Dir: t.Dir, CommandAddr: t.CommandAddr, CtrlAddr: t.CtrlAddr, Root: t.Root, Intermediate: t.Intermediate, t: t}
}

// Open connects to the TPM; the connection is closed when the test ends.
// swtpm serves one connection at a time: close it before opening another.
func (t *TPM) Open(tb testing.TB) transport.TPMCloser {
	tb.Helper()
	tpm, err := t.t.Open(context.Background())
	if err != nil {
		tb.Fatalf("open swtpm: %v", err)
	}
	tb.Cleanup(func() { tpm.Close() })
	return tpm
}

// Roots returns a pool holding only this TPM's local CA root.
func (t *TPM) Roots() *x509.CertPool { return t.t.Roots() }
