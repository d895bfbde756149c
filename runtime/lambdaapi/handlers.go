package lambdaapi

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/zfaas/zfaas/api"
)

// apiPrefix is the path prefix of the 2018-06-01 Runtime API.
const apiPrefix = "/2018-06-01/runtime/"

// Runtime API header names.
const (
	headerRequestID       = "Lambda-Runtime-Aws-Request-Id"
	headerDeadline        = "Lambda-Runtime-Deadline-Ms"
	headerFunctionARN     = "Lambda-Runtime-Invoked-Function-Arn"
	headerTraceID         = "Lambda-Runtime-Trace-Id"
	headerClientContext   = "Lambda-Runtime-Client-Context"
	headerErrorType       = "Lambda-Runtime-Function-Error-Type"
	trailerErrorBody      = "Lambda-Runtime-Function-Error-Body"
	maxStackTraceEntries  = 256
	maxStackTraceEntryLen = 4096
)

// Error types in the bodies of the Server's 4xx and 5xx answers to the runtime.
const (
	apiErrInvalidRequestID = "InvalidRequestID"
	apiErrInvalidState     = "InvalidStateTransition"
	apiErrTooLarge         = "RequestEntityTooLarge"
	apiErrBadRequest       = "InvalidRequest"
	apiErrNotFound         = "NotFound"
	apiErrMethod           = "MethodNotAllowed"
	apiErrShutdown         = "ServiceUnavailable"
)

// apiError is an answer to the runtime other than success.
type apiError struct {
	status int
	typ    string
	msg    string
}

var _ http.Handler = (*Server)(nil)

// ServeHTTP implements http.Handler for the Runtime API endpoints. New
// already serves it on Addr; mounting it elsewhere bypasses Config.Authorize.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rest, ok := strings.CutPrefix(r.URL.Path, apiPrefix)
	if !ok {
		writeError(w, apiError{http.StatusNotFound, apiErrNotFound, "no such Runtime API endpoint"})
		return
	}
	switch rest {
	case "invocation/next":
		if allowMethod(w, r, http.MethodGet) {
			s.handleNext(w, r)
		}
		return
	case "init/error":
		if allowMethod(w, r, http.MethodPost) {
			s.handleInitError(w, r)
		}
		return
	}
	tail, ok := strings.CutPrefix(rest, "invocation/")
	id, action, ok2 := strings.Cut(tail, "/")
	if !ok || !ok2 || id == "" || (action != "response" && action != "error") {
		writeError(w, apiError{http.StatusNotFound, apiErrNotFound, "no such Runtime API endpoint"})
		return
	}
	if !allowMethod(w, r, http.MethodPost) {
		return
	}
	if action == "response" {
		s.handleResponse(w, r, id)
	} else {
		s.handleError(w, r, id)
	}
}

