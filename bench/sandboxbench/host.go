//go:build linux

package main

import (
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"
)

// goBuild builds pkg statically (CGO_ENABLED=0) into out.
func goBuild(ctx context.Context, goTool, pkg, out string) error {
	cmd := exec.CommandContext(ctx, goTool, "build", "-trimpath", "-ldflags=-s -w", "-o", out, pkg)
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build %s: %w: %s", pkg, err, strings.TrimSpace(string(b)))
	}
	return nil
}

func firstLine(s string) string {
	line, _, _ := strings.Cut(strings.TrimSpace(s), "\n")
	return line
}

// containerd is a private containerd: its own root, state and sockets under
// one directory.
type containerd struct {
	address string
	dir     string
	cmd     *exec.Cmd
	done    chan struct{}
}

// startContainerd starts a private containerd in dir, or returns why the
// host cannot run one.
func startContainerd(ctx context.Context, dir string) (c *containerd, skip string, err error) {
	for _, bin := range []string{"containerd", "containerd-shim-runc-v2", "runc"} {
		if _, err := exec.LookPath(bin); err != nil {
			return nil, fmt.Sprintf("%s missing (apt-get install containerd runc)", bin), nil
		}
	}
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, "", err
	}
	sock := filepath.Join(dir, "c.sock")
	cfg := fmt.Sprintf(`version = 2
root = %q
state = %q
disabled_plugins = ["io.containerd.grpc.v1.cri", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.zfs",
  "io.containerd.snapshotter.v1.devmapper", "io.containerd.tracing.processor.v1.otlp",
  "io.containerd.internal.v1.tracing"]
[grpc]
  address = %q
[ttrpc]
  address = %q
[plugins."io.containerd.internal.v1.opt"]
  path = %q
`, filepath.Join(dir, "root"), filepath.Join(dir, "state"), sock, sock+".ttrpc", filepath.Join(dir, "opt"))
	cfgPath := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfgPath, []byte(cfg), 0o600); err != nil {
		return nil, "", err
	}
	logf, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		return nil, "", err
	}
	defer logf.Close() // the child has its own copy
	cmd := exec.Command("containerd", "--config", cfgPath, "--log-level", "warn")
	cmd.Stdout, cmd.Stderr = logf, logf
	// Its own process group, and killed if this benchmark dies.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Sprintf("cannot start containerd: %v", err), nil
	}
	c = &containerd{address: sock, dir: dir, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(c.done) }()
	deadline := time.Now().Add(20 * time.Second)
	for {
		if _, err := os.Stat(sock); err == nil {
			return c, "", nil
		}
		select {
		case <-c.done:
			b, _ := os.ReadFile(logf.Name())
			return nil, "containerd exited at start: " + firstLine(string(b)), nil
		case <-ctx.Done():
			c.stop(io.Discard)
			return nil, "", ctx.Err()
		case <-time.After(20 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			c.stop(io.Discard)
			return nil, "containerd did not create its socket within 20s", nil
		}
	}
}

// stop ends containerd (SIGTERM, then SIGKILL after 10 s) and kills, by
// PID, the shims it started that outlived it.
func (c *containerd) stop(stderr io.Writer) {
	_ = c.cmd.Process.Signal(syscall.SIGTERM)
	select {
	case <-c.done:
	case <-time.After(10 * time.Second):
		_ = c.cmd.Process.Kill()
		<-c.done
	}
	deadline := time.Now().Add(5 * time.Second)
	for len(c.shims()) > 0 && time.Now().Before(deadline) {
		time.Sleep(20 * time.Millisecond)
	}
	for _, pid := range c.shims() {
		fmt.Fprintf(stderr, "sandboxbench: killing leftover containerd shim %d\n", pid)
		_ = syscall.Kill(pid, syscall.SIGKILL)
	}
}

// shims returns the PIDs of the shims this containerd started that still
// run, found by its socket address on their command line.
func (c *containerd) shims() []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "cmdline"))
		if err != nil {
			continue
		}
		args := strings.Split(string(b), "\x00")
		if !strings.Contains(args[0], "containerd-shim") {
			continue
		}
		for j, a := range args {
			if a == "-address" && j+1 < len(args) && args[j+1] == c.address {
				pids = append(pids, pid)
			}
		}
	}
	return pids
}

