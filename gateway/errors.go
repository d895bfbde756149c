package gateway

import (
	"encoding/json"
	"errors"
	"net/http"

	"github.com/zfaas/zfaas/api"
	"github.com/zfaas/zfaas/runtime/archive"
)

// Stable error codes of the gateway's JSON error body. Clients may match on
// them; the message is for people and may change.
const (
	CodeBadRequest       = "bad_request"
	CodeNotFound         = "not_found"
	CodeFunctionNotFound = "function_not_found"
	CodeVersionNotFound  = "version_not_found"
	CodeAliasNotFound    = "alias_not_found"
	CodePayloadTooLarge  = "payload_too_large"
	CodeTooManyRequests  = "too_many_requests"
	CodeTimeout          = "function_timeout"
	CodeConflict         = "conflict"
	CodeUnsupported      = "unsupported"
	CodeMethodNotAllowed = "method_not_allowed"
	CodeInternal         = "internal_error"
	CodeUnavailable      = "unavailable"
	CodeForbidden        = "forbidden"
	CodeUnauthenticated  = "unauthenticated"
	CodeWorkerLost       = "worker_lost"
)

// httpError is an error with a status and a client-safe code and message.
type httpError struct {
	status  int
	code    string
	message string
}

func (e *httpError) Error() string { return e.code + ": " + e.message }

func errf(status int, code, message string) *httpError {
	return &httpError{status: status, code: code, message: message}
}

// writeJSON writes v with status.
func writeJSON(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("X-Content-Type-Options", "nosniff")
	w.WriteHeader(status)
	_ = json.NewEncoder(w).Encode(v)
}

// writeError maps err to a status and a stable body. Internal detail is
// logged, never sent.
func (g *Gateway) writeError(w http.ResponseWriter, r *http.Request, err error) {
	status, code, msg := g.classify(err)
	var de *deniedError
	if errors.As(err, &de) {
		g.log.Info("denied by policy", "method", r.Method, "path", r.URL.Path, "decision", de.d.ID, "revision", de.d.Revision, "reasons", de.d.Reasons)
		writeJSON(w, status, api.ErrorBody{Error: api.ErrorDetail{Code: code, Message: msg, DecisionID: de.d.ID}})
		return
	}
	if status >= 500 {
		g.log.Error("request failed", "method", r.Method, "path", r.URL.Path, "status", status, "err", err)
	} else {
		g.log.Debug("request refused", "method", r.Method, "path", r.URL.Path, "status", status, "err", err)
	}
	writeJSON(w, status, api.ErrorBody{Error: api.ErrorDetail{Code: code, Message: msg}})
}

func (g *Gateway) classify(err error) (int, string, string) {
	var he *httpError
	var ae *archive.Error
	var mbe *http.MaxBytesError
	var de *deniedError
	switch {
	case errors.As(err, &de):
		return http.StatusForbidden, CodeForbidden, "denied by policy"
	case errors.Is(err, ErrUnauthenticated):
		return http.StatusUnauthorized, CodeUnauthenticated, "credentials could not be verified"
	case errors.As(err, &he):
		return he.status, he.code, he.message
	case errors.As(err, &ae):
		return ae.HTTPStatus(), ae.Code, ae.Msg
	case errors.As(err, &mbe):
		return http.StatusRequestEntityTooLarge, CodePayloadTooLarge, "request body over the limit"
	case errors.Is(err, ErrFunctionNotFound):
		return http.StatusNotFound, CodeFunctionNotFound, err.Error()
	case errors.Is(err, ErrVersionNotFound):
		return http.StatusNotFound, CodeVersionNotFound, err.Error()
	case errors.Is(err, ErrAliasNotFound):
		return http.StatusNotFound, CodeAliasNotFound, err.Error()
	case errors.Is(err, ErrContention):
		return http.StatusConflict, CodeConflict, "too many concurrent updates; retry"
	case errors.Is(err, api.ErrNoCapacity):
		return http.StatusTooManyRequests, CodeTooManyRequests, "function is at its concurrency limit; retry later"
	case errors.Is(err, api.ErrTimeout):
		return http.StatusGatewayTimeout, CodeTimeout, "function timed out; its instance was stopped"
	case errors.Is(err, ErrWorkerLost):
		return http.StatusBadGateway, CodeWorkerLost, "the worker running the invocation went away; it may or may not have completed"
	case errors.Is(err, ErrNoWorker):
		return http.StatusServiceUnavailable, CodeUnavailable, "no worker can run the function now; retry later"
	}
	return http.StatusInternalServerError, CodeInternal, "internal error"
}

// WriteError writes the stable JSON error body with status, for listeners
// next to the gateway (the health listener) that answer in its format.
func WriteError(w http.ResponseWriter, status int, code, message string) {
	writeJSON(w, status, api.ErrorBody{Error: api.ErrorDetail{Code: code, Message: message}})
}
