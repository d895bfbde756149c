package attest_test

import (
	"context"
	"crypto/x509"
	"encoding/binary"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	vattest "github.com/zfaas/zfaas/identity/attest"
	"github.com/zfaas/zfaas/runtime/attest"
	"github.com/zfaas/zfaas/runtime/attest/swtpmtest"
)

func TestAttesterHello(t *testing.T) {
	sim := swtpmtest.Start(t)
	tpm := sim.Open(t)
	for _, tc := range []struct {
		kind attest.EKKind
		want string
	}{{attest.EKRSA, "*rsa.PublicKey"}, {attest.EKECC, "*ecdsa.PublicKey"}} {
		t.Run(string(tc.kind), func(t *testing.T) {
			a, err := attest.New(context.Background(), attest.Config{TPM: tpm, Node: "w1", EK: tc.kind, EventLog: "-"})
			if err != nil {
				t.Fatal(err)
			}
			h := a.Hello()
			cert, err := x509.ParseCertificate(h.EKCert)
			if err != nil {
				t.Fatalf("EK certificate: %v", err)
			}
			if err := cert.CheckSignatureFrom(sim.Intermediate); err != nil {
				t.Errorf("EK certificate not signed by the swtpm local CA: %v", err)
			}
			if got := fmt.Sprintf("%T", cert.PublicKey); got != tc.want {
				t.Errorf("got EK key %s, want %s", got, tc.want)
			}
			if err := a.Close(); err != nil {
				t.Fatalf("close: %v", err)
			}
		})
	}
	// Close flushed every transient object.
	caps, err := tpm2.GetCapability{Capability: tpm2.TPMCapHandles, Property: uint32(tpm2.TPMHTTransient) << 24, PropertyCount: 16}.Execute(tpm)
	if err != nil {
		t.Fatal(err)
	}
	hs, _ := caps.CapabilityData.Data.Handles()
	if len(hs.Handle) != 0 {
		t.Errorf("got %d transient objects left, want 0", len(hs.Handle))
	}
}

func TestAttesterConfig(t *testing.T) {
	if _, err := attest.New(context.Background(), attest.Config{Node: "w1"}); err == nil {
		t.Error("no TPM: got nil error")
	}
}

// TestDialTCPFraming: a server that claims a 100 MiB response is cut off,
// and a short response is read whole.
func TestDialTCPFraming(t *testing.T) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for i := 0; i < 2; i++ {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			buf := make([]byte, 12)
			c.Read(buf)
			hdr := make([]byte, 10)
			binary.BigEndian.PutUint16(hdr, 0x8001)
			if i == 0 {
				binary.BigEndian.PutUint32(hdr[2:], 100<<20)
				c.Write(hdr)
			} else {
				// Written in two pieces: the reader must not stop at the first.
				binary.BigEndian.PutUint32(hdr[2:], 14)
				c.Write(hdr)
				time.Sleep(10 * time.Millisecond)
				c.Write([]byte{1, 2, 3, 4})
			}
			c.Close()
		}
	}()
	for i, wantErr := range []bool{true, false} {
		tpm, err := attest.DialTCP(context.Background(), ln.Addr().String(), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		rsp, err := tpm.Send(make([]byte, 12))
		tpm.Close()
		if (err != nil) != wantErr {
			t.Errorf("case %d: got %v, want error %v", i, err, wantErr)
		}
		if !wantErr && len(rsp) != 14 {
			t.Errorf("got %d bytes, want 14", len(rsp))
		}
	}
}

func TestEventLogFile(t *testing.T) {
	sim := swtpmtest.Start(t)
	tpm := sim.Open(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "binary_bios_measurements")
	if err := os.WriteFile(path, []byte("log bytes"), 0o600); err != nil {
		t.Fatal(err)
	}
	roots := x509.NewCertPool()
	roots.AddCert(sim.Root)
	inter := x509.NewCertPool()
	inter.AddCert(sim.Intermediate)
	v, err := vattest.New(vattest.Config{Roots: roots, Intermediates: inter, Admitter: allow{}})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	for _, tc := range []struct {
		path string
		want string
	}{{path, "log bytes"}, {filepath.Join(dir, "absent"), ""}} {
		a, err := attest.New(ctx, attest.Config{TPM: tpm, Node: "w1", EventLog: tc.path})
		if err != nil {
			t.Fatal(err)
		}
		ch, err := v.Challenge(ctx, a.Hello())
		if err != nil {
			t.Fatal(err)
		}
		ev, err := a.Answer(ctx, ch)
		if err != nil {
			t.Fatal(err)
		}
		if string(ev.EventLog) != tc.want {
			t.Errorf("got event log %q, want %q", ev.EventLog, tc.want)
		}
		a.Close()
	}
}

type allow struct{}

func (allow) Admit(context.Context, vattest.Claims) (bool, []string, error) { return true, nil, nil }
