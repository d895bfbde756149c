package gateway

import (
	"context"
	"encoding/json"
	"time"

	"github.com/zfaas/zfaas/audit"
)

// auditWait bounds how long a request waits for room in a full audit
// queue before the record is dropped (and the drop recorded).
const auditWait = 2 * time.Second

// record appends rec to the audit log, when there is one. The log queues
// and writes in batches; only when its queue is full does the request wait
// (backpressure, at most auditWait), so a burst slows callers rather than
// losing records.
func (g *Gateway) record(rec audit.Record) {
	if g.cfg.Audit == nil {
		return
	}
	if rec.Time.IsZero() {
		rec.Time = g.cfg.Now()
	}
	ctx, cancel := context.WithTimeout(context.Background(), auditWait)
	defer cancel()
	if err := g.cfg.Audit.AppendWait(ctx, rec); err != nil {
		g.log.Debug("audit record not queued", "kind", rec.Kind, "err", err)
	}
}

// recordDecision records a policy decision: who asked for what, the
// answer, the revision and the reasons. Inputs (headers, configs) stay in
// the decision log, where zfaas.log.mask applies; the trail holds no
// request content.
func (g *Gateway) recordDecision(entry string, input map[string]any, d Decision) {
	rec := audit.Record{
		Kind: audit.KindDecision, DecisionID: d.ID, PolicyRevision: d.Revision,
		Outcome: audit.OutcomeDeny, Action: entry,
		Details: map[string]any{"entry": entry},
	}
	if d.Allow {
		rec.Outcome = audit.OutcomeAllow
	}
	if len(d.Reasons) > 0 {
		rec.Details["reasons"] = d.Reasons
	}
	if c, ok := input["caller"].(map[string]any); ok {
		rec.Actor, _ = c["spiffe_id"].(string)
		if m, _ := c["auth_method"].(string); m != "" {
			rec.Details["auth_method"] = m
		}
	}
	if a, ok := input["action"].(string); ok && a != "" {
		rec.Action = entry + ":" + a
	}
	if f, ok := input["function"].(map[string]any); ok {
		t, _ := f["tenant"].(string)
		n, _ := f["name"].(string)
		if n != "" {
			rec.Subject = t + "/" + n
		}
	}
	if r, ok := input["request"].(map[string]any); ok {
		rec.TraceID, _ = r["trace_id"].(string)
		if tls, ok := r["tls"].(map[string]any); ok {
			if p, _ := tls["protocol"].(string); p != "" {
				rec.Details["tls"] = p
			}
		}
	}
	g.record(rec)
}

// recordControl records a change made through the control API (deploy,
// alias, delete, policy, identity) after it succeeded.
func (g *Gateway) recordControl(kind string, c Caller, subject, action string, details map[string]any) {
	g.record(audit.Record{Kind: kind, Actor: c.SPIFFEID, Subject: subject, Action: action, Outcome: audit.OutcomeSuccess, Details: details})
}

// jsonMap turns v into the plain JSON object it encodes to, so records
// hash the same after a round trip through an export.
func jsonMap(v any) map[string]any {
	b, err := json.Marshal(v)
	if err != nil {
		return nil
	}
	var m map[string]any
	if json.Unmarshal(b, &m) != nil {
		return nil
	}
	return m
}
