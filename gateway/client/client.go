// Package client is the Go client of the zfaas gateway's HTTP API, used by
// the zfaas CLI. It turns the gateway's JSON error body into *APIError.
package client

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"mime/multipart"
	"net/http"
	"net/url"
	"strconv"
	"strings"

	"github.com/zfaas/zfaas/api"
)

// Client talks to one gateway. It is safe for concurrent use.
type Client struct {
	base *url.URL
	hc   *http.Client
}

// New returns a client for the gateway at baseURL (e.g.
// "http://127.0.0.1:8080"). hc nil means http.DefaultClient.
func New(baseURL string, hc *http.Client) (*Client, error) {
	u, err := url.Parse(baseURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("gateway address %q: want http(s)://host:port", baseURL)
	}
	if hc == nil {
		hc = http.DefaultClient
	}
	return &Client{base: u, hc: hc}, nil
}

// APIError is an error answered by the gateway.
type APIError struct {
	Status int
	api.ErrorDetail
}

func (e *APIError) Error() string {
	if e.DecisionID != "" {
		return fmt.Sprintf("%s (%d %s, decision %s)", e.Message, e.Status, e.Code, e.DecisionID)
	}
	return fmt.Sprintf("%s (%d %s)", e.Message, e.Status, e.Code)
}

// FunctionError is a failure of the function itself (HTTP 502).
type FunctionError struct {
	api.FunctionError
	Meta InvokeMeta
}

func (e *FunctionError) Error() string {
	return fmt.Sprintf("function error: %s: %s", e.ErrorType, e.ErrorMessage)
}

func (c *Client) url(p string, q url.Values) string {
	u := *c.base
	u.Path = strings.TrimRight(u.Path, "/") + p
	u.RawQuery = q.Encode()
	return u.String()
}

func (c *Client) do(ctx context.Context, method, p string, q url.Values, body io.Reader, contentType string, out any) error {
	req, err := http.NewRequestWithContext(ctx, method, c.url(p, q), body)
	if err != nil {
		return err
	}
	if contentType != "" {
		req.Header.Set("Content-Type", contentType)
	}
	resp, err := c.hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 300 {
		return decodeError(resp)
	}
	if out == nil {
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
		return nil
	}
	if raw, ok := out.(*[]byte); ok { // the body as it is (PEM, JWKS)
		*raw, err = io.ReadAll(io.LimitReader(resp.Body, 4<<20))
		return err
	}
	return json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(out)
}

func decodeError(resp *http.Response) error {
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	var eb api.ErrorBody
	if json.Unmarshal(raw, &eb) == nil && eb.Error.Code != "" {
		return &APIError{Status: resp.StatusCode, ErrorDetail: eb.Error}
	}
	return &APIError{Status: resp.StatusCode, ErrorDetail: api.ErrorDetail{Code: "http_" + strconv.Itoa(resp.StatusCode), Message: strings.TrimSpace(string(raw))}}
}

// DeployRequest is the configuration sent with a package.
type DeployRequest struct {
	api.FunctionConfig
	Description string `json:"description,omitempty"`
}

// Deploy uploads a package and publishes a new version. pkg is streamed;
// size (may be -1) is only used for progress reporting by the caller's
// reader.
func (c *Client) Deploy(ctx context.Context, name string, cfg DeployRequest, pkg io.Reader, filename string) (api.Version, error) {
	pr, pw := io.Pipe()
	mw := multipart.NewWriter(pw)
	go func() {
		err := func() error {
			cw, err := mw.CreateFormField("config")
			if err != nil {
				return err
			}
			if err := json.NewEncoder(cw).Encode(cfg); err != nil {
				return err
			}
			fw, err := mw.CreateFormFile("package", filename)
			if err != nil {
				return err
			}
			if _, err := io.Copy(fw, pkg); err != nil {
				return err
			}
			return mw.Close()
		}()
		pw.CloseWithError(err)
	}()
	var v api.Version
	err := c.do(ctx, http.MethodPost, "/v1/functions/"+url.PathEscape(name)+"/versions", nil, pr, mw.FormDataContentType(), &v)
	pr.Close()
	return v, err
}

