package nodeclient_test

import (
	"context"
	"errors"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zfaas/zfaas/identity/ca"
	"github.com/zfaas/zfaas/runtime/nodeclient"
)

// TestTLCPSourceRenews: the GM double SVID is minted on first use, kept
// until half life, and renewed with the worker SVID by Run.
func TestTLCPSourceRenews(t *testing.T) {
	c, _, addr := serveSuite(t, 4*time.Second, ca.SuiteGM)
	w := join(t, c, addr)
	src := w.TLCPSource()
	sign, enc, err := src.GetTLCPCertificates()
	if err != nil {
		t.Fatalf("first use: %v", err)
	}
	if again, _, _ := src.GetTLCPCertificates(); again != sign {
		t.Error("minted again before half life")
	}
	if sign.Leaf.Equal(enc.Leaf) || sign.Leaf.URIs[0].String() != w.ID().String() {
		t.Errorf("got sign %v and enc %v, want two certificates for %s", sign.Leaf.URIs, enc.Leaf.URIs, w.ID())
	}

	changed := w.Changed()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- w.Run(ctx) }()
	select {
	case <-changed:
	case <-time.After(10 * time.Second):
		t.Fatal("no worker renewal within 10 s of a 4 s SVID")
	}
	ws, _ := w.GetX509SVID()
	deadline := time.Now().Add(5 * time.Second)
	for {
		s, _, err := src.GetTLCPCertificates()
		if err != nil {
			t.Fatal(err)
		}
		if s != sign {
			if s.Leaf.NotAfter.After(ws.Certificates[0].NotAfter) {
				t.Errorf("renewed pair expires %v, after the worker SVID (%v)", s.Leaf.NotAfter, ws.Certificates[0].NotAfter)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("the GM pair was not renewed with the worker SVID")
		}
		time.Sleep(50 * time.Millisecond)
	}
	cancel()
	<-done
}

func TestTLCPSourceStandard(t *testing.T) {
	c, _, addr := serve(t, 0)
	w := join(t, c, addr)
	if _, _, err := w.TLCPSource().GetTLCPCertificates(); !errors.Is(err, nodeclient.ErrGMDisabled) {
		t.Errorf("got %v, want ErrGMDisabled", err)
	}
	if err := w.RenewGM(context.Background()); !errors.Is(err, nodeclient.ErrGMDisabled) {
		t.Errorf("RenewGM: got %v, want ErrGMDisabled", err)
	}
}

// TestTLCPSourceHalfLife: past half of its life (by the worker's clock)
// the next handshake gets a new pair, without Run.
func TestTLCPSourceHalfLife(t *testing.T) {
	c, _, addr := serveSuite(t, 10*time.Minute, ca.SuiteGM)
	var skew atomic.Int64
	now := func() time.Time { return time.Now().Add(time.Duration(skew.Load())) }
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	w, err := nodeclient.Join(ctx, nodeclient.Config{Addr: addr, Bundle: c.Bundles().X509, Node: "w1", JoinToken: "t1", Now: now})
	if err != nil {
		t.Fatal(err)
	}
	defer w.Close()
	src := w.TLCPSource()
	first, _, err := src.GetTLCPCertificates()
	if err != nil {
		t.Fatal(err)
	}
	skew.Store(int64(4 * time.Minute))
	if s, _, _ := src.GetTLCPCertificates(); s != first {
		t.Error("renewed before half life")
	}
	skew.Store(int64(6 * time.Minute))
	s, _, err := src.GetTLCPCertificates()
	if err != nil {
		t.Fatal(err)
	}
	if s == first || s.Leaf.SerialNumber.Cmp(first.Leaf.SerialNumber) == 0 {
		t.Error("not renewed past half life")
	}
}
