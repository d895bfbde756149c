//go:build linux

package process

import (
	"errors"
	"fmt"
	"io/fs"
	"math"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"

	"github.com/containerd/cgroups/v3/cgroup1"
	"github.com/containerd/cgroups/v3/cgroup2"
	"github.com/moby/sys/mountinfo"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/zfaas/zfaas/runtime/sandbox"
)

const cpuPeriodUsec = 100000

// limitControllers are the controllers every instance is limited by.
func limitControllers() []string { return []string{"memory", "cpu", "pids"} }

// cgroupHost is the host's cgroup layout as detected by New. It is
// immutable after detection.
type cgroupHost struct {
	unified string // cgroup2 mount point
	parent  string // Config.CgroupParent, relative and clean
	// v1Root is the directory holding the v1 controller mounts
	// (<v1Root>/<controller>); empty when no controller is on v1.
	v1Root string
	v1     []cgroup1.Subsystem // limit controllers mounted on v1
	v1Name []string            // their names, same order
	v2Ctrl []string            // limit controllers available on v2 instead
	v1Swap bool                // v1 memory.memsw.* files exist
}

// mountEntry is one line of /proc/self/mountinfo.
type mountEntry struct {
	mountPoint string
	fsType     string
	superOpts  []string
}

// readMountinfo reads a mountinfo table (proc(5)) with moby/sys/mountinfo.
func readMountinfo(path string) ([]mountEntry, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	defer f.Close()
	infos, err := mountinfo.GetMountsFromReader(f, nil)
	if err != nil {
		return nil, fmt.Errorf("parse %s: %w", path, err)
	}
	out := make([]mountEntry, len(infos))
	for n, m := range infos {
		out[n] = mountEntry{mountPoint: m.Mountpoint, fsType: m.FSType, superOpts: strings.Split(m.VFSOptions, ",")}
	}
	return out, nil
}

