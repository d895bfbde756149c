package gateway

import (
	"context"
	"errors"
	"net/http"
	"strings"

	"github.com/zfaas/zfaas/api"
	"github.com/zfaas/zfaas/audit"
)

// WorkerAdmin lists the workers of the cluster and drains them (the
// cluster registry implements it).
type WorkerAdmin interface {
	Workers(ctx context.Context) ([]api.WorkerInfo, error)
	// Drain stops placing work on node (drain true) or resumes it;
	// ErrWorkerNotFound when unknown.
	Drain(ctx context.Context, node string, drain bool) (api.WorkerInfo, error)
}

var (
	// ErrWorkerNotFound is returned by WorkerAdmin.Drain for an unknown node.
	ErrWorkerNotFound = errors.New("no such worker")
	// ErrWorkerState is returned (wrapped) by WorkerAdmin.Drain when the
	// worker's state does not allow it (a revoked worker cannot be
	// undrained): 409.
	ErrWorkerState = errors.New("worker state does not allow this")
)

// handleWorkers serves GET /v1/workers (action "worker.read").
func (g *Gateway) handleWorkers(w http.ResponseWriter, r *http.Request) {
	if err := g.authorizeControl(r, "worker.read", ""); err != nil {
		g.writeError(w, r, err)
		return
	}
	ws, err := g.cfg.Workers.Workers(r.Context())
	if err != nil {
		g.writeError(w, r, err)
		return
	}
	if ws == nil {
		ws = []api.WorkerInfo{}
	}
	writeJSON(w, http.StatusOK, map[string]any{"workers": ws})
}

// handleDrainWorker serves POST /v1/workers/{name}/drain and …/undrain
// (action "worker.drain").
func (g *Gateway) handleDrainWorker(w http.ResponseWriter, r *http.Request) {
	drain := strings.HasSuffix(r.URL.Path, "/drain")
	c, err := g.authenticateControl(r, "worker.drain", "")
	if err != nil {
		g.writeError(w, r, err)
		return
	}
	name := r.PathValue("name")
	info, err := g.cfg.Workers.Drain(r.Context(), name, drain)
	if errors.Is(err, ErrWorkerNotFound) {
		g.writeError(w, r, errf(http.StatusNotFound, CodeNotFound, "no worker named "+name))
		return
	}
	if errors.Is(err, ErrWorkerState) {
		g.writeError(w, r, errf(http.StatusConflict, CodeConflict, err.Error()))
		return
	}
	if err != nil {
		g.writeError(w, r, err)
		return
	}
	g.log.Info("worker state set", "node", name, "state", info.State, "by", c.SPIFFEID)
	action := "worker.drain"
	if !drain {
		action = "worker.undrain"
	}
	g.recordControl(audit.KindWorkerDrained, c, info.SPIFFEID, action, map[string]any{"node": name, "state": info.State})
	writeJSON(w, http.StatusOK, info)
}
