package client

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/url"
	"strconv"

	policydv1 "github.com/zfaas/zfaas/api/policyd/v1"
)

// PushPolicy uploads an OPA bundle (tar.gz, optionally signed) to POST
// /v1/policy/revisions. The gateway compiles and tests it and, when both
// pass, stores it as the new active revision, which it returns. A refused
// policy is an *APIError whose message says why.
func (c *Client) PushPolicy(ctx context.Context, bundle io.Reader) (policydv1.RevisionInfo, error) {
	var out policydv1.RevisionInfo
	err := c.do(ctx, http.MethodPost, "/v1/policy/revisions", nil, bundle, "application/gzip", &out)
	return out, err
}

// PolicyStatus returns the active revision and what each node serves (GET
// /v1/policy/status).
func (c *Client) PolicyStatus(ctx context.Context) (policydv1.Status, error) {
	var out policydv1.Status
	err := c.do(ctx, http.MethodGet, "/v1/policy/status", nil, nil, "", &out)
	return out, err
}

// RollbackPolicy makes a stored revision active again (POST
// /v1/policy/rollback) and returns it.
func (c *Client) RollbackPolicy(ctx context.Context, revision int64) (policydv1.RevisionInfo, error) {
	body, _ := json.Marshal(map[string]int64{"revision": revision})
	var out policydv1.RevisionInfo
	err := c.do(ctx, http.MethodPost, "/v1/policy/rollback", nil, bytes.NewReader(body), "application/json", &out)
	return out, err
}

// DecisionQuery selects decision-log records.
type DecisionQuery struct {
	// Since is a duration back from now ("1h") or an RFC 3339 time; empty
	// means the gateway's default.
	Since string
	// DenyOnly selects denials only.
	DenyOnly bool
	// Entry selects one entry point (invoke, deploy, admission, envoy).
	Entry string
	// Limit stops after this many records; 0 means the server's maximum (100000).
	Limit int
}

// PolicyDecisions streams decision-log records (GET /v1/policy/decisions,
// NDJSON) to fn, oldest first, until the server ends the stream or ctx
// ends.
func (c *Client) PolicyDecisions(ctx context.Context, q DecisionQuery, fn func(policydv1.DecisionRecord)) error {
	v := url.Values{}
	if q.Since != "" {
		v.Set("since", q.Since)
	}
	if q.DenyOnly {
		v.Set("deny", "true")
	}
	if q.Entry != "" {
		v.Set("entry", q.Entry)
	}
	if q.Limit > 0 {
		v.Set("limit", strconv.Itoa(q.Limit))
	}
	return streamNDJSON(ctx, c, "/v1/policy/decisions", v, func(dec *json.Decoder) error {
		var rec policydv1.DecisionRecord
		if err := dec.Decode(&rec); err != nil {
			return err
		}
		fn(rec)
		return nil
	})
}
