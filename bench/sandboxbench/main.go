//go:build linux

// Command sandboxbench compares the sandbox drivers (runtime/sandbox/process,
// container and microvm) through a real runtime/worker.Worker, with the
// process driver as the baseline measured in the same run: the cold start
// of a Lambda-mode function (and, for micro-VMs, where the boot went), the
// warm invocation latency, and the memory of an idle instance.
// bench/run.sh runs it; bench/README.md explains the figures.
//
// It needs root (cgroups, namespaces, containerd, QEMU). A driver the host
// cannot run is skipped with the reason. It starts its own containerd (own
// root, state and socket in its scratch directory) for the container driver
// and kills it at the end; every instance, cgroup and directory it made is
// removed, and every loop is bounded in count and time.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/zfaas/zfaas/api"
	"github.com/zfaas/zfaas/runtime/archive"
	"github.com/zfaas/zfaas/runtime/sandbox"
	"github.com/zfaas/zfaas/runtime/sandbox/container"
	"github.com/zfaas/zfaas/runtime/sandbox/microvm"
	"github.com/zfaas/zfaas/runtime/sandbox/process"
	"github.com/zfaas/zfaas/runtime/worker"
)

const (
	fnPkg    = "github.com/zfaas/zfaas/bench/sandboxbench/testdata/fn"
	agentPkg = "github.com/zfaas/zfaas/runtime/guestagent/cmd/zfaas-agent"
	handler  = "fn"
	tenant   = "bench"
	memoryMB = 128
)

func main() {
	process.Init() // the process driver re-executes this binary as its sandbox init
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	if err != nil {
		fmt.Fprintln(os.Stderr, "sandboxbench:", err)
		os.Exit(1)
	}
}

type config struct {
	drivers   []string
	cold      int           // measured cold starts (process, container)
	vmBoots   int           // measured cold starts (microvm); also its total boots
	warm      int           // warm invocations per driver (at most)
	vmWarm    int           // warm invocations (microvm, at most)
	warmTime  time.Duration // bound on the warm series of one driver
	goTool    string
	kernelDir string
	timeout   time.Duration
}

