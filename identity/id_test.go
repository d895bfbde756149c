package identity_test

import (
	"errors"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/zfaas/zfaas/identity"
)

func TestIDs(t *testing.T) {
	td := spiffeid.RequireTrustDomainFromString("zfaas.local")
	tests := []struct {
		name string
		fn   func() (spiffeid.ID, error)
		want string
		kind identity.Kind
	}{
		{"function", func() (spiffeid.ID, error) { return identity.FunctionID(td, "acme", "hello-world") }, "spiffe://zfaas.local/ns/acme/fn/hello-world", identity.KindFunction},
		{"worker", func() (spiffeid.ID, error) { return identity.WorkerID(td, "node-1") }, "spiffe://zfaas.local/worker/node-1", identity.KindWorker},
		{"gateway", func() (spiffeid.ID, error) { return identity.GatewayID(td, "gw0") }, "spiffe://zfaas.local/gateway/gw0", identity.KindGateway},
		{"policyd", func() (spiffeid.ID, error) { return identity.PolicydID(td, "p0") }, "spiffe://zfaas.local/policyd/p0", identity.KindPolicyd},
		{"user", func() (spiffeid.ID, error) { return identity.UserID(td, "alice") }, "spiffe://zfaas.local/user/alice", identity.KindUser},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			id, err := tt.fn()
			if err != nil {
				t.Fatal(err)
			}
			if id.String() != tt.want {
				t.Errorf("got %s, want %s", id, tt.want)
			}
			n, err := identity.Parse(id)
			if err != nil || n.Kind != tt.kind {
				t.Errorf("Parse: got %+v, %v, want kind %s", n, err, tt.kind)
			}
		})
	}
	bad := []func() (spiffeid.ID, error){
		func() (spiffeid.ID, error) { return identity.FunctionID(td, "", "x") },
		func() (spiffeid.ID, error) { return identity.FunctionID(td, "acme", "..") },
		func() (spiffeid.ID, error) { return identity.FunctionID(td, "a/b", "x") },
		func() (spiffeid.ID, error) { return identity.FunctionID(td, "Acme", "x") },
		func() (spiffeid.ID, error) { return identity.WorkerID(td, "node 1") },
		func() (spiffeid.ID, error) { return identity.UserID(spiffeid.TrustDomain{}, "alice") },
	}
	for i, fn := range bad {
		if _, err := fn(); !errors.Is(err, identity.ErrInvalidName) {
			t.Errorf("bad %d: got %v, want %v", i, err, identity.ErrInvalidName)
		}
	}
	if _, err := identity.Parse(spiffeid.RequireFromString("spiffe://zfaas.local/ns/acme/svc/x")); err == nil {
		t.Error("Parse of foreign layout: got nil error")
	}
}
