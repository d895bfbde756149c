package gateway

import (
	"context"
	"errors"
	"fmt"

	"github.com/zfaas/zfaas/api"
)

// Placement names the worker an invocation was placed on.
type Placement struct {
	Node     string
	Addr     string // the worker's gRPC API; empty for the in-process worker
	SPIFFEID string // the identity the worker must present
}

// Placer decides where an invocation runs (the cluster registry's placer
// implements it): a worker with a warm instance of the version first, else
// the least loaded one with room. release must be called once the
// invocation ends.
type Placer interface {
	Place(v api.Version, exclude map[string]bool) (p Placement, release func(), err error)
}

// WorkerDialer returns an Invoker for a remote worker (a cached mutual-TLS
// gRPC connection that accepts only p.SPIFFEID).
type WorkerDialer interface {
	Worker(p Placement) (Invoker, error)
}

var (
	// ErrNoWorker is returned (wrapped) by Placer.Place when no admitted
	// worker can take the invocation: 503.
	ErrNoWorker = errors.New("no worker available")
	// ErrNotDelivered is returned (wrapped) by a remote Invoker when the
	// invocation never reached the worker (connection refused, handshake
	// failed): the cluster invoker tries another worker.
	ErrNotDelivered = errors.New("invocation not delivered to the worker")
	// ErrWorkerLost is returned (wrapped) by a remote Invoker when the
	// worker went away during the invocation: it may or may not have run,
	// so it is reported (502), never retried.
	ErrWorkerLost = errors.New("worker lost during the invocation")
)

// maxPlacements bounds how many workers one invocation is offered to.
const maxPlacements = 3

// ClusterInvoker runs invocations across the cluster's workers: the placer
// picks one, the in-process worker runs it directly and a remote one over
// its gRPC API. An invocation that could not be delivered goes to another
// worker (at most maxPlacements); one lost on the way is reported.
type ClusterInvoker struct {
	Placer Placer
	// Local runs invocations placed on LocalNode (the worker inside this
	// process); nil when there is none.
	Local     Invoker
	LocalNode string
	Remote    WorkerDialer
}

var _ Invoker = (*ClusterInvoker)(nil)

// Invoke implements Invoker.
func (c *ClusterInvoker) Invoke(ctx context.Context, inv api.Invocation) (*api.InvocationResult, error) {
	exclude := map[string]bool{}
	var lastErr error
	for range maxPlacements {
		p, release, err := c.Placer.Place(inv.Version, exclude)
		if err != nil {
			if lastErr != nil {
				return nil, fmt.Errorf("%w (after: %w)", err, lastErr)
			}
			return nil, err
		}
		res, err := c.invokeOn(ctx, p, inv)
		release()
		if errors.Is(err, ErrNotDelivered) && ctx.Err() == nil {
			exclude[p.Node] = true
			lastErr = err
			continue
		}
		return res, err
	}
	return nil, fmt.Errorf("%w: %d workers could not be reached: %w", ErrNoWorker, maxPlacements, lastErr)
}

func (c *ClusterInvoker) invokeOn(ctx context.Context, p Placement, inv api.Invocation) (*api.InvocationResult, error) {
	if p.Node == c.LocalNode && c.Local != nil {
		return c.Local.Invoke(ctx, inv)
	}
	w, err := c.Remote.Worker(p)
	if err != nil {
		return nil, fmt.Errorf("%w: worker %s: %w", ErrNotDelivered, p.Node, err)
	}
	return w.Invoke(ctx, inv)
}

// Evict drops idle instances of v on the in-process worker; remote workers
// reap them when idle (their functions are gone from the registry).
func (c *ClusterInvoker) Evict(v api.Version) {
	if ev, ok := c.Local.(Evicter); ok {
		ev.Evict(v)
	}
}
