// Package extauthz serves zfaas policy decisions to Envoy over
// envoy.service.auth.v3.Authorization/Check (the ext_authz filter's gRPC
// service), so a mesh can ask zfaas policy about calls that never reach the
// gateway.
//
// The policy input has the shape OPA's Envoy plugin documents:
// input.attributes (the CheckRequest's AttributeContext in protojson form:
// request.http.{method, path, host, headers, …}, source, destination, …),
// input.parsed_path (the path's segments), input.parsed_query (each query
// parameter's values), input.parsed_body (a JSON or form body, when present
// and complete), input.truncated_body and input.version. The query
// (policyd.Config.EnvoyQuery, default data.envoy.authz.allow) answers a
// bool, or an object {"allowed": bool, "headers", "response_headers_to_add",
// "request_headers_to_remove", "body", "http_status", "dynamic_metadata"}.
//
// It must never allow a request the policy did not explicitly allow: an
// undefined or malformed result, and any engine error, is a denial.
package extauthz

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"mime"
	"net/url"
	"sort"
	"strconv"
	"strings"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/genproto/googleapis/rpc/code"
	rpcstatus "google.golang.org/genproto/googleapis/rpc/status"
	"google.golang.org/grpc"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/types/known/structpb"

	"github.com/zfaas/zfaas/policyd"
)

// Decider evaluates an entry point; *policyd.Engine implements it.
type Decider interface {
	Decide(ctx context.Context, entry string, input map[string]any) (policyd.Decision, error)
}

var _ Decider = (*policyd.Engine)(nil)

// Server implements authv3.AuthorizationServer. It is safe for concurrent
// use.
type Server struct {
	authv3.UnimplementedAuthorizationServer
	d   Decider
	log *slog.Logger
}

// New returns a Server deciding with d (entry point policyd.EntryEnvoy).
// log nil discards.
func New(d Decider, log *slog.Logger) *Server {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Server{d: d, log: log.With("component", "extauthz")}
}

// Register registers the Authorization service on g.
func (s *Server) Register(g *grpc.Server) { authv3.RegisterAuthorizationServer(g, s) }

// Check answers one ext_authz request.
func (s *Server) Check(ctx context.Context, req *authv3.CheckRequest) (*authv3.CheckResponse, error) {
	input, err := Input(req)
	if err != nil {
		s.log.Warn("ext_authz request refused: unreadable attributes", "err", err)
		return denied(code.Code_INVALID_ARGUMENT, typev3.StatusCode_Forbidden, nil), nil
	}
	d, err := s.d.Decide(ctx, policyd.EntryEnvoy, input)
	if err != nil {
		s.log.Warn("ext_authz decision failed; denied", "decision_id", d.ID, "err", err)
		return denied(code.Code_UNAVAILABLE, typev3.StatusCode_ServiceUnavailable, nil), nil
	}
	obj, _ := d.Result.(map[string]any)
	var resp *authv3.CheckResponse
	if d.Allow {
		ok := &authv3.OkHttpResponse{
			Headers:              headerOptions(obj["headers"]),
			ResponseHeadersToAdd: headerOptions(obj["response_headers_to_add"]),
			HeadersToRemove:      stringList(obj["request_headers_to_remove"]),
		}
		resp = &authv3.CheckResponse{
			Status:       &rpcstatus.Status{Code: int32(code.Code_OK)},
			HttpResponse: &authv3.CheckResponse_OkResponse{OkResponse: ok},
		}
	} else {
		resp = denied(code.Code_PERMISSION_DENIED, httpStatus(obj["http_status"]), obj)
	}
	if dm, ok := obj["dynamic_metadata"].(map[string]any); ok {
		if st, err := structpb.NewStruct(normalise(dm).(map[string]any)); err == nil {
			resp.DynamicMetadata = st
		}
	}
	return resp, nil
}

func denied(c code.Code, status typev3.StatusCode, obj map[string]any) *authv3.CheckResponse {
	body, _ := obj["body"].(string)
	return &authv3.CheckResponse{
		Status: &rpcstatus.Status{Code: int32(c)},
		HttpResponse: &authv3.CheckResponse_DeniedResponse{DeniedResponse: &authv3.DeniedHttpResponse{
			Status:  &typev3.HttpStatus{Code: status},
			Headers: headerOptions(obj["headers"]),
			Body:    body,
		}},
	}
}

// httpStatus reads a policy's http_status, defaulting to 403.
func httpStatus(v any) typev3.StatusCode {
	n, ok := number(v)
	if !ok || n < 100 || n > 599 {
		return typev3.StatusCode_Forbidden
	}
	if _, known := typev3.StatusCode_name[int32(n)]; !known {
		return typev3.StatusCode_Forbidden
	}
	return typev3.StatusCode(n)
}

func number(v any) (int64, bool) {
	switch x := v.(type) {
	case json.Number:
		n, err := x.Int64()
		return n, err == nil
	case float64:
		return int64(x), float64(int64(x)) == x
	case int:
		return int64(x), true
	case int64:
		return x, true
	}
	return 0, false
}

