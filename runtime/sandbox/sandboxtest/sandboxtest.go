// Package sandboxtest is the conformance suite every sandbox driver
// (runtime/sandbox/...) must pass. [Run] drives a driver through a real
// runtime/worker.Worker, so instances start and are invoked exactly as in
// production (the Lambda Runtime API and HTTP modes, the worker's peer
// checks, a real SPIFFE Workload API from runtime/svid), and checks: start
// and invocation in both modes, the timeout kill, crash replacement, the
// memory limit, identity, isolation between instances and a clean stop
// that leaves no process, cgroup, mount, state directory or socket behind.
// Drivers may opt in to further checks (Target.OptIn): SVIDFiles.
//
// The function it runs is testdata/fn, built with the go tool when the
// suite starts (statically, so it also runs in a micro-VM).
//
// This package is for tests only; production code must never import it.
package sandboxtest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/zfaas/zfaas/api"
	"github.com/zfaas/zfaas/identity/workloadapi"
	"github.com/zfaas/zfaas/runtime/archive"
	"github.com/zfaas/zfaas/runtime/sandbox"
	"github.com/zfaas/zfaas/runtime/svid"
	"github.com/zfaas/zfaas/runtime/worker"
)

// Capability is a guarantee a driver may declare it cannot give yet
// (Target.Missing); the checks that need it are then skipped with the
// driver's reason instead of failing. Opt-in capabilities (SVIDFiles) are
// checked only for drivers that list them in Target.OptIn.
type Capability string

// Capabilities the suite knows.
const (
	// Identity: an instance reaches the Workload API endpoint the worker
	// hands it (worker.Identity, mounted at worker.EndpointMountDir) and
	// fetches its own function's X.509-SVID.
	Identity Capability = "identity"
	// Unprivileged: function code runs as a user other than root inside its
	// sandbox.
	Unprivileged Capability = "unprivileged"
	// SVIDFiles (opt-in): an instance reads the SVID files the worker
	// writes for it under worker.DeliverFiles (mounted at
	// worker.SVIDMountDir, named by worker.SVIDDirEnv), cannot write
	// them, and sees a rotation while it runs. A driver that copies its
	// mounts once at start cannot give it.
	SVIDFiles Capability = "svid-files"
)

// Target is one driver under test, as a [Factory] returns it.
type Target struct {
	// Driver starts the instances; it must be fresh (no instances).
	// Required.
	Driver sandbox.Driver
	// StateDir is the driver's state directory: once the worker closed,
	// nothing may be left in it. Required.
	StateDir string
	// CgroupParent is the driver's cgroup parent, relative to the root of
	// every hierarchy: no <mount>/<CgroupParent>/<instance> may remain in
	// any cgroup hierarchy once an instance stopped. Required.
	CgroupParent string
	// InitTimeout bounds one cold start (worker.Config.InitTimeout).
	// Default 20 s.
	InitTimeout time.Duration
	// FunctionTimeout is the timeout of the suite's functions, in whole
	// seconds; it bounds every invocation and is what the timeout check
	// waits for. Default 2 s.
	FunctionTimeout time.Duration
	// Missing declares the capabilities the driver lacks, each with the
	// reason; the checks that need one are skipped with that reason.
	Missing map[Capability]string
	// OptIn lists the opt-in capabilities the driver gives; their checks
	// are skipped for every other driver.
	OptIn []Capability
	// Leftovers, when set, is called once the worker closed and every
	// instance stopped; it returns what of the driver's own making remains
	// and must not (for example containerd shims), waiting briefly for
	// things that end asynchronously.
	Leftovers func() []string
	// Cleanup, when set, runs after the suite (after the worker closed).
	Cleanup func()
}

// Factory returns a fresh driver to test, or skips t (with the reason)
// when the host cannot run it.
type Factory func(t *testing.T) Target

// Package layout and names of the suite's functions.
const (
	fixturePkg  = "github.com/zfaas/zfaas/runtime/sandbox/sandboxtest/testdata/fn"
	handler     = "fn"
	tenant      = "conformance"
	lambdaFn    = "fn-lambda"
	httpFn      = "fn-http"
	probeFn     = "fn-probe"
	filesFn     = "fn-files"
	memoryMB    = 128
	trustDomain = "conformance.test"
	// secretPath is where the Lambda instance writes a file no other
	// instance may see.
	secretPath = "/tmp/zfaas-conformance-secret"
)

