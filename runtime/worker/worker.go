// Package worker runs function invocations on this machine: it fetches and
// unpacks function packages, starts sandboxed instances through a
// sandbox.Driver, keeps them warm in a pool, and drives each invocation
// through the AWS Lambda Runtime API or by proxying HTTP.
//
// A worker never reuses an instance that timed out or crashed, and never
// lets one instance talk to another's Runtime API (peers are checked by
// socket ownership).
package worker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zfaas/zfaas/api"
	"github.com/zfaas/zfaas/runtime/archive"
	"github.com/zfaas/zfaas/runtime/bootstrap"
	"github.com/zfaas/zfaas/runtime/pool"
	"github.com/zfaas/zfaas/runtime/sandbox"
)

// ErrNoCapacity and the other errors Invoke returns are the api package's
// (api.ErrNoCapacity, api.ErrTimeout, api.ErrCrashed, api.ErrInit,
// api.ErrResponseTooLarge), so callers need not import this package.

// PackageSource reads function packages by digest.
type PackageSource interface {
	OpenPackage(ctx context.Context, digest string) (io.ReadCloser, error)
}

// LogSink receives function output. Log must not block for long.
type LogSink interface {
	Log(rec api.LogRecord)
}

// Observer receives lifecycle events for metrics. All methods must be cheap.
type Observer interface {
	InstanceStarted(fn string, cold time.Duration)
	InstanceStopped(fn string, reason string)
}

// Identity hands each function instance its SPIFFE Workload API endpoint.
// The worker bind-mounts the returned directory read-only at
// EndpointMountDir in the sandbox and sets SPIFFE_ENDPOINT_SOCKET to the
// socket EndpointSocket in it.
type Identity interface {
	// Endpoint creates the endpoint of one instance in a directory of its
	// own, before the sandbox starts; the socket in it must be named
	// EndpointSocket. closeFn removes it and is called once when the
	// instance stops.
	Endpoint(ctx context.Context, spec EndpointSpec) (dir string, closeFn func(), err error)
}

// FileIdentity is an Identity that can also deliver an instance's SVIDs as
// files, for sandboxes a Unix socket cannot enter (a Kata VM). With
// Config.IdentityDelivery DeliverFiles the worker bind-mounts the returned
// directory read-only at SVIDMountDir and sets SVIDDirEnv to it instead of
// the Workload API socket.
type FileIdentity interface {
	// Files writes the SVIDs of one instance into a directory of its own
	// before the sandbox starts and keeps them current while the instance
	// runs; spec.CgroupDir may be ignored. closeFn removes the directory
	// and is called once when the instance stops (also when its start
	// fails).
	Files(ctx context.Context, spec EndpointSpec) (dir string, closeFn func(), err error)
}

// IdentityDelivery is how instances get their SVIDs.
type IdentityDelivery string

// The identity deliveries.
const (
	// DeliverSocket (the default) mounts a per-instance SPIFFE Workload
	// API socket (Identity.Endpoint).
	DeliverSocket IdentityDelivery = "socket"
	// DeliverFiles mounts a per-instance directory of rotated SVID files
	// (FileIdentity.Files).
	DeliverFiles IdentityDelivery = "files"
)

// EndpointSpec describes the instance an endpoint serves.
type EndpointSpec struct {
	InstanceID string
	Tenant     string
	Function   string
	// CgroupDir returns the instance's cgroup v2 directory (absolute host
	// path). The cgroup exists only once the sandbox has started, so
	// CgroupDir blocks until then (at most the init timeout) and fails if
	// the instance never started. Attestation must call it per check.
	CgroupDir func() (string, error)
}

// Egress installs an instance's network egress rules (the kernel
// enforcement of the zfaas.egress policy) before any of its processes runs,
// and keeps them in step with policy revisions until the instance stops.
type Egress interface {
	// Attach enforces the rules of spec's function on the cgroup
	// spec.CgroupDir. detach removes them and is called once when the
	// instance stops (also when its start fails later).
	Attach(ctx context.Context, spec EgressSpec) (detach func(), err error)
}

