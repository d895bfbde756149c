package gateway

import (
	"context"
	"net/http"

	"github.com/zfaas/zfaas/api"
)

// EgressInspector reports a function's egress rules (the worker's egress
// enforcement implements it).
type EgressInspector interface {
	EgressView(ctx context.Context, tenant, function string) (api.EgressView, error)
}

// handleEgress serves GET /v1/functions/{name}/egress (action "read").
func (g *Gateway) handleEgress(w http.ResponseWriter, r *http.Request) {
	name := r.PathValue("name")
	if err := g.authorizeControl(r, "read", name); err != nil {
		g.writeError(w, r, err)
		return
	}
	if _, err := g.reg.loadFunction(r.Context(), g.cfg.Tenant, name); err != nil {
		g.writeError(w, r, err)
		return
	}
	v, err := g.cfg.Egress.EgressView(r.Context(), g.cfg.Tenant, name)
	if err != nil {
		g.writeError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, v)
}
