package client

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"strings"
)

// AuditQuery selects audit records to export.
type AuditQuery struct {
	// Since and Until are RFC 3339 times or durations back from now
	// ("24h"); empty means unbounded.
	Since, Until string
	// Kinds keeps only these record kinds ("decision", "policy.*").
	Kinds []string
	// Format is jsonl (default), cef or ocsf.
	Format string
}

// AuditExport streams the audit trail (GET /v1/audit/export) to w, as the
// gateway sends it. A jsonl export can be checked offline with
// audit.Verify.
func (c *Client) AuditExport(ctx context.Context, q AuditQuery, w io.Writer) error {
	v := url.Values{}
	if q.Since != "" {
		v.Set("since", q.Since)
	}
	if q.Until != "" {
		v.Set("until", q.Until)
	}
	if len(q.Kinds) > 0 {
		v.Set("kind", strings.Join(q.Kinds, ","))
	}
	if q.Format != "" {
		v.Set("format", q.Format)
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url("/v1/audit/export", v), nil)
	if err != nil {
		return err
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return decodeError(resp)
	}
	_, err = io.Copy(w, resp.Body)
	return err
}

// AuditKeys returns the checkpoint verifier keys the audit writers
// published (GET /v1/audit/keys), one per line.
func (c *Client) AuditKeys(ctx context.Context) ([]byte, error) {
	var b []byte
	err := c.do(ctx, http.MethodGet, "/v1/audit/keys", nil, nil, "", &b)
	return b, err
}
