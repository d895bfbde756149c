package workerapi

import (
	"encoding/json"
	"fmt"
	"net/http"
	"time"

	"github.com/zfaas/zfaas/api"
	zfaasv1 "github.com/zfaas/zfaas/api/zfaas/v1"
	"github.com/zfaas/zfaas/runtime/pool"
)

// The version record travels as its JSON encoding (the store's), so a field
// added to api.Version reaches the worker without a protocol change.

func encodeVersion(v api.Version) ([]byte, error) {
	b, err := json.Marshal(v)
	if err != nil {
		return nil, fmt.Errorf("encode version: %w", err)
	}
	return b, nil
}

func decodeVersion(b []byte) (api.Version, error) {
	var v api.Version
	if err := json.Unmarshal(b, &v); err != nil {
		return api.Version{}, fmt.Errorf("decode version: %w", err)
	}
	return v, nil
}

func encodeInvocation(inv api.Invocation) (*zfaasv1.WorkerInvokeRequest, error) {
	v, err := encodeVersion(inv.Version)
	if err != nil {
		return nil, err
	}
	req := &zfaasv1.WorkerInvokeRequest{
		InvocationId:    inv.ID,
		Version:         v,
		Payload:         inv.Payload,
		MaxConcurrency:  int32(inv.MaxConcurrency),
		WaitBudgetNanos: int64(inv.WaitBudget),
		TraceId:         inv.TraceID,
	}
	if h := inv.HTTP; h != nil {
		req.Http = &zfaasv1.WorkerHTTPRequest{Method: h.Method, Path: h.Path, RawQuery: h.RawQuery, Header: headerToWire(h.Header)}
	}
	return req, nil
}

func decodeInvocation(req *zfaasv1.WorkerInvokeRequest) (api.Invocation, error) {
	v, err := decodeVersion(req.GetVersion())
	if err != nil {
		return api.Invocation{}, err
	}
	if req.GetMaxConcurrency() < 0 || req.GetWaitBudgetNanos() < 0 {
		return api.Invocation{}, fmt.Errorf("negative max concurrency or wait budget")
	}
	inv := api.Invocation{
		ID:             req.GetInvocationId(),
		Version:        v,
		Payload:        req.GetPayload(),
		MaxConcurrency: int(req.GetMaxConcurrency()),
		WaitBudget:     time.Duration(req.GetWaitBudgetNanos()),
		TraceID:        req.GetTraceId(),
	}
	if h := req.GetHttp(); h != nil {
		inv.HTTP = &api.HTTPRequest{Method: h.GetMethod(), Path: h.GetPath(), RawQuery: h.GetRawQuery(), Header: headerFromWire(h.GetHeader())}
	}
	return inv, nil
}

func encodeResult(res *api.InvocationResult) *zfaasv1.WorkerInvokeResponse {
	return &zfaasv1.WorkerInvokeResponse{
		Payload:           res.Payload,
		FunctionError:     functionErrorToWire(res.FuncErr),
		StatusCode:        int32(res.StatusCode),
		Header:            headerToWire(res.Header),
		ColdStart:         res.ColdStart,
		InitDurationNanos: int64(res.InitDuration),
		DurationNanos:     int64(res.Duration),
		InstanceId:        res.InstanceID,
	}
}

func decodeResult(resp *zfaasv1.WorkerInvokeResponse) *api.InvocationResult {
	return &api.InvocationResult{
		Payload:      resp.GetPayload(),
		FuncErr:      functionErrorFromWire(resp.GetFunctionError()),
		StatusCode:   int(resp.GetStatusCode()),
		Header:       headerFromWire(resp.GetHeader()),
		ColdStart:    resp.GetColdStart(),
		InitDuration: time.Duration(resp.GetInitDurationNanos()),
		Duration:     time.Duration(resp.GetDurationNanos()),
		InstanceID:   resp.GetInstanceId(),
	}
}

// headerToWire keeps nil apart from empty.
func headerToWire(h http.Header) *zfaasv1.WorkerHeader {
	if h == nil {
		return nil
	}
	w := &zfaasv1.WorkerHeader{Fields: make([]*zfaasv1.WorkerHeaderField, 0, len(h))}
	for name, values := range h {
		w.Fields = append(w.Fields, &zfaasv1.WorkerHeaderField{Name: name, Values: values})
	}
	return w
}

func headerFromWire(w *zfaasv1.WorkerHeader) http.Header {
	if w == nil {
		return nil
	}
	h := make(http.Header, len(w.GetFields()))
	for _, f := range w.GetFields() {
		h[f.GetName()] = append(h[f.GetName()], f.GetValues()...)
	}
	return h
}

func functionErrorToWire(fe *api.FunctionError) *zfaasv1.FunctionError {
	if fe == nil {
		return nil
	}
	return &zfaasv1.FunctionError{ErrorType: fe.ErrorType, ErrorMessage: fe.ErrorMessage, StackTrace: fe.StackTrace}
}

func functionErrorFromWire(fe *zfaasv1.FunctionError) *api.FunctionError {
	if fe == nil {
		return nil
	}
	return &api.FunctionError{ErrorType: fe.GetErrorType(), ErrorMessage: fe.GetErrorMessage(), StackTrace: fe.GetStackTrace()}
}

func loadToWire(l Load) *zfaasv1.WorkerLoadResponse {
	resp := &zfaasv1.WorkerLoadResponse{
		Versions:  make([]*zfaasv1.WorkerVersionLoad, 0, len(l.Versions)),
		Instances: int32(l.Instances),
		MemoryMb:  int32(l.MemoryMB),
		Inflight:  int32(l.Inflight),
	}
	for key, s := range l.Versions {
		resp.Versions = append(resp.Versions, &zfaasv1.WorkerVersionLoad{Key: key, Idle: int32(s.Idle), Total: int32(s.Total)})
	}
	return resp
}

func loadFromWire(resp *zfaasv1.WorkerLoadResponse) Load {
	l := Load{
		Versions:  make(map[string]pool.Stats, len(resp.GetVersions())),
		Instances: int(resp.GetInstances()),
		MemoryMB:  int(resp.GetMemoryMb()),
		Inflight:  int(resp.GetInflight()),
	}
	for _, v := range resp.GetVersions() {
		l.Versions[v.GetKey()] = pool.Stats{Idle: int(v.GetIdle()), Total: int(v.GetTotal())}
	}
	return l
}
