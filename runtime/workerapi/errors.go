package workerapi

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync/atomic"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/zfaas/zfaas/api"
	zfaasv1 "github.com/zfaas/zfaas/api/zfaas/v1"
	"github.com/zfaas/zfaas/runtime/archive"
	"github.com/zfaas/zfaas/runtime/pool"
	"github.com/zfaas/zfaas/store"
)

// Errors of the remote path (wrapped); match with errors.Is. Every error
// wrapping ErrWorkerUnavailable also wraps exactly one of ErrNotDelivered
// and ErrLost.
var (
	// ErrWorkerUnavailable: the worker could not be reached, is shutting
	// down, or the connection to it broke during the call.
	ErrWorkerUnavailable = errors.New("worker unavailable")
	// ErrNotDelivered: the call never reached the worker's invoker (no
	// connection could be made, the TLS handshake failed, the worker was
	// closing), so the function did not run and the invocation may be
	// placed on another worker.
	ErrNotDelivered = errors.New("invocation not delivered")
	// ErrLost: the call was sent but no answer came back (the worker died
	// or the connection was reset mid-call). The function may have run,
	// fully or partly; the outcome is unknown, so the invocation must be
	// reported as failed rather than repeated blindly.
	ErrLost = errors.New("invocation outcome unknown")
	// ErrUnauthorized: the worker refused the caller's SPIFFE ID.
	ErrUnauthorized = errors.New("caller not authorized by the worker")
	// ErrRequestTooLarge: the request is over the message size limit; it
	// was not delivered. The error also matches *http.MaxBytesError.
	ErrRequestTooLarge = errors.New("request over the message size limit")
)

// RemoteError is an error the worker reported that has no Go value of its
// own: a platform failure on the worker, or a request it found malformed.
type RemoteError struct {
	Code    codes.Code
	Message string
}

func (e *RemoteError) Error() string { return e.Message }

// GRPCStatus lets status.Code and status.FromError see the worker's code.
func (e *RemoteError) GRPCStatus() *status.Status { return status.New(e.Code, e.Message) }

// wireError is an error rebuilt from a worker's status: it reads as the
// worker's own message and unwraps to the values the worker's error
// matched, plus the status itself.
type wireError struct {
	msg  string
	errs []error
}

func (e *wireError) Error() string   { return e.msg }
func (e *wireError) Unwrap() []error { return e.errs }

// errorStatus turns an error of the local invoker into the status sent to
// the client; internal reports whether it is a platform failure worth
// logging.
func errorStatus(err error) (st *status.Status, internal bool) {
	d := &zfaasv1.WorkerError{}
	var code codes.Code
	var ie *api.InitError
	var ae *archive.Error
	switch {
	case errors.As(err, &ie):
		code, d.Reason = codes.FailedPrecondition, zfaasv1.WorkerError_INIT_FAILED
		d.FunctionError = functionErrorToWire(&ie.FuncErr)
	case errors.Is(err, api.ErrInit):
		code, d.Reason = codes.FailedPrecondition, zfaasv1.WorkerError_INIT_FAILED
	case errors.Is(err, api.ErrNoCapacity):
		code, d.Reason = codes.ResourceExhausted, zfaasv1.WorkerError_NO_CAPACITY
	case errors.Is(err, api.ErrTimeout):
		code, d.Reason = codes.DeadlineExceeded, zfaasv1.WorkerError_FUNCTION_TIMEOUT
	case errors.Is(err, api.ErrCrashed):
		code, d.Reason = codes.Aborted, zfaasv1.WorkerError_CRASHED
	case errors.Is(err, api.ErrResponseTooLarge):
		code, d.Reason = codes.ResourceExhausted, zfaasv1.WorkerError_RESPONSE_TOO_LARGE
	case errors.As(err, &ae):
		code, d.Reason = codes.FailedPrecondition, zfaasv1.WorkerError_PACKAGE_REFUSED
		d.PackageCode, d.PackageMessage = ae.Code, ae.Msg
	case errors.Is(err, store.ErrNotFound):
		code, d.Reason = codes.NotFound, zfaasv1.WorkerError_PACKAGE_NOT_FOUND
	case errors.Is(err, pool.ErrClosed):
		code, d.Reason = codes.Unavailable, zfaasv1.WorkerError_WORKER_CLOSING
	case errors.Is(err, context.Canceled):
		code, d.Reason = codes.Canceled, zfaasv1.WorkerError_CANCELED
	case errors.Is(err, context.DeadlineExceeded):
		code, d.Reason = codes.DeadlineExceeded, zfaasv1.WorkerError_CALLER_DEADLINE
	default:
		code, d.Reason = codes.Internal, zfaasv1.WorkerError_INTERNAL
		internal = true
	}
	return withDetail(status.New(code, err.Error()), d), internal
}