// EgressSpec describes the instance whose egress is enforced.
type EgressSpec struct {
	InstanceID string
	Tenant     string
	Function   string
	// CgroupDir is the instance's cgroup v2 directory (absolute host path).
	CgroupDir string
	// Platform are TCP addresses the instance must reach whatever its
	// policy says: its own Lambda Runtime API.
	Platform []netip.AddrPort
}

// Where the endpoint or the SVID files appear inside the sandbox.
const (
	EndpointMountDir = "/run/spiffe"
	EndpointSocket   = "workload.sock"
	// SVIDMountDir is where DeliverFiles mounts an instance's SVID files.
	SVIDMountDir = "/run/zfaas/svid"
	// SVIDDirEnv is the environment variable that names SVIDMountDir to
	// the function under DeliverFiles.
	SVIDDirEnv = "ZFAAS_SVID_DIR"
)

// Config configures a Worker.
type Config struct {
	// DataDir holds unpacked packages and runtime bootstraps (created 0700).
	DataDir string
	// Driver starts sandboxes.
	Driver sandbox.Driver
	// Packages reads packages by digest.
	Packages PackageSource
	// ArchiveLimits bound package extraction; default archive.DefaultLimits().
	ArchiveLimits archive.Limits
	// IdleTimeout is how long a warm instance is kept idle; default 10 min.
	IdleTimeout time.Duration
	// InitTimeout bounds an instance's start until it is ready; default 10 s.
	InitTimeout time.Duration
	// MaxResponseBytes caps a function's response; default 6 MiB.
	MaxResponseBytes int64
	// Logs receives function output; optional.
	Logs LogSink
	// Observer receives lifecycle events; optional.
	Observer Observer
	// Logger is the worker's own log; default discards.
	Logger *slog.Logger
	// Identity, when set, gives every instance its own SPIFFE Workload API
	// endpoint (see Identity) or, with IdentityDelivery DeliverFiles, its
	// own SVID files (it must then be a FileIdentity); optional.
	Identity Identity
	// IdentityDelivery is DeliverSocket (default, also "") or DeliverFiles.
	IdentityDelivery IdentityDelivery
	// Egress, when set, enforces every instance's egress rules from before
	// its first process runs; optional (without it instances have the
	// host's network).
	Egress Egress
	// Env is added to every instance's environment (e.g. where the gateway
	// is, for calls to other functions). Names must be reserved in
	// api.FunctionConfig so functions cannot override them.
	Env []string
	// Python3 and Node are the interpreters used for those runtimes;
	// defaults /usr/bin/python3 and /usr/bin/node. They must lie under a
	// directory the sandbox mounts (/usr, /bin).
	Python3, Node string
}

// Worker runs invocations. It is safe for concurrent use.
type Worker struct {
	cfg     Config
	log     *slog.Logger
	pool    *pool.Pool
	rtDir   string
	pkgDir  string
	unpackM sync.Mutex
	unpack  map[string]*unpackCall
	live    sync.Map // instance id → cgroup v2 dir, while the instance runs
	// memory is the configured memory (MB) of each pool key seen, and
	// inflight the invocations running now, for Load.
	memory   sync.Map // pool key → int
	inflight atomic.Int64
}

// Load is a snapshot of what the worker runs, for placement.
type Load struct {
	// Versions are the instances by "tenant/function/version".
	Versions map[string]pool.Stats
	// Instances and MemoryMB count every live instance (idle, busy and
	// starting) and the memory configured for them.
	Instances int
	MemoryMB  int
	// Inflight is the number of invocations running now.
	Inflight int
}

// Load returns a snapshot of the worker's instances and invocations.
func (w *Worker) Load() Load {
	l := Load{Versions: w.pool.Stats(), Inflight: int(w.inflight.Load())}
	for key, s := range l.Versions {
		l.Instances += s.Total
		if m, ok := w.memory.Load(key); ok {
			l.MemoryMB += s.Total * m.(int)
		}
	}
	return l
}

type unpackCall struct {
	done chan struct{}
	err  error
}