// shimRSS is the RSS of this containerd's running shims, in bytes.
func (c *containerd) shimRSS() int64 {
	var sum int64
	for _, pid := range c.shims() {
		sum += rssBytes(pid)
	}
	return sum
}

// rssBytes is a process's VmRSS, or 0 when it is gone.
func rssBytes(pid int) int64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0
	}
	for line := range strings.Lines(string(b)) {
		if v, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			if f := strings.Fields(v); len(f) > 0 {
				kib, _ := strconv.ParseInt(f[0], 10, 64)
				return kib << 10
			}
		}
	}
	return 0
}

// cgroupMount is one cgroup hierarchy from /proc/self/mountinfo.
type cgroupMount struct {
	dir     string
	v2      bool
	options []string // super options of a v1 hierarchy (its controllers)
}

func cgroupMounts() []cgroupMount {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var out []cgroupMount
	for line := range strings.Lines(string(b)) {
		pre, post, ok := strings.Cut(line, " - ")
		f, g := strings.Fields(pre), strings.Fields(post)
		if !ok || len(f) < 5 || len(g) < 3 {
			continue
		}
		switch g[0] {
		case "cgroup2":
			out = append(out, cgroupMount{dir: f[4], v2: true})
		case "cgroup":
			out = append(out, cgroupMount{dir: f[4], options: strings.Split(g[2], ",")})
		}
	}
	return out
}

// memoryOf returns the memory of an instance: the sum of VmRSS over the
// processes in its cgroup v2 directory (and below), and the cgroup's memory
// charge (memory.current in v2, else memory.usage_in_bytes of the v1
// memory hierarchy at the same relative path), with which file it read.
func memoryOf(v2dir string) (rss, charged int64, src string) {
	_ = filepath.WalkDir(v2dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return nil
		}
		b, _ := os.ReadFile(filepath.Join(p, "cgroup.procs"))
		for f := range strings.FieldsSeq(string(b)) {
			if pid, err := strconv.Atoi(f); err == nil {
				rss += rssBytes(pid)
			}
		}
		return nil
	})
	if v, err := readInt(filepath.Join(v2dir, "memory.current")); err == nil {
		return rss, v, "memory.current"
	}
	var rel string
	for _, m := range cgroupMounts() {
		if m.v2 {
			if r, err := filepath.Rel(m.dir, v2dir); err == nil && !strings.HasPrefix(r, "..") {
				rel = r
			}
		}
	}
	for _, m := range cgroupMounts() {
		if !m.v2 && rel != "" && slices.Contains(m.options, "memory") {
			if v, err := readInt(filepath.Join(m.dir, rel, "memory.usage_in_bytes")); err == nil {
				return rss, v, "v1 memory.usage_in_bytes"
			}
		}
	}
	return rss, 0, ""
}

func readInt(path string) (int64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.ParseInt(strings.TrimSpace(string(b)), 10, 64)
}

// removeCgroupParent removes a driver's parent cgroup in every hierarchy
// (the drivers remove the instances' cgroups, not the parent).
func removeCgroupParent(parent string) {
	for _, m := range cgroupMounts() {
		_ = os.Remove(filepath.Join(m.dir, parent))
	}
}

// mountedUnder reports whether anything is mounted below dir.
func mountedUnder(dir string) bool {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return false
	}
	for line := range strings.Lines(string(b)) {
		if f := strings.Fields(line); len(f) > 4 && strings.HasPrefix(f[4]+"/", dir+"/") {
			return true
		}
	}
	return false
}

// pct is the nearest-rank percentile p (0 < p ≤ 100) of xs.
func pct[T int64 | time.Duration](xs []T, p int) T {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	i := (p*len(s) + 99) / 100
	return s[max(i, 1)-1]
}

func ms(d time.Duration) string {
	switch {
	case d >= 10*time.Second:
		return fmt.Sprintf("%.1f s", d.Seconds())
	case d >= time.Second:
		return fmt.Sprintf("%.2f s", d.Seconds())
	case d >= 10*time.Millisecond:
		return fmt.Sprintf("%.0f ms", float64(d)/1e6)
	default:
		return fmt.Sprintf("%.2f ms", float64(d)/1e6)
	}
}

func mib(b int64) string { return fmt.Sprintf("%.1f MiB", float64(b)/(1<<20)) }

