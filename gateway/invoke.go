package gateway

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/zfaas/zfaas/api"
	"github.com/zfaas/zfaas/audit"
)

// invocation is what the gateway knows about one call before it runs.
type invocation struct {
	name, qualifier string
	payload         []byte
	http            *api.HTTPRequest
	traceID         string
	caller          Caller
	request         map[string]any // the policy input's request part
}

// outcome is the result plus the bookkeeping headers clients see.
type outcome struct {
	id       string
	version  api.Version
	res      *api.InvocationResult
	decision Decision
}

// invoke resolves and runs one invocation, recording metrics.
func (g *Gateway) invoke(ctx context.Context, in invocation) (*outcome, error) {
	if !api.ValidName(in.name) {
		return nil, fmt.Errorf("%w: %s", ErrFunctionNotFound, in.name)
	}
	if t, ok := in.request["tls"].(map[string]any); ok {
		p, _ := t["protocol"].(string)
		s, _ := t["cipher_suite"].(string)
		g.metrics.transport.WithLabelValues(p, s).Inc()
	}
	v, rerr := g.reg.Resolve(ctx, g.cfg.Tenant, in.name, in.qualifier, g.cfg.Rand())
	// The policy decides before a caller learns whether the function
	// exists, so names do not leak to callers who may not invoke them.
	d, err := g.authorize(ctx, "invoke", map[string]any{
		"caller": callerInput(in.caller),
		"action": "invoke",
		"function": map[string]any{
			"tenant": g.cfg.Tenant, "name": in.name, "qualifier": in.qualifier, "version": v.Version,
		},
		"request": in.request,
	})
	if err != nil {
		return nil, err
	}
	if rerr != nil {
		return nil, rerr
	}
	id := uuid.NewString()
	t0 := time.Now()
	res, err := g.cfg.Invoker.Invoke(ctx, api.Invocation{
		ID: id, Version: v, Payload: in.payload, HTTP: in.http,
		MaxConcurrency: v.Config.MaxConcurrency, WaitBudget: g.cfg.WaitBudget, TraceID: in.traceID,
	})
	elapsed := time.Since(t0)
	g.metrics.observe(v, res, err, elapsed)
	rec := audit.Record{
		Kind: audit.KindInvoke, Actor: in.caller.SPIFFEID, Subject: v.Tenant + "/" + v.Function + ":" + strconv.FormatInt(v.Version, 10),
		Action: "invoke", Outcome: audit.OutcomeSuccess, DecisionID: d.ID, PolicyRevision: d.Revision, TraceID: in.traceID,
		Details: map[string]any{"invocation_id": id, "duration_ms": elapsed.Milliseconds()},
	}
	if err != nil {
		rec.Outcome = audit.OutcomeFailure
		_, code, _ := g.classify(err)
		rec.Details["error"] = code
		g.record(rec)
		g.log.Debug("invocation failed", "function", v.Function, "version", v.Version, "invocation", id, "err", err)
		return &outcome{id: id, version: v, decision: d}, err
	}
	rec.Details["cold_start"] = res.ColdStart
	if res.FuncErr != nil {
		rec.Outcome = audit.OutcomeFailure
		rec.Details["error"] = "function_error"
	}
	g.record(rec)
	return &outcome{id: id, version: v, res: res, decision: d}, nil
}

// billed rounds a duration up to the next millisecond, as Lambda bills.
func billed(d time.Duration) int64 {
	return int64((d + time.Millisecond - 1) / time.Millisecond)
}

func setInvocationHeaders(h http.Header, o *outcome) {
	h.Set(api.HeaderInvocationID, o.id)
	if o.decision.ID != "" {
		h.Set(api.HeaderDecisionID, o.decision.ID)
	}
	if o.version.Version != 0 {
		h.Set(api.HeaderVersion, strconv.FormatInt(o.version.Version, 10))
	}
	if o.res == nil {
		return
	}
	h.Set(api.HeaderDuration, strconv.FormatFloat(float64(o.res.Duration.Microseconds())/1000, 'f', 3, 64))
	h.Set(api.HeaderBilledDuration, strconv.FormatInt(billed(o.res.Duration), 10))
	h.Set(api.HeaderColdStart, strconv.FormatBool(o.res.ColdStart))
}

// readPayload reads a bounded request body.
func (g *Gateway) readPayload(w http.ResponseWriter, r *http.Request) ([]byte, error) {
	if r.ContentLength > g.cfg.MaxPayloadBytes {
		return nil, errf(http.StatusRequestEntityTooLarge, CodePayloadTooLarge, fmt.Sprintf("request body over the %d byte limit", g.cfg.MaxPayloadBytes))
	}
	body, err := io.ReadAll(http.MaxBytesReader(w, r.Body, g.cfg.MaxPayloadBytes))
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return nil, errf(http.StatusRequestEntityTooLarge, CodePayloadTooLarge, fmt.Sprintf("request body over the %d byte limit", g.cfg.MaxPayloadBytes))
		}
		return nil, errf(http.StatusBadRequest, CodeBadRequest, "cannot read request body")
	}
	return body, nil
}

