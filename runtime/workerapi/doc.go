// Package workerapi is the gRPC API (zfaas.v1.Worker) by which a gateway
// runs invocations on a worker on another machine: a Server in front of the
// worker's local invoker, and a Client that gives the gateway the same
// Invoke, with the same errors, as the local worker.
//
// Both ends speak mutual TLS with X.509-SVIDs; the transport credentials
// are the caller's (go-spiffe grpccredentials, crypto/dualstack), and must
// verify the peer's SVID against the trust bundle. The client's credentials
// pin the worker's SPIFFE ID; the server serves only callers its Authorizer
// accepts (by default the gateways of its trust domain), checked at the top
// of every RPC.
//
// Errors: every error a worker returns for an invocation (api.ErrNoCapacity,
// api.ErrTimeout, api.ErrCrashed, api.ErrResponseTooLarge, *api.InitError,
// *archive.Error, store.ErrNotFound for a missing package, context errors)
// travels as a gRPC status with a zfaasv1.WorkerError detail and comes out
// of Client.Invoke as an error that errors.Is / errors.As match exactly as
// the local one. When the worker cannot be reached or the connection breaks,
// the error wraps ErrWorkerUnavailable and exactly one of ErrNotDelivered
// (the invocation never reached the worker: safe to run elsewhere) or
// ErrLost (it may have run: report it, do not repeat it blindly).
//
// The package must never run an invocation for a caller whose SPIFFE ID was
// not verified and authorized, and never accept or send a message over the
// configured size limit.
package workerapi