// detectCgroups finds the cgroup2 mount and where the memory, cpu and pids
// controllers live, and creates the parent cgroups (which also proves they
// are writable). Failures wrap ErrUnsupported.
func detectCgroups(parent string) (*cgroupHost, error) {
	mounts, err := readMountinfo("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	return detectCgroupsIn(mounts, parent)
}

// detectCgroupsIn is detectCgroups for the given mount table.
func detectCgroupsIn(mounts []mountEntry, parent string) (*cgroupHost, error) {
	h := &cgroupHost{parent: parent}
	v1Mounts := map[string]string{}
	for _, m := range mounts {
		switch m.fsType {
		case "cgroup2":
			if h.unified == "" {
				h.unified = m.mountPoint
			}
		case "cgroup":
			for _, opt := range m.superOpts {
				if slices.Contains(limitControllers(), opt) {
					if _, ok := v1Mounts[opt]; !ok {
						v1Mounts[opt] = m.mountPoint
					}
				}
			}
		}
	}
	if h.unified == "" {
		return nil, fmt.Errorf("%w: no cgroup2 file system mounted", ErrUnsupported)
	}
	b, err := os.ReadFile(filepath.Join(h.unified, "cgroup.controllers"))
	if err != nil {
		return nil, fmt.Errorf("%w: read cgroup2 controllers: %w", ErrUnsupported, err)
	}
	v2Avail := strings.Fields(string(b))

	for _, ctrl := range limitControllers() {
		mp, onV1 := v1Mounts[ctrl]
		switch {
		case onV1:
			root := filepath.Dir(mp)
			if h.v1Root == "" {
				h.v1Root = root
			}
			if err := sameDir(filepath.Join(h.v1Root, ctrl), mp); err != nil {
				return nil, fmt.Errorf("%w: cgroup v1 controller %s mounted at %s, not under %s: %w",
					ErrUnsupported, ctrl, mp, h.v1Root, err)
			}
			h.v1Name = append(h.v1Name, ctrl)
			switch ctrl {
			case "memory":
				h.v1 = append(h.v1, cgroup1.NewMemory(h.v1Root))
			case "cpu":
				h.v1 = append(h.v1, cgroup1.NewCpu(h.v1Root))
			case "pids":
				h.v1 = append(h.v1, cgroup1.NewPids(h.v1Root))
			}
		case slices.Contains(v2Avail, ctrl):
			h.v2Ctrl = append(h.v2Ctrl, ctrl)
		default:
			return nil, fmt.Errorf("%w: cgroup controller %s is neither on cgroup v1 nor available on %s",
				ErrUnsupported, ctrl, h.unified)
		}
	}
	if slices.Contains(h.v1Name, "memory") {
		_, err := os.Stat(filepath.Join(h.v1Root, "memory", "memory.memsw.limit_in_bytes"))
		h.v1Swap = err == nil
	}
	if slices.Contains(h.v1Name, "cpu") {
		if _, err := os.Stat(filepath.Join(h.v1Root, "cpu", "cpu.cfs_quota_us")); err != nil {
			return nil, fmt.Errorf("%w: cgroup v1 cpu controller lacks CFS bandwidth control: %w", ErrUnsupported, err)
		}
	}

	// Create the parents now: proves the hierarchies are writable.
	dirs := []string{filepath.Join(h.unified, parent)}
	for _, ctrl := range h.v1Name {
		dirs = append(dirs, filepath.Join(h.v1Root, ctrl, parent))
	}
	for _, d := range dirs {
		if err := os.MkdirAll(d, 0o755); err != nil {
			return nil, fmt.Errorf("%w: create cgroup %s: %w", ErrUnsupported, d, err)
		}
	}
	return h, nil
}

func sameDir(a, b string) error {
	ra, err := filepath.EvalSymlinks(a)
	if err != nil {
		return err
	}
	rb, err := filepath.EvalSymlinks(b)
	if err != nil {
		return err
	}
	if ra != rb {
		return fmt.Errorf("%s resolves to %s", a, ra)
	}
	return nil
}

// mode names the layout for logs: "unified" (all limit controllers on
// v2), "hybrid" (all on v1, cgroup2 used only for the per-instance
// directory) or "mixed".
func (h *cgroupHost) mode() string {
	switch {
	case len(h.v1Name) == 0:
		return "unified"
	case len(h.v2Ctrl) == 0:
		return "hybrid"
	default:
		return "mixed"
	}
}

// instanceCgroups are the cgroups of one instance.
type instanceCgroups struct {
	host   *cgroupHost
	id     string
	v2Path string
	v1     cgroup1.Cgroup // nil when no controller is on v1
}

func (h *cgroupHost) v2Path(id string) string {
	return filepath.Join(h.unified, h.parent, id)
}

// create makes the instance's cgroups and applies lim. A cgroup left over
// with processes in it is refused with ErrInstanceExists and left alone.
func (h *cgroupHost) create(id string, lim sandbox.Limits) (_ *instanceCgroups, err error) {
	c := &instanceCgroups{host: h, id: id, v2Path: h.v2Path(id)}
	mem := lim.MemoryBytes
	pids := lim.PIDs
	period := uint64(cpuPeriodUsec)
	quota := max(int64(math.Round(lim.CPUs*cpuPeriodUsec)), 1000)

	if err := os.Mkdir(c.v2Path, 0o755); err != nil && !errors.Is(err, fs.ErrExist) {
		return nil, fmt.Errorf("create cgroup %s: %w", c.v2Path, err)
	}
	if busy, _ := c.populated(); busy {
		return nil, fmt.Errorf("%w: cgroup %s has processes", ErrInstanceExists, c.v2Path)
	}
	defer func() {
		if err != nil {
			_ = c.remove()
		}
	}()

	if len(h.v2Ctrl) > 0 {
		res := &cgroup2.Resources{}
		for _, ctrl := range h.v2Ctrl {
			switch ctrl {
			case "memory":
				res.Memory = &cgroup2.Memory{Max: &mem}
			case "cpu":
				res.CPU = &cgroup2.CPU{Max: cgroup2.NewCPUMax(&quota, &period)}
			case "pids":
				res.Pids = &cgroup2.Pids{Max: pids}
			}
		}
		if _, err := cgroup2.NewManager(h.unified, "/"+filepath.Join(h.parent, id), res); err != nil {
			return nil, fmt.Errorf("set cgroup v2 limits on %s: %w", c.v2Path, err)
		}
		if res.Memory != nil {
			// No swap: memory.swap.max counts swap only, so 0 gives the
			// same bound as v1's memsw = memory.
			swapFile := filepath.Join(c.v2Path, "memory.swap.max")
			if _, err := os.Stat(swapFile); err == nil {
				if err := os.WriteFile(swapFile, []byte("0"), 0o644); err != nil {
					return nil, fmt.Errorf("set %s: %w", swapFile, err)
				}
			}
		}
	}

	if len(h.v1) > 0 {
		res := &specs.LinuxResources{
			Memory: &specs.LinuxMemory{Limit: &mem},
			CPU:    &specs.LinuxCPU{Quota: &quota, Period: &period},
			Pids:   &specs.LinuxPids{Limit: &pids},
		}
		if h.v1Swap {
			res.Memory.Swap = &mem // memsw = memory + swap: no swap
		}
		subsystems := h.v1
		cg, err := cgroup1.New(cgroup1.StaticPath("/"+filepath.Join(h.parent, id)), res,
			cgroup1.WithHierarchy(func() ([]cgroup1.Subsystem, error) { return subsystems, nil }))
		if err != nil {
			for _, ctrl := range h.v1Name { // whatever New created before failing
				_ = os.Remove(c.v1Path(ctrl))
			}
			return nil, fmt.Errorf("create cgroup v1 %s/%s: %w", h.parent, id, err)
		}
		c.v1 = cg
		if busy, _ := c.populated(); busy {
			c.v1 = nil // do not remove someone else's cgroup
			return nil, fmt.Errorf("%w: cgroup v1 %s/%s has processes", ErrInstanceExists, h.parent, id)
		}
	}
	return c, nil
}

// v1Path is the instance's cgroup directory in the v1 hierarchy of ctrl.
func (c *instanceCgroups) v1Path(ctrl string) string {
	return filepath.Join(c.host.v1Root, ctrl, c.host.parent, c.id)
}

// addV1 moves pid (with all its threads) into the instance's v1 cgroups.
func (c *instanceCgroups) addV1(pid int) error {
	if c.v1 == nil {
		return nil
	}
	if err := c.v1.AddProc(uint64(pid)); err != nil {
		return fmt.Errorf("add pid %d to cgroup v1 %s/%s: %w", pid, c.host.parent, c.id, err)
	}
	return nil
}

// addV2 moves pid into the instance's v2 cgroup; used only when the kernel
// cannot start the process there directly (clone3 CLONE_INTO_CGROUP).
func (c *instanceCgroups) addV2(pid int) error {
	p := filepath.Join(c.v2Path, "cgroup.procs")
	if err := os.WriteFile(p, []byte(strconv.Itoa(pid)), 0o644); err != nil {
		return fmt.Errorf("add pid %d to %s: %w", pid, p, err)
	}
	return nil
}

// procDirs lists the directories whose cgroup.procs hold the instance's
// processes.
func (c *instanceCgroups) procDirs() []string {
	dirs := []string{c.v2Path}
	if c.v1 != nil {
		for _, ctrl := range c.host.v1Name {
			dirs = append(dirs, c.v1Path(ctrl))
		}
	}
	return dirs
}

// kill sends SIGKILL to every process of the instance: through cgroup.kill
// when the kernel has it (5.14+), and to any pid still listed in one of the
// instance's cgroups.
func (c *instanceCgroups) kill() error {
	var errs []error
	// No O_CREATE: before Linux 5.14 (or once removed) the file is absent.
	if f, err := os.OpenFile(filepath.Join(c.v2Path, "cgroup.kill"), os.O_WRONLY, 0); err == nil {
		_, err = f.WriteString("1")
		f.Close()
		if err != nil {
			errs = append(errs, fmt.Errorf("write cgroup.kill in %s: %w", c.v2Path, err))
		}
	} else if !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("open cgroup.kill in %s: %w", c.v2Path, err))
	}
	for _, dir := range c.procDirs() {
		pids, err := readPids(filepath.Join(dir, "cgroup.procs"))
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
			continue
		}
		for _, pid := range pids {
			if err := syscall.Kill(pid, syscall.SIGKILL); err != nil && !errors.Is(err, syscall.ESRCH) {
				errs = append(errs, fmt.Errorf("kill pid %d: %w", pid, err))
			}
		}
	}
	return errors.Join(errs...)
}

