package gateway

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"time"

	"github.com/zfaas/zfaas/audit"
)

// AuditLog is the compliance audit log served under /v1/audit/.
type AuditLog interface {
	// AppendWait queues a record, waiting for room while the queue is
	// full until ctx ends (then the log counts the loss).
	AppendWait(ctx context.Context, rec audit.Record) error
	// Export streams the records q selects in format f.
	Export(ctx context.Context, w io.Writer, q audit.Query, f audit.Format) error
	// PublicKeys lists the published checkpoint verifier keys.
	PublicKeys(ctx context.Context) ([]string, error)
}

var _ AuditLog = (*audit.Log)(nil)

// handleAuditExport serves GET /v1/audit/export?since=&until=&kind=&format=:
// the audit trail, streamed in jsonl (default), cef or ocsf. since and
// until are RFC 3339 times or durations back from now ("24h"); kind may be
// repeated or comma-separated ("decision,svid.*"). Only callers the deploy
// policy allows action "audit.export" (admins) may read it.
func (g *Gateway) handleAuditExport(w http.ResponseWriter, r *http.Request) {
	if err := g.authorizeControl(r, "audit.export", ""); err != nil {
		g.writeError(w, r, err)
		return
	}
	q, f, err := g.auditQuery(r)
	if err != nil {
		g.writeError(w, r, err)
		return
	}
	lw := &lazyWriter{w: w, start: func() {
		w.Header().Set("Content-Type", f.ContentType())
		w.Header().Set("Content-Disposition", fmt.Sprintf(`attachment; filename="zfaas-audit.%s"`, f))
		w.Header().Set("X-Content-Type-Options", "nosniff")
		w.WriteHeader(http.StatusOK)
	}}
	if err := g.cfg.Audit.Export(r.Context(), lw, q, f); err != nil {
		if !lw.started {
			g.writeError(w, r, err)
			return
		}
		// The status is sent: cut the stream so the client sees an error,
		// not a short export (a jsonl export without its trailer fails
		// verification anyway).
		g.log.Error("audit export failed mid-stream", "err", err)
		panic(http.ErrAbortHandler)
	}
	if !lw.started {
		lw.start()
	}
}

func (g *Gateway) auditQuery(r *http.Request) (audit.Query, audit.Format, error) {
	v := r.URL.Query()
	var q audit.Query
	f, err := audit.ParseFormat(v.Get("format"))
	if err != nil {
		return q, "", errf(http.StatusBadRequest, CodeBadRequest, "format must be jsonl, cef or ocsf")
	}
	now := g.cfg.Now()
	for name, dst := range map[string]*time.Time{"since": &q.Since, "until": &q.Until} {
		s := v.Get(name)
		if s == "" {
			continue
		}
		if d, err := time.ParseDuration(s); err == nil && d > 0 {
			*dst = now.Add(-d)
		} else if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
			*dst = t
		} else {
			return q, "", errf(http.StatusBadRequest, CodeBadRequest, name+" must be a positive duration such as 24h, or an RFC 3339 time")
		}
	}
	if !q.Since.IsZero() && !q.Until.IsZero() && q.Until.Before(q.Since) {
		return q, "", errf(http.StatusBadRequest, CodeBadRequest, "until is before since")
	}
	for _, ks := range v["kind"] {
		for k := range strings.SplitSeq(ks, ",") {
			k = strings.TrimSpace(k)
			if k == "" {
				continue
			}
			if !audit.ValidKind(strings.TrimSuffix(k, ".*")) {
				return q, "", errf(http.StatusBadRequest, CodeBadRequest, fmt.Sprintf("kind %q is not a record kind such as decision or policy.*", k))
			}
			q.Kinds = append(q.Kinds, k)
		}
	}
	if len(q.Kinds) > 64 {
		return q, "", errf(http.StatusBadRequest, CodeBadRequest, "at most 64 kinds")
	}
	return q, f, nil
}

// handleAuditKeys serves GET /v1/audit/keys: the checkpoint verifier keys
// the audit writers published, one per line. Like the trust bundle they
// are public and served without authentication; an auditor should still
// compare them with the keys the operator hands over.
func (g *Gateway) handleAuditKeys(w http.ResponseWriter, r *http.Request) {
	keys, err := g.cfg.Audit.PublicKeys(r.Context())
	if err != nil {
		g.writeError(w, r, err)
		return
	}
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	for _, k := range keys {
		_, _ = io.WriteString(w, k+"\n")
	}
}

// lazyWriter calls start before the first byte is written.
type lazyWriter struct {
	w       io.Writer
	start   func()
	started bool
}

func (l *lazyWriter) Write(p []byte) (int, error) {
	if !l.started {
		l.started = true
		l.start()
	}
	return l.w.Write(p)
}
