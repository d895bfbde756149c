package micro

import (
	"bytes"
	"context"
	"net/http"
	"net/http/httptest"
	"testing"

	"github.com/zfaas/zfaas/audit"
	"github.com/zfaas/zfaas/gateway"
)

// BenchmarkGatewayInvokeAudit measures the gateway's invoke path (as
// BenchmarkGatewayInvoke: a worker that answers at once and an allow-all
// policy, so the gateway's own cost is measured) with the audit trail on —
// a decision and an invocation record per call, hashed, batched and written
// to the embedded JetStream — beside the baseline with the trail off.
// Invocations per second = 1e9 / ns/op; the ratio of the two is the trail's
// cost on the invoke path.
func BenchmarkGatewayInvokeAudit(b *testing.B) {
	ctx, st := openStore(b)
	lg, err := audit.Open(ctx, audit.Config{Store: st, KeyDir: b.TempDir()})
	if err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = lg.Close(context.Background()) })
	newGateway := func(a gateway.AuditLog) *gateway.Gateway {
		gw, err := gateway.New(ctx, gateway.Config{Store: st, Invoker: echoInvoker{}, Authorizer: allowAll{}, Audit: a, TempDir: b.TempDir()})
		if err != nil {
			b.Fatal(err)
		}
		return gw
	}
	withAudit, without := newGateway(lg), newGateway(nil)
	publish(ctx, b, withAudit.Registry())
	body := []byte(`{"name":"bench"}`)
	serve := func(b *testing.B, h http.Handler) {
		b.ReportAllocs()
		for b.Loop() {
			w := httptest.NewRecorder()
			h.ServeHTTP(w, httptest.NewRequest(http.MethodPost, "/v1/functions/fn/invoke", bytes.NewReader(body)))
			if w.Code != http.StatusOK {
				b.Fatalf("got status %d, want 200: %s", w.Code, w.Body)
			}
		}
	}
	b.Run("audit", func(b *testing.B) {
		before := lg.Stats()
		serve(b, withAudit)
		b.StopTimer()
		_ = lg.Flush(ctx)
		after := lg.Stats()
		b.ReportMetric(float64(after.Appended-before.Appended)/float64(b.N), "records/op")
		if d := after.Dropped - before.Dropped; d > 0 {
			b.ReportMetric(float64(d)/float64(b.N), "dropped/op")
		}
	})
	b.Run("baseline-no-audit", func(b *testing.B) { serve(b, without) })
}