func ratio(x, base float64) string {
	if base <= 0 || x <= 0 {
		return "n/a"
	}
	return fmt.Sprintf("%.2fx", x/base)
}

// report prints the tables; the process driver is the baseline of every
// ratio.
func report(w io.Writer, results []*result) {
	var base *result
	for _, r := range results {
		if r.driver == "process" && r.skipped == "" {
			base = r
		}
	}
	baseOf := func(f func(*result) float64) float64 {
		if base == nil {
			return 0
		}
		return f(base)
	}
	fmt.Fprintln(w, "== sandbox drivers through a real runtime/worker, Lambda-mode Go function (aws-lambda-go, 128 MB); baseline: the process driver, same run")
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "cold start\tn\tp50 invoke\tp50 worker init\tmax invoke\tvs process (p50)\t")
	coldP50 := func(r *result) float64 { return float64(pct(r.cold, 50)) }
	for _, r := range results {
		if r.skipped != "" {
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t\n", r.driver, len(r.cold), ms(pct(r.cold, 50)), ms(pct(r.init, 50)),
			ms(pct(r.cold, 100)), ratio(coldP50(r), baseOf(coldP50)))
	}
	_ = tw.Flush()
	for _, r := range results {
		if len(r.boot) == 0 {
			continue
		}
		fmt.Fprintf(w, "\nmicrovm boot breakdown (accel %s), p50 of %d boots (Instance.Boot)\n", r.boot[0].Accel, len(r.boot))
		tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
		fmt.Fprintln(tw, "QEMU start\tkernel → agent\tagent → ready\trest\tStart → Ready\tthen → first answer\t")
		var q, k, a, rest, tot []time.Duration
		for _, b := range r.boot {
			q, k, a, tot = append(q, b.QEMU), append(k, b.KernelToInit), append(a, b.InitToReady), append(tot, b.Total)
			rest = append(rest, b.Total-b.QEMU-b.KernelToInit-b.InitToReady)
		}
		var after []time.Duration
		for i := range r.boot {
			after = append(after, r.cold[i]-r.boot[i].Total)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t\n", ms(pct(q, 50)), ms(pct(k, 50)), ms(pct(a, 50)), ms(pct(rest, 50)),
			ms(pct(tot, 50)), ms(pct(after, 50)))
		_ = tw.Flush()
	}
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "warm invoke\tn\tp50\tp99\tvs process (p50)\t")
	warmP50 := func(r *result) float64 { return float64(pct(r.warm, 50)) }
	for _, r := range results {
		if r.skipped != "" {
			continue
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t\n", r.driver, len(r.warm), ms(pct(r.warm, 50)), ms(pct(r.warm, 99)),
			ratio(warmP50(r), baseOf(warmP50)))
	}
	_ = tw.Flush()
	fmt.Fprintln(w)
	tw = tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	fmt.Fprintln(tw, "idle instance memory\tn\tRSS p50\tcgroup charge p50\toutside cgroup p50\tvs process (RSS p50)\t")
	rssP50 := func(r *result) float64 { return float64(pct(r.rss, 50) + pct(r.shim, 50)) }
	var srcs []string
	for _, r := range results {
		if r.skipped != "" {
			continue
		}
		charged, outside := "n/a", "-"
		if len(r.cgMem) > 0 {
			charged = mib(pct(r.cgMem, 50))
			if !slices.Contains(srcs, r.cgSrc) {
				srcs = append(srcs, r.cgSrc)
			}
		}
		if len(r.shim) > 0 {
			outside = mib(pct(r.shim, 50)) + " (shim)"
		}
		fmt.Fprintf(tw, "%s\t%d\t%s\t%s\t%s\t%s\t\n", r.driver, len(r.rss), mib(pct(r.rss, 50)), charged, outside,
			ratio(rssP50(r), baseOf(rssP50)))
	}
	_ = tw.Flush()
	fmt.Fprintln(w, "(RSS: sum of VmRSS over the instance cgroup's processes, 300 ms after its last invocation; the ratio adds the")
	fmt.Fprintf(w, " per-instance processes outside the cgroup; cgroup charge: %s, which includes page cache)\n", strings.Join(srcs, ", "))
	for _, r := range results {
		if r.skipped != "" {
			fmt.Fprintf(w, "skipped %s: %s\n", r.driver, r.skipped)
		}
	}
}