func run(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fset := flag.NewFlagSet("sandboxbench", flag.ContinueOnError)
	fset.SetOutput(stderr)
	var c config
	drivers := fset.String("drivers", "process,container,microvm", "drivers to measure, comma-separated; the first is the baseline if it is process")
	fset.IntVar(&c.cold, "cold", 5, "measured cold starts per driver (process, container), after one unmeasured")
	fset.IntVar(&c.vmBoots, "vm-boots", 3, "measured cold starts of the microvm driver (no unmeasured one)")
	fset.IntVar(&c.warm, "warm", 300, "warm invocations per driver (process, container)")
	fset.IntVar(&c.vmWarm, "vm-warm", 50, "warm invocations (microvm)")
	fset.DurationVar(&c.warmTime, "warm-time", 5*time.Second, "bound on the warm series of one driver")
	fset.StringVar(&c.goTool, "go", "go", "the go tool, to build the function and the guest agent")
	fset.StringVar(&c.kernelDir, "kernel-dir", microvm.DefaultKernelDir, "the micro-VM kernel cache (scripts/vmkernel.sh)")
	fset.DurationVar(&c.timeout, "timeout", 150*time.Second, "give up after this")
	if err := fset.Parse(args); err != nil {
		return err
	}
	c.drivers = strings.Split(*drivers, ",")
	if c.cold < 1 || c.cold > 100 || c.vmBoots < 1 || c.vmBoots > 10 || c.warm < 1 || c.warm > 100_000 ||
		c.vmWarm < 1 || c.vmWarm > 10_000 {
		return errors.New("flag out of range")
	}
	for _, d := range c.drivers {
		if !slices.Contains([]string{"process", "container", "microvm"}, d) {
			return fmt.Errorf("unknown driver %q", d)
		}
	}
	if os.Geteuid() != 0 {
		return errors.New("needs root: the sandbox drivers create cgroups and namespaces")
	}
	ctx, cancel := context.WithTimeout(ctx, c.timeout)
	defer cancel()

	// Short path: Unix sockets (containerd's, the micro-VM agent's) live
	// under it and their names are limited to 108 bytes.
	work, err := os.MkdirTemp("", "zsbb")
	if err != nil {
		return err
	}
	defer func() {
		if mountedUnder(work) {
			fmt.Fprintf(stderr, "sandboxbench: something is still mounted under %s; not removing it\n", work)
			return
		}
		_ = os.RemoveAll(work)
	}()

	fnDir := filepath.Join(work, "fn")
	if err := os.Mkdir(fnDir, 0o755); err != nil {
		return err
	}
	if err := goBuild(ctx, c.goTool, fnPkg, filepath.Join(fnDir, handler)); err != nil {
		return err
	}
	var zip bytes.Buffer
	if err := archive.ZipDir(ctx, fnDir, &zip); err != nil {
		return fmt.Errorf("zip function: %w", err)
	}
	sum := sha256.Sum256(zip.Bytes())
	pkg := bench{zip: zip.Bytes(), digest: "sha256:" + hex.EncodeToString(sum[:]), cfg: c}

	var results []*result
	for _, name := range c.drivers {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		fmt.Fprintf(stderr, "sandboxbench: %s driver...\n", name)
		r := &result{driver: name}
		results = append(results, r)
		dir := filepath.Join(work, name)
		if err := os.Mkdir(dir, 0o700); err != nil {
			return err
		}
		cgParent := fmt.Sprintf("zfaas-sandboxbench-%d-%s", os.Getpid(), name)
		t, skip, err := newTarget(ctx, name, dir, cgParent, c, stderr)
		if skip != "" {
			r.skipped = skip
			continue
		}
		if err != nil {
			return fmt.Errorf("%s driver: %w", name, err)
		}
		err = pkg.measure(ctx, t, dir, r)
		t.cleanup()
		removeCgroupParent(cgParent)
		if err != nil {
			return fmt.Errorf("%s driver: %w", name, err)
		}
	}
	report(stdout, results)
	return nil
}

// target is one driver ready to measure.
type target struct {
	driver      sandbox.Driver
	initTimeout time.Duration
	boots       int  // measured cold starts
	warmup      bool // one unmeasured cold start first
	warm        int
	cleanup     func()
	// shimRSS, when set, returns the RSS of the per-instance processes
	// outside the instance's cgroup (containerd's shim).
	shimRSS func() int64
}

