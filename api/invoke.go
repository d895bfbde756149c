package api

import (
	"errors"
	"fmt"
	"net/http"
	"time"
)

// Errors a worker reports for an invocation (wrapped); match with errors.Is.
// They cross role boundaries, so the gateway maps them to status codes
// without knowing which worker ran the call.
var (
	// ErrNoCapacity: the function is at its concurrency limit and nothing
	// became free within the wait budget.
	ErrNoCapacity = errors.New("no capacity")
	// ErrTimeout: the invocation ran past the function's timeout; the
	// instance was killed.
	ErrTimeout = errors.New("function timed out")
	// ErrCrashed: the instance exited during the invocation; it was replaced.
	ErrCrashed = errors.New("function instance exited")
	// ErrInit: the instance failed to initialise (see InitError).
	ErrInit = errors.New("function initialisation failed")
	// ErrResponseTooLarge: the function's response exceeded the limit.
	ErrResponseTooLarge = errors.New("response too large")
)

// InitError carries the function's own report of an initialisation
// failure. It unwraps to ErrInit.
type InitError struct {
	FuncErr FunctionError
}

func (e *InitError) Error() string {
	return fmt.Sprintf("%s: %s", e.FuncErr.ErrorType, e.FuncErr.ErrorMessage)
}

// Unwrap returns ErrInit.
func (e *InitError) Unwrap() error { return ErrInit }

// Invocation is one call handed by the gateway to a worker.
type Invocation struct {
	// ID is the invocation id (also the Lambda request id).
	ID string
	// Version is the resolved function version to run.
	Version Version
	// Payload is the event (Lambda mode) or the request body (HTTP mode).
	Payload []byte
	// HTTP, for HTTP-mode functions, is the request line and headers to
	// forward; nil means POST / with Payload.
	HTTP *HTTPRequest
	// MaxConcurrency is the function's instance limit (0 = unlimited).
	MaxConcurrency int
	// WaitBudget bounds the wait for a free instance; 0 means fail at once
	// when the function is at its limit.
	WaitBudget time.Duration
	// TraceID is passed to the function as Lambda-Runtime-Trace-Id.
	TraceID string
}

// HTTPRequest is the part of an HTTP request forwarded to an HTTP-mode function.
type HTTPRequest struct {
	Method   string
	Path     string
	RawQuery string
	Header   http.Header
}

// InvocationResult is the outcome of an invocation that reached the function.
type InvocationResult struct {
	Payload []byte
	// FuncErr is set when the function reported an error (Lambda mode).
	FuncErr *FunctionError
	// StatusCode and Header are the function's reply in HTTP mode.
	StatusCode int
	Header     http.Header
	// ColdStart is true when an instance was started for this invocation.
	ColdStart bool
	// InitDuration is the cold start's duration (zero when warm).
	InitDuration time.Duration
	// Duration is the time the function spent on the invocation.
	Duration time.Duration
	// InstanceID names the instance that ran it.
	InstanceID string
}

// LogRecord is one line a function instance wrote to stdout or stderr.
type LogRecord struct {
	Time         time.Time `json:"time"`
	Tenant       string    `json:"tenant"`
	Function     string    `json:"function"`
	Version      int64     `json:"version"`
	InstanceID   string    `json:"instanceId"`
	InvocationID string    `json:"invocationId,omitempty"`
	Stream       string    `json:"stream"`
	Line         string    `json:"line"`
}