// New prepares the data directory and returns a Worker.
func New(cfg Config) (*Worker, error) {
	if cfg.DataDir == "" || cfg.Driver == nil || cfg.Packages == nil {
		return nil, errors.New("worker: DataDir, Driver and Packages are required")
	}
	switch cfg.IdentityDelivery {
	case "", DeliverSocket:
		cfg.IdentityDelivery = DeliverSocket
	case DeliverFiles:
		if cfg.Identity == nil {
			return nil, errors.New("worker: identity delivery files needs an Identity")
		}
		if _, ok := cfg.Identity.(FileIdentity); !ok {
			return nil, fmt.Errorf("worker: identity delivery files needs an Identity that writes SVID files; %T does not", cfg.Identity)
		}
	default:
		return nil, fmt.Errorf("worker: identity delivery %q: want %s or %s", cfg.IdentityDelivery, DeliverSocket, DeliverFiles)
	}
	if cfg.ArchiveLimits == (archive.Limits{}) {
		cfg.ArchiveLimits = archive.DefaultLimits()
	}
	if cfg.InitTimeout <= 0 {
		cfg.InitTimeout = 10 * time.Second
	}
	if cfg.MaxResponseBytes <= 0 {
		cfg.MaxResponseBytes = 6 << 20
	}
	if cfg.Python3 == "" {
		cfg.Python3 = "/usr/bin/python3"
	}
	if cfg.Node == "" {
		cfg.Node = "/usr/bin/node"
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", "worker")
	w := &Worker{
		cfg:    cfg,
		log:    log,
		rtDir:  filepath.Join(cfg.DataDir, "runtime"),
		pkgDir: filepath.Join(cfg.DataDir, "packages"),
		unpack: map[string]*unpackCall{},
	}
	for _, d := range []string{cfg.DataDir, w.pkgDir} {
		if err := os.MkdirAll(d, 0o700); err != nil {
			return nil, fmt.Errorf("worker: create %s: %w", d, err)
		}
	}
	// Bootstraps are rewritten on every start so an upgrade takes effect.
	tmp, err := os.MkdirTemp(cfg.DataDir, ".runtime-")
	if err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	if err := os.Chmod(tmp, 0o755); err != nil {
		return nil, fmt.Errorf("worker: %w", err)
	}
	if err := bootstrap.WriteTo(tmp); err != nil {
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("worker: write bootstraps: %w", err)
	}
	os.RemoveAll(w.rtDir)
	if err := os.Rename(tmp, w.rtDir); err != nil {
		os.RemoveAll(tmp)
		return nil, fmt.Errorf("worker: install bootstraps: %w", err)
	}
	w.pool = pool.New(pool.Config{
		IdleTimeout: cfg.IdleTimeout,
		Logger:      log,
		OnStop: func(key, reason string) {
			if cfg.Observer != nil {
				cfg.Observer.InstanceStopped(fnOfKey(key), reason)
			}
		},
	})
	return w, nil
}

// Close stops every instance.
func (w *Worker) Close(ctx context.Context) error { return w.pool.Close(ctx) }

func poolKey(v api.Version) string {
	return v.Tenant + "/" + v.Function + "/" + strconv.FormatInt(v.Version, 10)
}

func fnOfKey(key string) string {
	parts := bytes.SplitN([]byte(key), []byte("/"), 3)
	if len(parts) < 2 {
		return key
	}
	return string(parts[1])
}

// Evict stops idle instances of a function version (e.g. it was deleted).
func (w *Worker) Evict(v api.Version) { w.pool.Evict(poolKey(v)) }

// Invoke runs one invocation. Errors wrap api.ErrNoCapacity, api.ErrTimeout,
// api.ErrCrashed, api.ErrInit or api.ErrResponseTooLarge, or report a
// platform failure.
// A function error is not an error: it is InvocationResult.FuncErr.
func (w *Worker) Invoke(ctx context.Context, req api.Invocation) (*api.InvocationResult, error) {
	w.inflight.Add(1)
	defer w.inflight.Add(-1)
	w.memory.Store(poolKey(req.Version), req.Version.Config.MemoryMB)
	waitCtx, cancelWait := context.WithTimeout(ctx, req.WaitBudget)
	defer cancelWait()
	var initDur time.Duration
	lease, err := w.pool.Acquire(waitCtx, poolKey(req.Version), req.MaxConcurrency, func(context.Context) (pool.Instance, error) {
		// A cold start is bounded by the init timeout, not the wait budget,
		// and ends when the caller goes away.
		t0 := time.Now()
		inst, err := w.start(ctx, req.Version)
		initDur = time.Since(t0)
		if err == nil && w.cfg.Observer != nil {
			w.cfg.Observer.InstanceStarted(req.Version.Function, initDur)
		}
		return inst, err
	})
	if errors.Is(err, pool.ErrNoCapacity) {
		return nil, fmt.Errorf("%w: %w", api.ErrNoCapacity, err)
	}
	if err != nil {
		return nil, err
	}
	inst := lease.Instance().(*instance)
	// The invocation runs to its end (or its timeout) even when the caller
	// goes away, as on Lambda: the function is mid-event and the instance
	// stays reusable afterwards.
	type outcome struct {
		resp *api.InvocationResult
		err  error
	}
	done := make(chan outcome, 1)
	go func() {
		resp, err := inst.invoke(context.WithoutCancel(ctx), req, w.cfg.MaxResponseBytes)
		if err != nil {
			reason := "error"
			switch {
			case errors.Is(err, api.ErrTimeout):
				reason = "timeout"
			case errors.Is(err, api.ErrCrashed):
				reason = "crashed"
			}
			lease.Discard(reason)
		} else {
			lease.Release()
			resp.ColdStart = lease.Cold
			if lease.Cold {
				resp.InitDuration = initDur
			}
			resp.InstanceID = inst.id
		}
		done <- outcome{resp, err}
	}()
	select {
	case o := <-done:
		return o.resp, o.err
	case <-ctx.Done():
		return nil, ctx.Err()
	}
}

// ensurePackage unpacks a package once into the cache and returns its dir.
func (w *Worker) ensurePackage(ctx context.Context, digest string) (string, error) {
	hexDigest, ok := digestHex(digest)
	if !ok {
		return "", fmt.Errorf("bad package digest %q", digest)
	}
	dir := filepath.Join(w.pkgDir, hexDigest)
	for {
		if _, err := os.Stat(dir); err == nil {
			return dir, nil
		}
		w.unpackM.Lock()
		c := w.unpack[hexDigest]
		if c == nil {
			c = &unpackCall{done: make(chan struct{})}
			w.unpack[hexDigest] = c
			w.unpackM.Unlock()
			c.err = w.unpackPackage(ctx, digest, dir)
			w.unpackM.Lock()
			delete(w.unpack, hexDigest)
			w.unpackM.Unlock()
			close(c.done)
			return dir, c.err
		}
		w.unpackM.Unlock()
		select {
		case <-c.done:
			if c.err != nil {
				return "", c.err
			}
		case <-ctx.Done():
			return "", ctx.Err()
		}
	}
}

func digestHex(d string) (string, bool) {
	const p = "sha256:"
	if len(d) != len(p)+64 || d[:len(p)] != p {
		return "", false
	}
	for _, c := range d[len(p):] {
		if !(c >= '0' && c <= '9' || c >= 'a' && c <= 'f') {
			return "", false
		}
	}
	return d[len(p):], true
}

func (w *Worker) unpackPackage(ctx context.Context, digest, dir string) error {
	rc, err := w.cfg.Packages.OpenPackage(ctx, digest)
	if err != nil {
		return fmt.Errorf("fetch package %s: %w", digest, err)
	}
	defer rc.Close()
	f, err := os.CreateTemp(w.pkgDir, ".pkg-*.archive")
	if err != nil {
		return err
	}
	defer os.Remove(f.Name())
	defer f.Close()
	n, err := io.Copy(f, io.LimitReader(rc, w.cfg.ArchiveLimits.MaxCompressed+1))
	if err != nil {
		return fmt.Errorf("fetch package %s: %w", digest, err)
	}
	tmpDir, err := os.MkdirTemp(w.pkgDir, ".unpack-")
	if err != nil {
		return err
	}
	if err := os.Chmod(tmpDir, 0o755); err != nil {
		os.RemoveAll(tmpDir)
		return err
	}
	if _, err := archive.Extract(ctx, f, n, tmpDir, w.cfg.ArchiveLimits); err != nil {
		os.RemoveAll(tmpDir)
		return fmt.Errorf("unpack package %s: %w", digest, err)
	}
	if err := os.Rename(tmpDir, dir); err != nil {
		os.RemoveAll(tmpDir)
		return fmt.Errorf("install package %s: %w", digest, err)
	}
	return nil
}