// reasonStatus is a status of the server's own making.
func reasonStatus(code codes.Code, reason zfaasv1.WorkerError_Reason, msg string) *status.Status {
	return withDetail(status.New(code, msg), &zfaasv1.WorkerError{Reason: reason})
}

func withDetail(st *status.Status, d *zfaasv1.WorkerError) *status.Status {
	if ds, err := st.WithDetails(d); err == nil {
		return ds
	}
	return st
}

// delivery records how far a call got, from the client's stats handler.
type delivery struct {
	// sent: the call's stream was opened on a connection (headers handed
	// to the transport), so the worker may have received it.
	sent atomic.Bool
	// answered: the worker started a response (response headers arrived).
	answered atomic.Bool
}

// statusError turns the error of a call back into the error the worker's
// invoker returned, or into an ErrWorkerUnavailable error when the
// transport failed. ctx is the caller's context of the call.
func statusError(ctx context.Context, err error, dl *delivery, limit int) error {
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	for _, d := range st.Details() {
		if we, ok := d.(*zfaasv1.WorkerError); ok {
			return reasonError(st, we)
		}
	}
	// No detail: the status was made by gRPC on either side.
	msg := st.Message()
	switch code := st.Code(); {
	case (code == codes.Canceled || code == codes.DeadlineExceeded) && ctx.Err() != nil:
		return &wireError{msg: msg, errs: []error{ctx.Err(), st.Err()}}
	case code == codes.Canceled:
		return &wireError{msg: msg, errs: []error{context.Canceled, st.Err()}}
	case code == codes.DeadlineExceeded:
		return &wireError{msg: msg, errs: []error{context.DeadlineExceeded, st.Err()}}
	case code == codes.Unavailable && !dl.sent.Load():
		return &wireError{msg: msg, errs: []error{ErrWorkerUnavailable, ErrNotDelivered, st.Err()}}
	case code == codes.Unavailable:
		return &wireError{msg: msg, errs: []error{ErrWorkerUnavailable, ErrLost, st.Err()}}
	case code == codes.ResourceExhausted && dl.answered.Load():
		// The worker answered, and the answer was over our limit.
		return &wireError{msg: msg, errs: []error{api.ErrResponseTooLarge, st.Err()}}
	case code == codes.ResourceExhausted:
		// The worker refused the request before running it.
		return &wireError{msg: msg, errs: []error{ErrRequestTooLarge, &http.MaxBytesError{Limit: int64(limit)}, st.Err()}}
	}
	return &RemoteError{Code: st.Code(), Message: msg}
}

// reasonError rebuilds the error a worker described with a WorkerError.
func reasonError(st *status.Status, we *zfaasv1.WorkerError) error {
	msg := st.Message()
	wrap := func(errs ...error) error { return &wireError{msg: msg, errs: append(errs, st.Err())} }
	switch we.GetReason() {
	case zfaasv1.WorkerError_NO_CAPACITY:
		return wrap(api.ErrNoCapacity)
	case zfaasv1.WorkerError_FUNCTION_TIMEOUT:
		return wrap(api.ErrTimeout)
	case zfaasv1.WorkerError_CRASHED:
		return wrap(api.ErrCrashed)
	case zfaasv1.WorkerError_RESPONSE_TOO_LARGE:
		return wrap(api.ErrResponseTooLarge)
	case zfaasv1.WorkerError_INIT_FAILED:
		if fe := we.GetFunctionError(); fe != nil {
			return wrap(&api.InitError{FuncErr: *functionErrorFromWire(fe)})
		}
		return wrap(api.ErrInit)
	case zfaasv1.WorkerError_PACKAGE_REFUSED:
		return wrap(&archive.Error{Code: we.GetPackageCode(), Msg: we.GetPackageMessage()})
	case zfaasv1.WorkerError_PACKAGE_NOT_FOUND:
		return wrap(store.ErrNotFound)
	case zfaasv1.WorkerError_WORKER_CLOSING:
		return wrap(ErrWorkerUnavailable, ErrNotDelivered, pool.ErrClosed)
	case zfaasv1.WorkerError_CANCELED:
		return wrap(context.Canceled)
	case zfaasv1.WorkerError_CALLER_DEADLINE:
		return wrap(context.DeadlineExceeded)
	case zfaasv1.WorkerError_UNAUTHORIZED:
		return wrap(ErrUnauthorized)
	}
	return &RemoteError{Code: st.Code(), Message: msg}
}

func tooLargeError(size, limit int) error {
	return fmt.Errorf("%w: %d bytes, limit %d: %w", ErrRequestTooLarge, size, limit, &http.MaxBytesError{Limit: int64(limit)})
}