// handleNext serves GET /runtime/invocation/next: it blocks until Invoke
// hands over an event. A newer GET /next supersedes a blocked one.
func (s *Server) handleNext(w http.ResponseWriter, r *http.Request) {
	s.mu.Lock()
	if s.initErr != nil {
		s.mu.Unlock()
		writeError(w, apiError{http.StatusForbidden, apiErrInvalidState, "the runtime reported an initialisation error and must exit"})
		return
	}
	if !s.isReady {
		s.isReady = true
		close(s.ready)
		s.log.Debug("runtime initialised")
	}
	if inv := s.current; inv != nil && inv.delivered && !inv.finished {
		s.log.Warn("runtime asked for the next event without answering the current one", "request_id", inv.ev.RequestID)
		s.finishLocked(inv, Result{FuncErr: &api.FunctionError{
			ErrorType:    ErrorTypeNoResponse,
			ErrorMessage: "the runtime asked for the next event without answering this one",
		}})
	}
	s.nextGen++
	gen := s.nextGen
	s.notifyLocked()
	s.waiting++
	var inv *invocation
	for inv == nil {
		if gen != s.nextGen {
			s.waiting--
			s.mu.Unlock()
			writeError(w, apiError{http.StatusForbidden, apiErrInvalidState, "a newer request for the next event replaced this one"})
			return
		}
		if cur := s.current; cur != nil && !cur.delivered && !cur.finished {
			inv = cur
			inv.delivered = true
			break
		}
		changed := s.changed
		s.mu.Unlock()
		select {
		case <-changed:
		case <-r.Context().Done():
		case <-s.closed:
		}
		s.mu.Lock()
		if r.Context().Err() != nil || s.isClosed() {
			s.waiting--
			s.mu.Unlock()
			writeError(w, apiError{http.StatusInternalServerError, apiErrShutdown, "the runtime API is shutting down"})
			return
		}
	}
	s.waiting--
	s.mu.Unlock()

	ev := inv.ev
	h := w.Header()
	h.Set(headerRequestID, ev.RequestID)
	h.Set(headerDeadline, strconv.FormatInt(ev.Deadline.UnixMilli(), 10))
	if ev.InvokedFunctionARN != "" {
		h.Set(headerFunctionARN, ev.InvokedFunctionARN)
	}
	if ev.TraceID != "" {
		h.Set(headerTraceID, ev.TraceID)
	}
	if ev.ClientContext != "" {
		h.Set(headerClientContext, ev.ClientContext)
	}
	h.Set("Content-Type", "application/json")
	h.Set("Content-Length", strconv.Itoa(len(ev.Payload)))
	w.WriteHeader(http.StatusOK)
	if _, err := w.Write(ev.Payload); err != nil {
		s.log.Warn("send event to runtime", "request_id", ev.RequestID, "err", err)
	}
	s.log.Debug("event delivered", "request_id", ev.RequestID)
}

// handleResponse serves POST /runtime/invocation/{id}/response.
func (s *Server) handleResponse(w http.ResponseWriter, r *http.Request, id string) {
	inv, aerr := s.lookup(id)
	if aerr != nil {
		writeError(w, *aerr)
		return
	}
	limit := s.cfg.MaxResponseBytes
	body, err := readBody(w, r, limit)
	if errors.Is(err, errTooLarge) {
		msg := fmt.Sprintf("response payload exceeds the limit of %d bytes", limit)
		s.log.Warn("runtime response too large", "request_id", id, "limit", limit)
		s.complete(inv, Result{FuncErr: &api.FunctionError{ErrorType: ErrorTypeResponseTooLarge, ErrorMessage: msg}})
		writeError(w, apiError{http.StatusRequestEntityTooLarge, apiErrTooLarge, msg})
		return
	}
	if err != nil {
		s.log.Warn("read runtime response", "request_id", id, "err", err)
		writeError(w, apiError{http.StatusBadRequest, apiErrBadRequest, "could not read the request body"})
		return
	}
	res := Result{Payload: body}
	// A runtime that streams its response reports a failure after the
	// body has started in trailers.
	if t := r.Trailer.Get(headerErrorType); t != "" {
		res = Result{FuncErr: errorFromTrailer(t, r.Trailer.Get(trailerErrorBody))}
	}
	if !s.complete(inv, res) {
		writeError(w, staleError(id))
		return
	}
	writeAccepted(w)
}

// handleError serves POST /runtime/invocation/{id}/error.
func (s *Server) handleError(w http.ResponseWriter, r *http.Request, id string) {
	inv, aerr := s.lookup(id)
	if aerr != nil {
		writeError(w, *aerr)
		return
	}
	hdrType := r.Header.Get(headerErrorType)
	body, err := readBody(w, r, MaxErrorBytes)
	if errors.Is(err, errTooLarge) {
		msg := fmt.Sprintf("error report exceeds the limit of %d bytes", MaxErrorBytes)
		s.complete(inv, Result{FuncErr: &api.FunctionError{ErrorType: orDefault(hdrType, ErrorTypeErrorTooLarge), ErrorMessage: msg}})
		writeError(w, apiError{http.StatusRequestEntityTooLarge, apiErrTooLarge, msg})
		return
	}
	if err != nil {
		s.log.Warn("read runtime error report", "request_id", id, "err", err)
		writeError(w, apiError{http.StatusBadRequest, apiErrBadRequest, "could not read the request body"})
		return
	}
	fe := parseFunctionError(body, hdrType)
	if !s.complete(inv, Result{FuncErr: fe}) {
		writeError(w, staleError(id))
		return
	}
	s.log.Debug("function error", "request_id", id, "error_type", fe.ErrorType)
	writeAccepted(w)
}

