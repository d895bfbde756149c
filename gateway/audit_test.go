package gateway

import (
	"bytes"
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zfaas/zfaas/api"
	"github.com/zfaas/zfaas/audit"
	"github.com/zfaas/zfaas/gateway/client"
	"github.com/zfaas/zfaas/store"
)

const auditAdmin = "spiffe://zfaas.local/user/admin"

// headerCaller authenticates the caller named by the X-Test-Caller header.
type headerCaller struct{}

func (headerCaller) Authenticate(r *http.Request) (Caller, error) {
	if id := r.Header.Get("X-Test-Caller"); id != "" {
		return CallerFromID(id, "x509"), nil
	}
	return Anonymous, nil
}

// adminOnly allows the deploy entry point's actions to auditAdmin only and
// remembers the actions it was asked about.
type adminOnly struct {
	mu      sync.Mutex
	actions []string
}

func (a *adminOnly) Decide(_ context.Context, entry string, input map[string]any) (Decision, error) {
	a.mu.Lock()
	a.actions = append(a.actions, entry+":"+input["action"].(string))
	a.mu.Unlock()
	c := input["caller"].(map[string]any)
	return Decision{ID: "d", Allow: entry == "deploy" && c["spiffe_id"] == auditAdmin}, nil
}

type noInvoker struct{}

func (noInvoker) Invoke(context.Context, api.Invocation) (*api.InvocationResult, error) {
	return nil, errors.New("no invocations here")
}

// as sets X-Test-Caller on every request.
type as struct {
	id   string
	next http.RoundTripper
}

func (a as) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("X-Test-Caller", a.id)
	return a.next.RoundTrip(r)
}

func TestAuditExportEndpoint(t *testing.T) {
	ctx, cancel := context.WithTimeout(t.Context(), time.Minute)
	defer cancel()
	st, err := store.Open(ctx, store.Config{DataDir: filepath.Join(t.TempDir(), "nats"), SpoolDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	defer st.Close()
	keyDir := t.TempDir()
	lg, err := audit.Open(ctx, audit.Config{Store: st, KeyDir: keyDir})
	if err != nil {
		t.Fatal(err)
	}
	defer lg.Close(ctx)
	for i, k := range []string{audit.KindDeploy, audit.KindDecision, audit.KindDecision, audit.KindSVIDIssued} {
		if _, err := lg.AppendSync(ctx, audit.Record{Kind: k, Actor: auditAdmin, Subject: "acme/f", Details: map[string]any{"i": i}}); err != nil {
			t.Fatal(err)
		}
	}
	authz := &adminOnly{}
	g, err := New(ctx, Config{Store: st, Invoker: noInvoker{}, Authorizer: authz, Authenticator: headerCaller{}, Audit: lg})
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewServer(g)
	defer srv.Close()
	clientAs := func(id string) *client.Client {
		c, err := client.New(srv.URL, &http.Client{Transport: as{id, http.DefaultTransport}})
		if err != nil {
			t.Fatal(err)
		}
		return c
	}
	admin := clientAs(auditAdmin)

	var buf bytes.Buffer
	if err := admin.AuditExport(ctx, client.AuditQuery{}, &buf); err != nil {
		t.Fatalf("AuditExport: %v", err)
	}
	keys, err := audit.ReadPublicKeys(keyDir)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := audit.Verify(bytes.NewReader(buf.Bytes()), keys...)
	// Four records, and perhaps the decision on this very export, which
	// the gateway records too.
	if err != nil || !rep.OK() || rep.Records < 4 || rep.Records > 5 {
		t.Fatalf("exported trail: got %+v, %v; want 4 or 5 verified records", rep, err)
	}
	authz.mu.Lock()
	if len(authz.actions) != 1 || authz.actions[0] != "deploy:audit.export" {
		t.Errorf("authorization asked: got %v, want [deploy:audit.export]", authz.actions)
	}
	authz.mu.Unlock()

	buf.Reset()
	if err := admin.AuditExport(ctx, client.AuditQuery{Kinds: []string{"decision"}, Format: "cef", Since: "1h"}, &buf); err != nil {
		t.Fatalf("AuditExport cef: %v", err)
	}
	// The two appended above plus the gateway's own decisions on the
	// exports (none to two, depending on when the log writes them).
	if n := strings.Count(buf.String(), "|decision|policy decision|"); n < 2 || n > 4 || strings.Contains(buf.String(), "|deploy|") {
		t.Errorf("cef decisions export: got %d decisions in\n%s", n, buf.String())
	}

	// Refusals, as the JSON error body.
	tests := []struct {
		name   string
		c      *client.Client
		q      client.AuditQuery
		status int
		code   string
	}{
		{"user is denied", clientAs("spiffe://zfaas.local/user/alice"), client.AuditQuery{}, http.StatusForbidden, CodeForbidden},
		{"anonymous is denied", clientAs(""), client.AuditQuery{}, http.StatusForbidden, CodeForbidden},
		{"bad format", admin, client.AuditQuery{Format: "xml"}, http.StatusBadRequest, CodeBadRequest},
		{"bad since", admin, client.AuditQuery{Since: "yesterday"}, http.StatusBadRequest, CodeBadRequest},
		{"bad kind", admin, client.AuditQuery{Kinds: []string{"Decision!"}}, http.StatusBadRequest, CodeBadRequest},
		{"until before since", admin, client.AuditQuery{Since: "2025-01-02T00:00:00Z", Until: "2025-01-01T00:00:00Z"}, http.StatusBadRequest, CodeBadRequest},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var out bytes.Buffer
			err := tt.c.AuditExport(ctx, tt.q, &out)
			var ae *client.APIError
			if !errors.As(err, &ae) || ae.Status != tt.status || ae.Code != tt.code {
				t.Fatalf("got %v, want %d %s", err, tt.status, tt.code)
			}
			if out.Len() != 0 {
				t.Errorf("refused export wrote %q", out.String())
			}
		})
	}

	pub, err := clientAs("").AuditKeys(ctx)
	if err != nil || strings.TrimSpace(string(pub)) != lg.Verifier().String() {
		t.Errorf("AuditKeys: got %q, %v; want %s", pub, err, lg.Verifier())
	}
}