// Run runs the conformance suite against the driver f returns. The
// subtests share one worker and run in order; instances are reused where
// the worker reuses them, so a driver boots five instances in all: one per
// function (Lambda mode, HTTP mode, the isolation probe) and the two
// replacements after the timeout and the crash; a sixth, on a worker of its
// own, for the opt-in SVIDFiles.
func Run(t *testing.T, f Factory) {
	t.Helper()
	t0 := time.Now()
	tg := f(t)
	if tg.Driver == nil || tg.StateDir == "" || tg.CgroupParent == "" {
		t.Fatal("sandboxtest: Target needs Driver, StateDir and CgroupParent")
	}
	if tg.Cleanup != nil {
		t.Cleanup(tg.Cleanup)
	}
	if tg.InitTimeout <= 0 {
		tg.InitTimeout = 20 * time.Second
	}
	if tg.FunctionTimeout < time.Second {
		tg.FunctionTimeout = 2 * time.Second
	}
	tg.FunctionTimeout = tg.FunctionTimeout.Truncate(time.Second)
	s := newSuite(t, tg)
	t.Run("LambdaInvoke", s.testLambdaInvoke)
	t.Run("HTTPInvoke", s.testHTTPInvoke)
	t.Run("Unprivileged", s.testUnprivileged)
	t.Run("Identity", s.testIdentity)
	t.Run("SVIDFiles", s.testSVIDFiles)
	t.Run("Isolation", s.testIsolation)
	t.Run("TimeoutKills", s.testTimeout)
	t.Run("CrashReplaced", s.testCrash)
	t.Run("MemoryLimit", s.testMemory)
	t.Run("CleanStop", s.testCleanStop)
	t.Logf("conformance suite: %d instances started, %v", len(s.rec.all()), time.Since(t0).Round(time.Millisecond))
}

// suite is the state shared by the subtests.
type suite struct {
	tg      Target
	rec     *recorder
	w       *worker.Worker
	cfg     worker.Config // w's
	dataDir string
	idDir   string // the Workload API provider's directory
	noID    string // why the host cannot run the provider
	td      spiffeid.TrustDomain
	fn, hfn api.Version // the Lambda-mode and the HTTP-mode function
	probe   api.Version // a second Lambda-mode function, for isolation
	// httpBroken is set when the HTTP-mode function could not be invoked
	// at all; later checks then fail at once instead of booting again.
	httpBroken bool
	logs       *logSink
	workerLog  *syncBuffer
}

func newSuite(t *testing.T, tg Target) *suite {
	t.Helper()
	pkg, digest := buildPackage(t)
	s := &suite{
		tg:        tg,
		rec:       &recorder{Driver: tg.Driver},
		dataDir:   t.TempDir(),
		td:        spiffeid.RequireTrustDomainFromString(trustDomain),
		logs:      &logSink{},
		workerLog: &syncBuffer{},
	}
	cfg := worker.Config{
		DataDir:     s.dataDir,
		Driver:      s.rec,
		Packages:    bytesSource(pkg),
		InitTimeout: tg.InitTimeout,
		Logs:        s.logs,
		Logger:      slog.New(slog.NewTextHandler(s.workerLog, &slog.HandlerOptions{Level: slog.LevelDebug})),
	}
	if _, err := workloadapi.NewCgroupAttestor(); err != nil {
		s.noID = fmt.Sprintf("host has no cgroup v2 hierarchy for Workload API attestation: %v", err)
	} else {
		// Short path: the per-instance sockets live under it and Unix
		// socket names are limited to 108 bytes.
		dir, err := os.MkdirTemp("", "zsvid")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { os.RemoveAll(dir) })
		p, err := svid.Start(context.Background(), svid.Config{
			Dir: dir, TrustDomain: trustDomain, UID: 65534, GID: 65534,
		})
		if err != nil {
			t.Fatalf("svid.Start: %v", err)
		}
		t.Cleanup(func() { p.Close() })
		s.idDir = dir
		cfg.Identity = p
	}
	w, err := worker.New(cfg)
	if err != nil {
		t.Fatalf("worker.New: %v", err)
	}
	s.w, s.cfg = w, cfg
	// Registered after the factory's cleanups, so it runs before them.
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		_ = w.Close(ctx)
		if t.Failed() {
			t.Logf("worker log:\n%s", s.workerLog.String())
		}
	})
	version := func(fn string, mode api.Mode) api.Version {
		return api.Version{
			Tenant: tenant, Function: fn, Version: 1, PackageDigest: digest, PackageSize: int64(len(pkg)),
			Config: api.FunctionConfig{
				Runtime: api.RuntimeGo, Handler: handler, Mode: mode,
				MemoryMB: memoryMB, TimeoutSeconds: int(tg.FunctionTimeout / time.Second),
			},
		}
	}
	s.fn = version(lambdaFn, api.ModeLambda)
	s.hfn = version(httpFn, api.ModeHTTP)
	s.probe = version(probeFn, api.ModeLambda)
	return s
}

// buildPackage builds testdata/fn statically and zips it as a function
// package; it returns the package and its digest.
func buildPackage(t *testing.T) ([]byte, string) {
	t.Helper()
	goTool, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("the suite builds its function with the go tool: %v", err)
	}
	dir := filepath.Join(t.TempDir(), "pkg")
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(goTool, "build", "-trimpath", "-ldflags=-s -w", "-o", filepath.Join(dir, handler), fixturePkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("go build %s: %v\n%s", fixturePkg, err, out)
	}
	var zip bytes.Buffer
	if err := archive.ZipDir(context.Background(), dir, &zip); err != nil {
		t.Fatalf("zip function: %v", err)
	}
	sum := sha256.Sum256(zip.Bytes())
	return zip.Bytes(), "sha256:" + hex.EncodeToString(sum[:])
}

// bytesSource serves the one package the suite deploys.
type bytesSource []byte

func (b bytesSource) OpenPackage(context.Context, string) (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(b)), nil
}
