package workerapi

import (
	"context"
	"errors"
	"fmt"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/keepalive"
	"google.golang.org/grpc/stats"
	"google.golang.org/protobuf/proto"

	"github.com/zfaas/zfaas/api"
	zfaasv1 "github.com/zfaas/zfaas/api/zfaas/v1"
)

// Client calls one remote worker. It is safe for concurrent use; one
// Client multiplexes every call over one connection, redialled when it
// breaks.
type Client struct {
	addr   string
	conn   *grpc.ClientConn
	rpc    zfaasv1.WorkerClient
	maxMsg int
}

// Dial returns a Client of the worker at addr ("host:port"). creds must
// authenticate the worker by its SPIFFE ID (e.g. go-spiffe's
// grpccredentials.MTLSClientCredentials with tlsconfig.AuthorizeID) and
// present the gateway's SVID. Dial does not connect: the first call does,
// and a worker that cannot be reached fails that call with ErrNotDelivered.
func Dial(addr string, creds credentials.TransportCredentials, opts ...Option) (*Client, error) {
	if creds == nil {
		return nil, errors.New("workerapi: transport credentials are required")
	}
	o, err := applyOptions(opts)
	if err != nil {
		return nil, fmt.Errorf("workerapi: %w", err)
	}
	dopts := []grpc.DialOption{
		grpc.WithTransportCredentials(creds),
		grpc.WithStatsHandler(deliveryHandler{}),
		grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(o.maxMsg), grpc.MaxCallSendMsgSize(o.maxMsg)),
		grpc.WithKeepaliveParams(keepalive.ClientParameters{Time: keepaliveTime, Timeout: keepaliveTimeout, PermitWithoutStream: true}),
		// A worker that comes back is found within seconds, not gRPC's
		// default two minutes of backoff.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff:           backoff.Config{BaseDelay: 100 * time.Millisecond, Multiplier: 1.6, Jitter: 0.2, MaxDelay: 5 * time.Second},
			MinConnectTimeout: 5 * time.Second,
		}),
	}
	conn, err := grpc.NewClient(addr, append(dopts, o.dial...)...)
	if err != nil {
		return nil, fmt.Errorf("workerapi: dial %s: %w", addr, err)
	}
	return &Client{addr: addr, conn: conn, rpc: zfaasv1.NewWorkerClient(conn), maxMsg: o.maxMsg}, nil
}

// Invoke runs inv on the worker. ctx's deadline is the call's deadline on
// the worker. Errors are those of the worker's own Invoke (api.ErrNoCapacity,
// api.ErrTimeout, api.ErrCrashed, api.ErrInit and *api.InitError,
// api.ErrResponseTooLarge, *archive.Error, store.ErrNotFound, context
// errors), or wrap ErrWorkerUnavailable with ErrNotDelivered or ErrLost,
// ErrRequestTooLarge, ErrUnauthorized, or are a *RemoteError.
func (c *Client) Invoke(ctx context.Context, inv api.Invocation) (*api.InvocationResult, error) {
	req, err := encodeInvocation(inv)
	if err != nil {
		return nil, fmt.Errorf("worker %s: invoke %s: %w", c.addr, inv.ID, err)
	}
	if n := proto.Size(req); n > c.maxMsg {
		return nil, fmt.Errorf("worker %s: invoke %s: %w", c.addr, inv.ID, tooLargeError(n, c.maxMsg))
	}
	dl := new(delivery)
	resp, err := c.rpc.Invoke(context.WithValue(ctx, deliveryKey{}, dl), req)
	if err != nil {
		return nil, fmt.Errorf("worker %s: %w", c.addr, statusError(ctx, err, dl, c.maxMsg))
	}
	return decodeResult(resp), nil
}

// Evict asks the worker to stop the idle instances of v.
func (c *Client) Evict(ctx context.Context, v api.Version) error {
	b, err := encodeVersion(v)
	if err != nil {
		return fmt.Errorf("worker %s: evict: %w", c.addr, err)
	}
	dl := new(delivery)
	if _, err := c.rpc.Evict(context.WithValue(ctx, deliveryKey{}, dl), &zfaasv1.WorkerEvictRequest{Version: b}); err != nil {
		return fmt.Errorf("worker %s: evict: %w", c.addr, statusError(ctx, err, dl, c.maxMsg))
	}
	return nil
}

// Load returns the worker's instances and invocations.
func (c *Client) Load(ctx context.Context) (Load, error) {
	dl := new(delivery)
	resp, err := c.rpc.Load(context.WithValue(ctx, deliveryKey{}, dl), &zfaasv1.WorkerLoadRequest{})
	if err != nil {
		return Load{}, fmt.Errorf("worker %s: load: %w", c.addr, statusError(ctx, err, dl, c.maxMsg))
	}
	return loadFromWire(resp), nil
}

// Close closes the connection; calls in flight fail.
func (c *Client) Close() error { return c.conn.Close() }

// deliveryKey holds a call's *delivery in its context.
type deliveryKey struct{}

// deliveryHandler records in each call's delivery whether the call was
// handed to a connection and whether the worker began to answer, which
// tells ErrNotDelivered from ErrLost when the connection fails.
type deliveryHandler struct{}

func (deliveryHandler) TagRPC(ctx context.Context, _ *stats.RPCTagInfo) context.Context { return ctx }

func (deliveryHandler) HandleRPC(ctx context.Context, s stats.RPCStats) {
	dl, _ := ctx.Value(deliveryKey{}).(*delivery)
	if dl == nil {
		return
	}
	switch s := s.(type) {
	case *stats.Begin:
		// gRPC retries a call transparently only when the worker never
		// saw the previous attempt, so that attempt does not count.
		if s.IsTransparentRetryAttempt {
			dl.sent.Store(false)
		}
	case *stats.OutHeader:
		dl.sent.Store(true)
	case *stats.InHeader:
		dl.answered.Store(true)
	}
}

func (deliveryHandler) TagConn(ctx context.Context, _ *stats.ConnTagInfo) context.Context {
	return ctx
}

func (deliveryHandler) HandleConn(context.Context, stats.ConnStats) {}
