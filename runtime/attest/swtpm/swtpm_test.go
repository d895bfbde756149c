package swtpm

import (
	"context"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
)

// TestManufactureOnceServeAgain: a TPM manufactured in a directory keeps
// its identity (the same local CA) across Manufacture calls and restarts
// of the swtpm process.
func TestManufactureOnceServeAgain(t *testing.T) {
	if ok, why := Available(); !ok {
		t.Skip(why)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dir := t.TempDir()
	a, err := Manufacture(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		if err := a.Serve(ctx); err != nil {
			t.Fatal(err)
		}
		c, err := a.Open(ctx)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := (tpm2.GetRandom{BytesRequested: 4}).Execute(c); err != nil {
			t.Fatal(err)
		}
		c.Close()
		a.Close()
	}
	b, err := Manufacture(ctx, dir)
	if err != nil {
		t.Fatal(err)
	}
	if !b.Root.Equal(a.Root) || !b.Intermediate.Equal(a.Intermediate) {
		t.Fatal("a second Manufacture in the same directory made another TPM")
	}
	if _, err := b.Open(ctx); err == nil {
		t.Fatal("Open before Serve succeeded")
	}
}