// headerOptions turns {"name": "value"} or {"name": ["v1", "v2"]} into
// header options: the first value replaces the header, later ones append.
func headerOptions(v any) []*corev3.HeaderValueOption {
	m, ok := v.(map[string]any)
	if !ok {
		return nil
	}
	names := make([]string, 0, len(m))
	for k := range m {
		names = append(names, k)
	}
	sort.Strings(names)
	var out []*corev3.HeaderValueOption
	for _, k := range names {
		var vals []string
		switch x := m[k].(type) {
		case string:
			vals = []string{x}
		case []any:
			vals = stringList(x)
		default:
			continue
		}
		for i, val := range vals {
			action := corev3.HeaderValueOption_OVERWRITE_IF_EXISTS_OR_ADD
			if i > 0 {
				action = corev3.HeaderValueOption_APPEND_IF_EXISTS_OR_ADD
			}
			out = append(out, &corev3.HeaderValueOption{
				Header:       &corev3.HeaderValue{Key: k, Value: val},
				AppendAction: action,
			})
		}
	}
	return out
}

func stringList(v any) []string {
	arr, _ := v.([]any)
	out := make([]string, 0, len(arr))
	for _, x := range arr {
		if s, ok := x.(string); ok {
			out = append(out, s)
		}
	}
	if len(out) == 0 {
		return nil
	}
	return out
}

// normalise turns json.Number into float64 for structpb.
func normalise(v any) any {
	switch x := v.(type) {
	case map[string]any:
		m := make(map[string]any, len(x))
		for k, e := range x {
			m[k] = normalise(e)
		}
		return m
	case []any:
		a := make([]any, len(x))
		for i, e := range x {
			a[i] = normalise(e)
		}
		return a
	case json.Number:
		f, _ := x.Float64()
		return f
	}
	return v
}

// Input builds the policy input of a CheckRequest (see the package doc).
func Input(req *authv3.CheckRequest) (map[string]any, error) {
	attrs := req.GetAttributes()
	if attrs == nil {
		return nil, errors.New("no attributes")
	}
	raw, err := protojson.Marshal(attrs)
	if err != nil {
		return nil, fmt.Errorf("attributes: %w", err)
	}
	var a map[string]any
	dec := json.NewDecoder(strings.NewReader(string(raw)))
	dec.UseNumber()
	if err := dec.Decode(&a); err != nil {
		return nil, fmt.Errorf("attributes: %w", err)
	}
	httpReq := attrs.GetRequest().GetHttp()
	headers := httpReq.GetHeaders()
	if len(headers) == 0 && httpReq.GetHeaderMap() != nil {
		// Envoy may send headers only as a header_map; expose them in the
		// documented place too.
		headers = map[string]string{}
		for _, h := range httpReq.GetHeaderMap().GetHeaders() {
			v := h.GetValue()
			if v == "" && len(h.GetRawValue()) > 0 {
				v = string(h.GetRawValue())
			}
			k := strings.ToLower(h.GetKey())
			if prev, ok := headers[k]; ok {
				v = prev + "," + v
			}
			headers[k] = v
		}
		if r, ok := a["request"].(map[string]any); ok {
			if h, ok := r["http"].(map[string]any); ok {
				hm := make(map[string]any, len(headers))
				for k, v := range headers {
					hm[k] = v
				}
				h["headers"] = hm
			}
		}
	}
	p, rawQuery, _ := strings.Cut(httpReq.GetPath(), "?")
	input := map[string]any{
		"attributes":   a,
		"parsed_path":  parsePath(p),
		"parsed_query": parseQuery(rawQuery),
		"version":      map[string]any{"encoding": "protojson", "ext_authz": "v3"},
	}
	body := []byte(httpReq.GetBody())
	if len(body) == 0 {
		body = httpReq.GetRawBody()
	}
	truncated := false
	if cl, err := strconv.ParseInt(headerValue(headers, "content-length"), 10, 64); err == nil && cl > int64(len(body)) {
		truncated = true
	}
	input["truncated_body"] = truncated
	if len(body) > 0 && !truncated {
		if pb, ok := parseBody(headerValue(headers, "content-type"), body); ok {
			input["parsed_body"] = pb
		}
	}
	return input, nil
}

func headerValue(h map[string]string, name string) string {
	if v, ok := h[name]; ok {
		return v
	}
	for k, v := range h {
		if strings.EqualFold(k, name) {
			return v
		}
	}
	return ""
}

// parsePath splits a path into its unescaped segments: "/a/b%20c" →
// ["a", "b c"]; "/" → [""].
func parsePath(p string) []any {
	segs := strings.Split(strings.TrimPrefix(p, "/"), "/")
	out := make([]any, len(segs))
	for i, s := range segs {
		if u, err := url.PathUnescape(s); err == nil {
			s = u
		}
		out[i] = s
	}
	return out
}

// parseQuery maps each query parameter to the array of its values.
func parseQuery(q string) map[string]any {
	vals, _ := url.ParseQuery(q)
	out := make(map[string]any, len(vals))
	for k, vs := range vals {
		arr := make([]any, len(vs))
		for i, v := range vs {
			arr[i] = v
		}
		out[k] = arr
	}
	return out
}

// parseBody decodes a JSON or URL-encoded form body.
func parseBody(contentType string, body []byte) (any, bool) {
	mt, _, err := mime.ParseMediaType(contentType)
	if err != nil {
		return nil, false
	}
	switch {
	case mt == "application/json" || strings.HasSuffix(mt, "+json"):
		var v any
		dec := json.NewDecoder(strings.NewReader(string(body)))
		dec.UseNumber()
		if err := dec.Decode(&v); err != nil || dec.More() {
			return nil, false
		}
		return v, true
	case mt == "application/x-www-form-urlencoded":
		return parseQuery(string(body)), true
	}
	return nil, false
}