// handleInitError serves POST /runtime/init/error.
func (s *Server) handleInitError(w http.ResponseWriter, r *http.Request) {
	if aerr := s.initStateError(); aerr != nil {
		writeError(w, *aerr)
		return
	}
	hdrType := r.Header.Get(headerErrorType)
	body, err := readBody(w, r, MaxErrorBytes)
	var fe *api.FunctionError
	tooLarge := errors.Is(err, errTooLarge)
	switch {
	case tooLarge:
		fe = &api.FunctionError{
			ErrorType:    orDefault(hdrType, ErrorTypeErrorTooLarge),
			ErrorMessage: fmt.Sprintf("initialisation error report exceeds the limit of %d bytes", MaxErrorBytes),
		}
	case err != nil:
		s.log.Warn("read runtime init error", "err", err)
		writeError(w, apiError{http.StatusBadRequest, apiErrBadRequest, "could not read the request body"})
		return
	default:
		fe = parseFunctionError(body, hdrType)
	}

	s.mu.Lock()
	aerr := s.initStateErrorLocked()
	if aerr == nil {
		s.initErr = &InitError{ErrorType: fe.ErrorType, ErrorMessage: fe.ErrorMessage, StackTrace: fe.StackTrace}
		close(s.initFailed)
	}
	s.mu.Unlock()
	if aerr != nil {
		writeError(w, *aerr)
		return
	}
	s.log.Warn("function initialisation failed", "error_type", fe.ErrorType, "error_message", fe.ErrorMessage)
	if tooLarge {
		writeError(w, apiError{http.StatusRequestEntityTooLarge, apiErrTooLarge, fe.ErrorMessage})
		return
	}
	writeAccepted(w)
}

func (s *Server) initStateError() *apiError {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.initStateErrorLocked()
}

func (s *Server) initStateErrorLocked() *apiError {
	switch {
	case s.initErr != nil:
		return &apiError{http.StatusForbidden, apiErrInvalidState, "an initialisation error was already reported"}
	case s.isReady:
		return &apiError{http.StatusForbidden, apiErrInvalidState, "initialisation already finished: the runtime has asked for an event"}
	}
	return nil
}

// lookup returns the in-progress invocation the runtime may answer as id,
// or the error to answer with.
func (s *Server) lookup(id string) (*invocation, *apiError) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if inv := s.current; inv != nil && inv.delivered && !inv.finished && inv.ev.RequestID == id {
		return inv, nil
	}
	if s.seenLocked(id) {
		e := staleError(id)
		return nil, &e
	}
	return nil, &apiError{http.StatusBadRequest, apiErrInvalidRequestID, fmt.Sprintf("unknown request ID %q: no such invocation is in progress", id)}
}

func staleError(id string) apiError {
	return apiError{http.StatusForbidden, apiErrInvalidState, fmt.Sprintf("invocation %q is no longer in progress: it was already answered or timed out", id)}
}

// complete finishes inv with res unless it already finished; it reports
// whether res was taken.
func (s *Server) complete(inv *invocation, res Result) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if inv.finished {
		return false
	}
	s.finishLocked(inv, res)
	return true
}

var errTooLarge = errors.New("request body too large")

// readBody reads r's body up to limit bytes; it returns errTooLarge beyond.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	if r.ContentLength > limit {
		w.Header().Set("Connection", "close")
		return nil, errTooLarge
	}
	var buf bytes.Buffer
	if r.ContentLength > 0 {
		buf.Grow(int(r.ContentLength))
	}
	_, err := buf.ReadFrom(http.MaxBytesReader(w, r.Body, limit))
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return nil, errTooLarge
	}
	if err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// parseFunctionError turns an error report into a FunctionError. The report
