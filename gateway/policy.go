package gateway

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	"github.com/zfaas/zfaas/api"
	"github.com/zfaas/zfaas/audit"
)

// PolicyAdmin is the policy engine's administration, served under
// /v1/policy/. Results are returned to the client as JSON as they are.
type PolicyAdmin interface {
	// Push compiles and tests a bundle (tar.gz) and stores it as the new
	// active revision. A refused bundle is an error wrapping
	// ErrPolicyRejected.
	Push(ctx context.Context, bundle []byte, pushedBy string) (any, error)
	// Status reports the active revision and every node's view of it.
	Status(ctx context.Context) (any, error)
	// Rollback makes an earlier revision active again.
	Rollback(ctx context.Context, revision int64, by string) (any, error)
	// Decisions streams decision-log records as JSON objects.
	Decisions(ctx context.Context, q DecisionQuery, fn func(json.RawMessage) error) error
}

// DecisionQuery selects decision-log records.
type DecisionQuery struct {
	Since    time.Duration // how far back
	DenyOnly bool
	Entry    string // "invoke", "deploy", … or "" for all
	Limit    int
}

// ErrPolicyRejected marks a policy the engine refused (compile error,
// failing test, bad signature); its text is shown to the pusher.
var ErrPolicyRejected = errors.New("policy rejected")

// ErrPolicyRevisionNotFound is returned by Rollback for an unknown revision.
var ErrPolicyRevisionNotFound = errors.New("no such policy revision")

// MaxPolicyBundleBytes caps an uploaded policy bundle.
const MaxPolicyBundleBytes = 16 << 20

func (g *Gateway) policyError(w http.ResponseWriter, r *http.Request, err error) {
	if errors.Is(err, ErrPolicyRevisionNotFound) {
		writeJSON(w, http.StatusNotFound, map[string]any{"error": map[string]string{"code": "revision_not_found", "message": "no such policy revision"}})
		return
	}
	if errors.Is(err, ErrPolicyRejected) {
		g.log.Info("policy rejected", "err", err)
		writeJSON(w, http.StatusUnprocessableEntity, map[string]any{"error": map[string]string{"code": "policy_rejected", "message": err.Error()}})
		return
	}
	g.writeError(w, r, err)
}

func (g *Gateway) handlePolicyPush(w http.ResponseWriter, r *http.Request) {
	c, err := g.authenticateControl(r, "policy.push", "")
	if err != nil {
		g.writeError(w, r, err)
		return
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, MaxPolicyBundleBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			g.writeError(w, r, errf(http.StatusRequestEntityTooLarge, CodePayloadTooLarge, fmt.Sprintf("policy bundle over %d bytes", MaxPolicyBundleBytes)))
			return
		}
		g.writeError(w, r, errf(http.StatusBadRequest, CodeBadRequest, "cannot read the bundle"))
		return
	}
	res, err := g.cfg.Policy.Push(r.Context(), body, c.SPIFFEID)
	if err != nil {
		g.record(audit.Record{Kind: audit.KindPolicyRefused, Actor: c.SPIFFEID, Action: "policy.push", Outcome: audit.OutcomeFailure,
			Details: map[string]any{"error": err.Error(), "bundle_bytes": len(body)}})
		g.policyError(w, r, err)
		return
	}
	g.recordControl(audit.KindPolicyPush, c, "policy", "policy.push", jsonMap(res))
	writeJSON(w, http.StatusCreated, res)
}

func (g *Gateway) handlePolicyStatus(w http.ResponseWriter, r *http.Request) {
	if err := g.authorizeControl(r, "policy.read", ""); err != nil {
		g.writeError(w, r, err)
		return
	}
	res, err := g.cfg.Policy.Status(r.Context())
	if err != nil {
		g.policyError(w, r, err)
		return
	}
	writeJSON(w, http.StatusOK, res)
}

func (g *Gateway) handlePolicyRollback(w http.ResponseWriter, r *http.Request) {
	c, err := g.authenticateControl(r, "policy.rollback", "")
	if err != nil {
		g.writeError(w, r, err)
		return
	}
	var req struct {
		Revision int64 `json:"revision"`
	}
	if err := decodeJSON(r, &req); err != nil {
		g.writeError(w, r, err)
		return
	}
	if req.Revision < 1 {
		g.writeError(w, r, errf(http.StatusBadRequest, CodeBadRequest, "revision must be a positive number"))
		return
	}
	res, err := g.cfg.Policy.Rollback(r.Context(), req.Revision, c.SPIFFEID)
	if err != nil {
		g.policyError(w, r, err)
		return
	}
	g.recordControl(audit.KindPolicyRollback, c, "policy", "policy.rollback", jsonMap(res))
	writeJSON(w, http.StatusOK, res)
}

func (g *Gateway) handlePolicyDecisions(w http.ResponseWriter, r *http.Request) {
	if err := g.authorizeControl(r, "policy.read", ""); err != nil {
		g.writeError(w, r, err)
		return
	}
	q := r.URL.Query()
	since := time.Hour
	if s := q.Get("since"); s != "" {
		d, err := time.ParseDuration(s)
		if err != nil {
			// Or a point in time.
			if at, terr := time.Parse(time.RFC3339, s); terr == nil {
				d, err = g.cfg.Now().Sub(at), nil
			}
		}
		if err != nil || d <= 0 {
			g.writeError(w, r, errf(http.StatusBadRequest, CodeBadRequest, "since must be a positive duration such as 10m, or an RFC 3339 time in the past"))
			return
		}
		since = d
	}
	deny, _ := strconv.ParseBool(q.Get("deny"))
	const maxLimit = 100000
	limit := 1000
	if s := q.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 || n > maxLimit {
			g.writeError(w, r, errf(http.StatusBadRequest, CodeBadRequest, "limit must be 0 (the server's maximum, 100000) .. 100000"))
			return
		}
		limit = n
		if n == 0 {
			limit = maxLimit
		}
	}
	w.Header().Set("Content-Type", "application/x-ndjson")
	bw := bufio.NewWriter(w)
	started := false
	entry := q.Get("entry")
	if entry != "" && !api.ValidName(entry) {
		g.writeError(w, r, errf(http.StatusBadRequest, CodeBadRequest, "entry must be a policy entry point such as invoke or deploy"))
		return
	}
	err := g.cfg.Policy.Decisions(r.Context(), DecisionQuery{Since: since, DenyOnly: deny, Entry: entry, Limit: limit}, func(rec json.RawMessage) error {
		if !started {
			w.WriteHeader(http.StatusOK)
			started = true
		}
		if _, err := bw.Write(rec); err != nil {
			return err
		}
		return bw.WriteByte('\n')
	})
	if err != nil && !started {
		g.policyError(w, r, err)
		return
	}
	if !started {
		w.WriteHeader(http.StatusOK)
	}
	bw.Flush()
}