// newTarget sets a driver up, or returns why the host cannot run it.
func newTarget(ctx context.Context, name, dir, cgParent string, c config, stderr io.Writer) (t *target, skip string, err error) {
	state := filepath.Join(dir, "state")
	switch name {
	case "process":
		d, err := process.New(process.Config{StateDir: state, CgroupParent: cgParent})
		if errors.Is(err, process.ErrUnsupported) {
			return nil, err.Error(), nil
		}
		if err != nil {
			return nil, "", err
		}
		return &target{driver: d, initTimeout: 20 * time.Second, boots: c.cold, warmup: true, warm: c.warm, cleanup: func() {}}, "", nil
	case "container":
		ctrd, skip, err := startContainerd(ctx, filepath.Join(dir, "ctrd"))
		if skip != "" || err != nil {
			return nil, skip, err
		}
		var d *container.Driver
		deadline := time.Now().Add(20 * time.Second)
		for {
			d, err = container.New(container.Config{Address: ctrd.address, StateDir: state, CgroupParent: cgParent})
			if err == nil || time.Now().After(deadline) || ctx.Err() != nil {
				break
			}
			time.Sleep(50 * time.Millisecond)
		}
		if err != nil {
			ctrd.stop(stderr)
			if errors.Is(err, container.ErrUnsupported) {
				return nil, err.Error(), nil
			}
			return nil, "", err
		}
		return &target{driver: d, initTimeout: 20 * time.Second, boots: c.cold, warmup: true, warm: c.warm, cleanup: func() {
			_ = d.Close()
			ctrd.stop(stderr)
		}, shimRSS: ctrd.shimRSS}, "", nil
	case "microvm":
		qemu, err := exec.LookPath(microvm.DefaultQEMU)
		if err != nil {
			return nil, "qemu-system-x86_64 missing (apt-get install qemu-system-x86)", nil
		}
		if skip := ensureKernel(ctx, c.kernelDir); skip != "" {
			return nil, skip, nil
		}
		agent := filepath.Join(dir, "zfaas-agent")
		if err := goBuild(ctx, c.goTool, agentPkg, agent); err != nil {
			return nil, "guest agent does not build: " + firstLine(err.Error()), nil
		}
		// TCG, as on this machine and in CI: "auto" would spend one more
		// boot on the KVM probe.
		d, err := microvm.New(microvm.Config{
			KernelDir: c.kernelDir, QEMUPath: qemu, AgentPath: agent, Accel: "tcg",
			StateDir: state, CgroupParent: cgParent,
		})
		if errors.Is(err, microvm.ErrUnsupported) {
			return nil, err.Error(), nil
		}
		if err != nil {
			return nil, "", err
		}
		return &target{driver: d, initTimeout: 90 * time.Second, boots: c.vmBoots, warm: c.vmWarm, cleanup: func() {}}, "", nil
	}
	return nil, "", fmt.Errorf("unknown driver %q", name)
}

// ensureKernel returns why there is no micro-VM kernel cache at dir, after
// running scripts/vmkernel.sh into it when it is missing and apt is there
// (as the microvm tests do).
func ensureKernel(ctx context.Context, dir string) string {
	if _, err := os.Stat(filepath.Join(dir, "vmlinux")); err == nil {
		return ""
	}
	if _, err := exec.LookPath("apt-get"); err != nil {
		return "no kernel cache at " + dir + " and no apt-get to make one (run make vmkernel)"
	}
	if b, err := exec.CommandContext(ctx, "bash", "scripts/vmkernel.sh", dir).CombinedOutput(); err != nil {
		return fmt.Sprintf("no kernel cache and scripts/vmkernel.sh failed: %v: %s", err, firstLine(string(b)))
	}
	return ""
}

// bench is the function package and the settings every driver is measured with.
type bench struct {
	zip    []byte
	digest string
	cfg    config
}

// OpenPackage serves the one package the benchmark deploys.
func (b bench) OpenPackage(context.Context, string) (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(b.zip)), nil
}

func (b bench) version(fn string) api.Version {
	return api.Version{
		Tenant: tenant, Function: fn, Version: 1, PackageDigest: b.digest, PackageSize: int64(len(b.zip)),
		Config: api.FunctionConfig{
			Runtime: api.RuntimeGo, Handler: handler, Mode: api.ModeLambda,
			MemoryMB: memoryMB, TimeoutSeconds: 10,
		},
	}
}

// result holds one driver's figures.
type result struct {
	driver  string
	skipped string
	cold    []time.Duration // Invoke of a new function: Start → first answer
	init    []time.Duration // the worker's part: Start → instance ready
	boot    []microvm.BootTimes
	warm    []time.Duration
	rss     []int64 // bytes, sum of VmRSS over the instance cgroup's processes
	cgMem   []int64 // bytes, the instance cgroup's memory charge
	cgSrc   string
	shim    []int64 // bytes, containerd shim RSS (container driver)
}