// traceID takes the trace id from a W3C traceparent header, if valid.
func traceID(r *http.Request) string {
	tp := r.Header.Get("Traceparent")
	parts := strings.Split(tp, "-")
	if len(parts) == 4 && len(parts[1]) == 32 {
		return parts[1]
	}
	return ""
}

// handleInvoke serves POST /v1/functions/{name}[:{qualifier}]/invoke.
func (g *Gateway) handleInvoke(w http.ResponseWriter, r *http.Request) {
	name, qualifier, _ := strings.Cut(r.PathValue("target"), ":")
	for _, h := range []string{"X-Zfaas-Invocation-Type", "X-Amz-Invocation-Type"} {
		if t := r.Header.Get(h); t != "" && t != "RequestResponse" {
			g.writeError(w, r, errf(http.StatusBadRequest, CodeUnsupported, "only synchronous (RequestResponse) invocation is supported"))
			return
		}
	}
	caller, err := g.caller(r)
	if err != nil {
		g.writeError(w, r, err)
		return
	}
	payload, err := g.readPayload(w, r)
	if err != nil {
		g.writeError(w, r, err)
		return
	}
	in := invocation{name: name, qualifier: qualifier, payload: payload, traceID: traceID(r), caller: caller, request: requestInput(r, "http")}
	o, err := g.invoke(r.Context(), in)
	if o != nil {
		setInvocationHeaders(w.Header(), o)
	}
	if err != nil {
		g.writeInvokeError(w, r, err)
		return
	}
	g.writeResult(w, o, "application/json")
}

// writeResult writes a function's answer.
func (g *Gateway) writeResult(w http.ResponseWriter, o *outcome, defaultType string) {
	res := o.res
	if res.FuncErr != nil {
		w.Header().Set(api.HeaderFunctionError, "Unhandled")
		writeJSON(w, http.StatusBadGateway, res.FuncErr)
		return
	}
	if o.version.Config.Mode == api.ModeHTTP {
		for k, vs := range res.Header {
			// A function cannot set the platform's own headers.
			if strings.EqualFold(k, "Content-Length") || strings.HasPrefix(http.CanonicalHeaderKey(k), "X-Zfaas-") {
				continue
			}
			w.Header()[k] = vs
		}
		status := res.StatusCode
		if status == 0 {
			status = http.StatusOK
		}
		w.WriteHeader(status)
		_, _ = w.Write(res.Payload)
		return
	}
	w.Header().Set("Content-Type", defaultType)
	w.WriteHeader(http.StatusOK)
	_, _ = w.Write(res.Payload)
}

// writeInvokeError maps a failed invocation: platform errors get the stable
// error body, failures of the function get Lambda's {errorType, errorMessage}.
func (g *Gateway) writeInvokeError(w http.ResponseWriter, r *http.Request, err error) {
	var ie *api.InitError
	switch {
	case errors.As(err, &ie):
		w.Header().Set(api.HeaderFunctionError, "Unhandled")
		writeJSON(w, http.StatusBadGateway, ie.FuncErr)
	case errors.Is(err, api.ErrCrashed):
		w.Header().Set(api.HeaderFunctionError, "Unhandled")
		writeJSON(w, http.StatusBadGateway, api.FunctionError{ErrorType: "Runtime.ExitError", ErrorMessage: "the function's instance exited during the invocation; it was replaced"})
	case errors.Is(err, api.ErrResponseTooLarge):
		w.Header().Set(api.HeaderFunctionError, "Unhandled")
		writeJSON(w, http.StatusBadGateway, api.FunctionError{ErrorType: "Function.ResponseSizeTooLarge", ErrorMessage: "the function's response is over the limit"})
	case errors.Is(err, context.Canceled) && r.Context().Err() != nil:
		// The client went away; nobody reads an answer.
		w.WriteHeader(499)
	default:
		g.writeError(w, r, err)
	}
}

// handleOpenFaaS serves /function/{name}[/{rest...}] like OpenFaaS's
// gateway: HTTP-mode functions get the request proxied (method, path, query,
// headers); Lambda-mode functions get the body as the event.
func (g *Gateway) handleOpenFaaS(w http.ResponseWriter, r *http.Request) {
	name, qualifier, _ := strings.Cut(r.PathValue("name"), ":")
	caller, err := g.caller(r)
	if err != nil {
		g.writeError(w, r, err)
		return
	}
	payload, err := g.readPayload(w, r)
	if err != nil {
		g.writeError(w, r, err)
		return
	}
	hdr := r.Header.Clone()
	for _, h := range []string{"Authorization", "Cookie", "Proxy-Authorization"} {
		// Credentials for the gateway are not the function's business;
		// functions that need a header must get it under another name.
		hdr.Del(h)
	}
	in := invocation{
		name: name, qualifier: qualifier, payload: payload, traceID: traceID(r),
		caller: caller, request: requestInput(r, "http"),
		http: &api.HTTPRequest{Method: r.Method, Path: "/" + r.PathValue("rest"), RawQuery: r.URL.RawQuery, Header: hdr},
	}
	o, err := g.invoke(r.Context(), in)
	if o != nil {
		setInvocationHeaders(w.Header(), o)
	}
	if err != nil {
		g.writeInvokeError(w, r, err)
		return
	}
	g.writeResult(w, o, "application/json")
}