// populated reports whether any process is still in one of the instance's
// cgroups. Missing cgroups count as empty.
func (c *instanceCgroups) populated() (bool, error) {
	var errs []error
	for _, dir := range c.procDirs() {
		pids, err := readPids(filepath.Join(dir, "cgroup.procs"))
		if err != nil {
			if !errors.Is(err, fs.ErrNotExist) {
				errs = append(errs, err)
			}
			continue
		}
		if len(pids) > 0 {
			return true, nil
		}
	}
	return false, errors.Join(errs...)
}

func readPids(path string) ([]int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var pids []int
	for _, f := range strings.Fields(string(b)) {
		pid, err := strconv.Atoi(f)
		if err != nil {
			return nil, fmt.Errorf("parse %s: %w", path, err)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// oomKills returns how many processes the OOM killer killed in the
// instance's memory cgroup.
func (c *instanceCgroups) oomKills() (uint64, error) {
	if c.v1 != nil && slices.Contains(c.host.v1Name, "memory") {
		return readKey(filepath.Join(c.v1Path("memory"), "memory.oom_control"), "oom_kill")
	}
	if slices.Contains(c.host.v2Ctrl, "memory") {
		return readKey(filepath.Join(c.v2Path, "memory.events"), "oom_kill")
	}
	return 0, nil
}

// readKey reads the value of key from a flat-keyed cgroup file ("key value"
// lines).
func readKey(path, key string) (uint64, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	for line := range strings.Lines(string(b)) {
		k, v, ok := strings.Cut(strings.TrimSpace(line), " ")
		if ok && k == key {
			n, err := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			if err != nil {
				return 0, fmt.Errorf("parse %s in %s: %w", key, path, err)
			}
			return n, nil
		}
	}
	return 0, fmt.Errorf("%s: no %s field", path, key)
}

// remove deletes the instance's cgroups; they must be empty. Removing
// cgroups that are already gone succeeds.
func (c *instanceCgroups) remove() error {
	var errs []error
	if c.v1 != nil {
		if err := c.v1.Delete(); err != nil && !errors.Is(err, cgroup1.ErrCgroupDeleted) {
			errs = append(errs, fmt.Errorf("remove cgroup v1 %s/%s: %w", c.host.parent, c.id, err))
		}
	}
	if err := os.Remove(c.v2Path); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, fmt.Errorf("remove cgroup %s: %w", c.v2Path, err))
	}
	return errors.Join(errs...)
}