// measure runs the cold starts, the warm series and the memory samples of
// one driver through a real worker.
func (b bench) measure(ctx context.Context, t *target, dir string, r *result) error {
	rec := &recorder{Driver: t.driver, byID: map[string]sandbox.Instance{}}
	w, err := worker.New(worker.Config{
		DataDir: filepath.Join(dir, "data"), Driver: rec, Packages: b,
		InitTimeout: t.initTimeout, IdleTimeout: time.Hour,
	})
	if err != nil {
		return err
	}
	defer func() {
		cctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		_ = w.Close(cctx)
	}()
	n := t.boots
	first := 0
	if t.warmup {
		first = -1
	}
	for i := first; i < n; i++ {
		v := b.version(fmt.Sprintf("cold-%02d", i+1))
		t0 := time.Now()
		res, err := b.invoke(ctx, w, v, t.initTimeout)
		d := time.Since(t0)
		if err != nil {
			return fmt.Errorf("cold start %d: %w", i+1, err)
		}
		if !res.ColdStart {
			return fmt.Errorf("cold start %d: the worker reused an instance", i+1)
		}
		if i < 0 { // unmeasured: package unpack, page cache
			w.Evict(v)
			continue
		}
		r.cold = append(r.cold, d)
		r.init = append(r.init, res.InitDuration)
		inst := rec.get(res.InstanceID)
		if vi, ok := inst.(*microvm.Instance); ok {
			r.boot = append(r.boot, vi.Boot)
		}
		if i == 0 {
			// The warm series runs on the first measured instance.
			deadline := time.Now().Add(b.cfg.warmTime)
			for j := 0; j < t.warm && time.Now().Before(deadline); j++ {
				t0 := time.Now()
				res, err := b.invoke(ctx, w, v, t.initTimeout)
				d := time.Since(t0)
				if err != nil {
					return fmt.Errorf("warm invocation %d: %w", j+1, err)
				}
				if res.ColdStart || res.InstanceID != inst.ID() {
					return fmt.Errorf("warm invocation %d: ran on a new instance", j+1)
				}
				r.warm = append(r.warm, d)
			}
		}
		// Idle: the function waits in its next-event call.
		select {
		case <-time.After(300 * time.Millisecond):
		case <-ctx.Done():
			return ctx.Err()
		}
		if inst != nil {
			rss, cg, src := memoryOf(inst.CgroupV2Path())
			r.rss = append(r.rss, rss)
			if src != "" {
				r.cgMem, r.cgSrc = append(r.cgMem, cg), src
			}
		}
		if t.shimRSS != nil {
			r.shim = append(r.shim, t.shimRSS())
		}
		w.Evict(v)
	}
	return nil
}

func (b bench) invoke(ctx context.Context, w *worker.Worker, v api.Version, initTimeout time.Duration) (*api.InvocationResult, error) {
	ctx, cancel := context.WithTimeout(ctx, initTimeout+30*time.Second)
	defer cancel()
	res, err := w.Invoke(ctx, api.Invocation{
		ID: "bench-" + strconv.FormatInt(time.Now().UnixNano(), 36), Version: v, Payload: []byte(`{}`),
		MaxConcurrency: 1, WaitBudget: 30 * time.Second,
	})
	if err != nil {
		return nil, err
	}
	if res.FuncErr != nil {
		return nil, fmt.Errorf("function error %s: %s", res.FuncErr.ErrorType, res.FuncErr.ErrorMessage)
	}
	if !bytes.Equal(bytes.TrimSpace(res.Payload), []byte(`{"ok":true}`)) {
		return nil, fmt.Errorf("unexpected answer %q", res.Payload)
	}
	return res, nil
}

// recorder is the driver under test with every instance it started, by ID
// (the worker's InstanceID), so the benchmark can read an instance's
// cgroup and boot times.
type recorder struct {
	sandbox.Driver
	mu   sync.Mutex
	byID map[string]sandbox.Instance
}

func (r *recorder) Start(ctx context.Context, spec sandbox.Spec) (sandbox.Instance, error) {
	inst, err := r.Driver.Start(ctx, spec)
	if err != nil {
		return nil, err
	}
	r.mu.Lock()
	r.byID[spec.ID] = inst
	r.mu.Unlock()
	return inst, nil
}

func (r *recorder) get(id string) sandbox.Instance {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.byID[id]
}