// FunctionSummary is one row of List.
type FunctionSummary struct {
	api.Function
	Latest *api.Version `json:"latest,omitempty"`
}

// List returns the functions.
func (c *Client) List(ctx context.Context) ([]FunctionSummary, error) {
	var out struct {
		Functions []FunctionSummary `json:"functions"`
	}
	err := c.do(ctx, http.MethodGet, "/v1/functions", nil, nil, "", &out)
	return out.Functions, err
}

// FunctionInfo is a function with its latest version.
type FunctionInfo struct {
	api.Function
	Latest api.Version `json:"latest"`
}

// Get returns a function.
func (c *Client) Get(ctx context.Context, name string) (FunctionInfo, error) {
	var out FunctionInfo
	err := c.do(ctx, http.MethodGet, "/v1/functions/"+url.PathEscape(name), nil, nil, "", &out)
	return out, err
}

// Delete removes a function and its versions.
func (c *Client) Delete(ctx context.Context, name string) error {
	return c.do(ctx, http.MethodDelete, "/v1/functions/"+url.PathEscape(name), nil, nil, "", nil)
}

// Versions lists a function's versions.
func (c *Client) Versions(ctx context.Context, name string) ([]api.Version, error) {
	var out struct {
		Versions []api.Version `json:"versions"`
	}
	err := c.do(ctx, http.MethodGet, "/v1/functions/"+url.PathEscape(name)+"/versions", nil, nil, "", &out)
	return out.Versions, err
}

// SetAlias points alias at version, optionally sending weight of the calls
// to additional.
func (c *Client) SetAlias(ctx context.Context, name, alias string, version, additional int64, weight float64) (api.Alias, error) {
	body, _ := json.Marshal(map[string]any{"version": version, "additionalVersion": additional, "additionalWeight": weight})
	var out api.Alias
	err := c.do(ctx, http.MethodPut, "/v1/functions/"+url.PathEscape(name)+"/aliases/"+url.PathEscape(alias), nil, bytes.NewReader(body), "application/json", &out)
	return out, err
}

// DeleteAlias removes an alias.
func (c *Client) DeleteAlias(ctx context.Context, name, alias string) error {
	return c.do(ctx, http.MethodDelete, "/v1/functions/"+url.PathEscape(name)+"/aliases/"+url.PathEscape(alias), nil, nil, "", nil)
}

// InvokeMeta are the bookkeeping headers of an invocation.
type InvokeMeta struct {
	InvocationID   string `json:"invocationId"`
	Version        string `json:"version"`
	DurationMs     string `json:"durationMs"`
	BilledDuration string `json:"billedDurationMs"`
	ColdStart      bool   `json:"coldStart"`
}

// Invoke runs a function synchronously. target is "name" or
// "name:qualifier". A function error is returned as *FunctionError.
func (c *Client) Invoke(ctx context.Context, target string, payload []byte) ([]byte, InvokeMeta, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, c.url("/v1/functions/"+url.PathEscape(target)+"/invoke", nil), bytes.NewReader(payload))
	if err != nil {
		return nil, InvokeMeta{}, err
	}
	req.Header.Set("Content-Type", "application/json")
	resp, err := c.hc.Do(req)
	if err != nil {
		return nil, InvokeMeta{}, err
	}
	defer resp.Body.Close()
	meta := InvokeMeta{
		InvocationID:   resp.Header.Get(api.HeaderInvocationID),
		Version:        resp.Header.Get(api.HeaderVersion),
		DurationMs:     resp.Header.Get(api.HeaderDuration),
		BilledDuration: resp.Header.Get(api.HeaderBilledDuration),
		ColdStart:      resp.Header.Get(api.HeaderColdStart) == "true",
	}
	if resp.Header.Get(api.HeaderFunctionError) != "" {
		var fe api.FunctionError
		raw, _ := io.ReadAll(io.LimitReader(resp.Body, 8<<20))
		if err := json.Unmarshal(raw, &fe); err != nil {
			return nil, meta, fmt.Errorf("function error with unreadable body: %w", err)
		}
		return nil, meta, &FunctionError{FunctionError: fe, Meta: meta}
	}
	if resp.StatusCode >= 300 {
		return nil, meta, decodeError(resp)
	}
	body, err := io.ReadAll(io.LimitReader(resp.Body, 64<<20))
	return body, meta, err
}

