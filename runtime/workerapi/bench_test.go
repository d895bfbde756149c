package workerapi_test

import (
	"bytes"
	"context"
	"testing"

	"github.com/zfaas/zfaas/api"
)

// BenchmarkRemoteInvoke measures what the remote path adds to an
// invocation: "baseline-local" calls the invoker directly, "remote" goes
// through the Client and Server over mutual TLS on loopback. The ratio of
// the two is the overhead of a remote worker.
func BenchmarkRemoteInvoke(b *testing.B) {
	p := newPKI(b)
	local := &fakeLocal{fn: echo}
	ts := startServer(b, p, local)
	c := dial(b, p, ts.addr, gatewayID, workerID)
	inv := api.Invocation{ID: "bench", Version: testVersion(api.ModeLambda), Payload: bytes.Repeat([]byte("x"), 1<<10)}
	ctx := context.Background()
	// One call up front so the connection and handshake are not measured.
	if _, err := c.Invoke(ctx, inv); err != nil {
		b.Fatal(err)
	}
	for _, bc := range []struct {
		name   string
		invoke func(context.Context, api.Invocation) (*api.InvocationResult, error)
	}{
		{"baseline-local", local.Invoke},
		{"remote", c.Invoke},
	} {
		b.Run(bc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := bc.invoke(ctx, inv); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