// is normally {"errorMessage", "errorType", "stackTrace"}; stackTrace may be a
// list of strings (Python, Node.js) or of {path, line, label} frames (Go).
// A body that is not a JSON object becomes the message.
func parseFunctionError(body []byte, hdrType string) *api.FunctionError {
	fe := &api.FunctionError{}
	var raw struct {
		ErrorMessage json.RawMessage `json:"errorMessage"`
		ErrorType    json.RawMessage `json:"errorType"`
		StackTrace   json.RawMessage `json:"stackTrace"`
	}
	body = bytes.TrimSpace(body)
	if len(body) > 0 && body[0] == '{' && json.Unmarshal(body, &raw) == nil {
		fe.ErrorMessage = jsonText(raw.ErrorMessage)
		fe.ErrorType = jsonText(raw.ErrorType)
		fe.StackTrace = stackLines(raw.StackTrace)
	} else {
		fe.ErrorMessage = strings.ToValidUTF8(string(body), string(utf8.RuneError))
	}
	fe.ErrorType = orDefault(orDefault(fe.ErrorType, hdrType), ErrorTypeUnknown)
	return fe
}

// errorFromTrailer decodes a streamed response's error trailers.
func errorFromTrailer(typ, b64 string) *api.FunctionError {
	body, err := base64.StdEncoding.DecodeString(b64)
	if err != nil || len(body) == 0 {
		return &api.FunctionError{ErrorType: typ, ErrorMessage: "the function failed while streaming its response"}
	}
	return parseFunctionError(body, typ)
}

// jsonText returns a JSON string's value, or the compact text of any other
// JSON value; null and absent give "".
func jsonText(raw json.RawMessage) string {
	if len(raw) == 0 || string(raw) == "null" {
		return ""
	}
	var s string
	if json.Unmarshal(raw, &s) == nil {
		return s
	}
	var b bytes.Buffer
	if json.Compact(&b, raw) != nil {
		return string(raw)
	}
	return b.String()
}

func stackLines(raw json.RawMessage) []string {
	if len(raw) == 0 || string(raw) == "null" {
		return nil
	}
	var items []json.RawMessage
	if json.Unmarshal(raw, &items) != nil {
		// A single string (some runtimes send the whole stack as one).
		return capLines(strings.Split(strings.TrimRight(jsonText(raw), "\n"), "\n"))
	}
	out := make([]string, 0, min(len(items), maxStackTraceEntries))
	for _, it := range items {
		if len(out) == maxStackTraceEntries {
			break
		}
		var frame struct {
			Path  *string `json:"path"`
			Line  int     `json:"line"`
			Label string  `json:"label"`
		}
		if len(it) > 0 && it[0] == '{' && json.Unmarshal(it, &frame) == nil && frame.Path != nil {
			out = append(out, fmt.Sprintf("%s (%s:%d)", frame.Label, *frame.Path, frame.Line))
			continue
		}
		out = append(out, jsonText(it))
	}
	return capLines(out)
}

func capLines(lines []string) []string {
	if len(lines) > maxStackTraceEntries {
		lines = lines[:maxStackTraceEntries]
	}
	for i, l := range lines {
		if len(l) > maxStackTraceEntryLen {
			lines[i] = strings.ToValidUTF8(l[:maxStackTraceEntryLen], "") + "…"
		}
	}
	return lines
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

func allowMethod(w http.ResponseWriter, r *http.Request, method string) bool {
	if r.Method == method {
		return true
	}
	w.Header().Set("Allow", method)
	writeError(w, apiError{http.StatusMethodNotAllowed, apiErrMethod, "method " + r.Method + " is not allowed here; use " + method})
	return false
}

func writeAccepted(w http.ResponseWriter) {
	writeJSON(w, http.StatusAccepted, map[string]string{"status": "OK"})
}

// writeError answers with the Runtime API's error body.
func writeError(w http.ResponseWriter, e apiError) {
	writeJSON(w, e.status, map[string]string{"errorMessage": e.msg, "errorType": e.typ})
}

func writeJSON(w http.ResponseWriter, status int, v any) {
	b, _ := json.Marshal(v) // maps of strings always marshal
	w.Header().Set("Content-Type", "application/json")
	w.Header().Set("Content-Length", strconv.Itoa(len(b)))
	w.WriteHeader(status)
	_, _ = w.Write(b)
}