// Logs streams log records to fn until the server ends the stream or ctx
// ends (with follow).
func (c *Client) Logs(ctx context.Context, name, since string, follow bool, fn func(api.LogRecord)) error {
	q := url.Values{}
	if since != "" {
		q.Set("since", since)
	}
	if follow {
		q.Set("follow", "true")
	}
	err := streamNDJSON(ctx, c, "/v1/functions/"+url.PathEscape(name)+"/logs", q, func(dec *json.Decoder) error {
		var rec api.LogRecord
		if err := dec.Decode(&rec); err != nil {
			return err
		}
		fn(rec)
		return nil
	})
	if ctx.Err() != nil {
		return nil // following ended by the caller
	}
	return err
}

// streamNDJSON GETs path and calls next for every JSON value of the
// newline-delimited answer, until the stream ends (nil) or ctx or next
// fails.
func streamNDJSON(ctx context.Context, c *Client, path string, q url.Values, next func(*json.Decoder) error) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, c.url(path, q), nil)
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
	dec := json.NewDecoder(resp.Body)
	for {
		if err := next(dec); err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			if ctx.Err() != nil {
				return ctx.Err()
			}
			return err
		}
	}
}

// TrustBundle fetches the trust domain's bundle: format "jwks" (the SPIFFE
// bundle) or "pem" (the X.509 authorities).
func (c *Client) TrustBundle(ctx context.Context, format string) ([]byte, error) {
	var b []byte
	err := c.do(ctx, http.MethodGet, "/v1/identity/bundle", url.Values{"format": {format}}, nil, "", &b)
	return b, err
}

// Egress returns the function's egress rules: the policy's and those in
// force for each running instance.
func (c *Client) Egress(ctx context.Context, name string) (api.EgressView, error) {
	var v api.EgressView
	err := c.do(ctx, http.MethodGet, "/v1/functions/"+url.PathEscape(name)+"/egress", nil, nil, "", &v)
	return v, err
}

// Workers lists the cluster's workers.
func (c *Client) Workers(ctx context.Context) ([]api.WorkerInfo, error) {
	var out struct {
		Workers []api.WorkerInfo `json:"workers"`
	}
	err := c.do(ctx, http.MethodGet, "/v1/workers", nil, nil, "", &out)
	return out.Workers, err
}

// DrainWorker stops placing work on node (drain true) or places work
// there again (false).
func (c *Client) DrainWorker(ctx context.Context, node string, drain bool) (api.WorkerInfo, error) {
	var out api.WorkerInfo
	op := "/drain"
	if !drain {
		op = "/undrain"
	}
	err := c.do(ctx, http.MethodPost, "/v1/workers/"+url.PathEscape(node)+op, nil, nil, "", &out)
	return out, err
}

// IssueUser asks the gateway to sign an X.509-SVID for user name over the
// key of csrPEM (a PEM CERTIFICATE REQUEST); it returns the chain as PEM.
func (c *Client) IssueUser(ctx context.Context, name string, csrPEM []byte) ([]byte, error) {
	return c.IssueSVID(ctx, "users", name, csrPEM)
}

// IssueSVID is IssueUser for a kind of identity: "users" or "policyd".
func (c *Client) IssueSVID(ctx context.Context, kind, name string, csrPEM []byte) ([]byte, error) {
	var b []byte
	err := c.do(ctx, http.MethodPost, "/v1/identity/"+url.PathEscape(kind)+"/"+url.PathEscape(name), nil, bytes.NewReader(csrPEM), "application/pkcs10", &b)
	return b, err
}
