//go:build linux

package microvm

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
	"time"

	"github.com/moby/sys/mountinfo"
)

// cgroupHost is where the cgroup v2 hierarchy and the memory, cpu and pids
// controllers are mounted (v1 on hybrid hosts). Immutable after detection.
type cgroupHost struct {
	unified string
	parent  string
	v1      map[string]string // controller → v1 mount point
	v2Ctrl  []string          // controllers used on v2
}

func detectCgroups(parent string) (*cgroupHost, error) {
	infos, err := mountinfo.GetMounts(mountinfo.FSTypeFilter("cgroup", "cgroup2"))
	if err != nil {
		return nil, fmt.Errorf("%w: read mountinfo: %w", ErrUnsupported, err)
	}
	h := &cgroupHost{parent: parent, v1: map[string]string{}}
	for _, m := range infos {
		switch m.FSType {
		case "cgroup2":
			if h.unified == "" {
				h.unified = m.Mountpoint
			}
		case "cgroup":
			for _, o := range strings.Split(m.VFSOptions, ",") {
				if o == "memory" || o == "cpu" || o == "pids" {
					if _, ok := h.v1[o]; !ok {
						h.v1[o] = m.Mountpoint
					}
				}
			}
		}
	}
	if h.unified == "" {
		return nil, fmt.Errorf("%w: no cgroup2 file system mounted", ErrUnsupported)
	}
	avail, _ := os.ReadFile(filepath.Join(h.unified, "cgroup.controllers"))
	for _, c := range []string{"memory", "cpu", "pids"} {
		if _, ok := h.v1[c]; !ok && slices.Contains(strings.Fields(string(avail)), c) {
			h.v2Ctrl = append(h.v2Ctrl, c)
		}
	}
	if err := os.MkdirAll(filepath.Join(h.unified, parent), 0o755); err != nil {
		return nil, fmt.Errorf("%w: create cgroup: %w", ErrUnsupported, err)
	}
	if len(h.v2Ctrl) > 0 {
		var enable []string
		for _, c := range h.v2Ctrl {
			enable = append(enable, "+"+c)
		}
		for _, d := range []string{h.unified, filepath.Join(h.unified, parent)} {
			_ = os.WriteFile(filepath.Join(d, "cgroup.subtree_control"), []byte(strings.Join(enable, " ")), 0o644)
		}
	}
	return h, nil
}

// vmCgroup is one instance's cgroups.
type vmCgroup struct {
	v2   string
	dirs []string // every directory of the instance, v2 first
	v1   []string // v1 directories a new process must be added to
}

// create makes the instance's cgroups with a memory limit of mem bytes,
// cpus cores of bandwidth and pids tasks.
func (h *cgroupHost) create(id string, mem int64, cpus float64, pids int64) (_ *vmCgroup, err error) {
	c := &vmCgroup{v2: filepath.Join(h.unified, h.parent, id)}
	defer func() {
		if err != nil {
			_ = c.remove()
		}
	}()
	if err := os.Mkdir(c.v2, 0o755); err != nil {
		return nil, fmt.Errorf("create cgroup %s: %w", c.v2, err)
	}
	c.dirs = append(c.dirs, c.v2)
	quota := max(int64(math.Round(cpus*100000)), 1000)
	write := func(dir, file, val string) error {
		if err := os.WriteFile(filepath.Join(dir, file), []byte(val), 0o644); err != nil {
			return fmt.Errorf("set %s/%s: %w", dir, file, err)
		}
		return nil
	}
	for _, ctrl := range []string{"memory", "cpu", "pids"} {
		if mp, ok := h.v1[ctrl]; ok {
			dir := filepath.Join(mp, h.parent, id)
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return nil, fmt.Errorf("create cgroup %s: %w", dir, err)
			}
			c.dirs = append(c.dirs, dir)
			c.v1 = append(c.v1, dir)
			switch ctrl {
			case "memory":
				if err := write(dir, "memory.limit_in_bytes", strconv.FormatInt(mem, 10)); err != nil {
					return nil, err
				}
				if _, err := os.Stat(filepath.Join(dir, "memory.memsw.limit_in_bytes")); err == nil {
					if err := write(dir, "memory.memsw.limit_in_bytes", strconv.FormatInt(mem, 10)); err != nil {
						return nil, err
					}
				}
			case "cpu":
				if err := write(dir, "cpu.cfs_period_us", "100000"); err != nil {
					return nil, err
				}
				if err := write(dir, "cpu.cfs_quota_us", strconv.FormatInt(quota, 10)); err != nil {
					return nil, err
				}
			case "pids":
				if err := write(dir, "pids.max", strconv.FormatInt(pids, 10)); err != nil {
					return nil, err
				}
			}
			continue
		}
		if !slices.Contains(h.v2Ctrl, ctrl) {
			continue
		}
		var err error
		switch ctrl {
		case "memory":
			err = write(c.v2, "memory.max", strconv.FormatInt(mem, 10))
			if err == nil {
				_ = write(c.v2, "memory.swap.max", "0")
			}
		case "cpu":
			err = write(c.v2, "cpu.max", fmt.Sprintf("%d 100000", quota))
		case "pids":
			err = write(c.v2, "pids.max", strconv.FormatInt(pids, 10))
		}
		if err != nil {
			return nil, err
		}
	}
	return c, nil
}

// addV1 moves pid into the instance's v1 cgroups (the v2 one is entered
// at clone time).
func (c *vmCgroup) addV1(pid int) error {
	for _, d := range c.v1 {
		if err := os.WriteFile(filepath.Join(d, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0o644); err != nil {
			return fmt.Errorf("add pid %d to %s: %w", pid, d, err)
		}
	}
	return nil
}

func (c *vmCgroup) pids() []int {
	var out []int
	for _, d := range c.dirs {
		b, err := os.ReadFile(filepath.Join(d, "cgroup.procs"))
		if err != nil {
			continue
		}
		for _, f := range strings.Fields(string(b)) {
			if p, err := strconv.Atoi(f); err == nil && !slices.Contains(out, p) {
				out = append(out, p)
			}
		}
	}
	return out
}

// kill SIGKILLs every process in the instance's cgroups.
func (c *vmCgroup) kill() {
	if f, err := os.OpenFile(filepath.Join(c.v2, "cgroup.kill"), os.O_WRONLY, 0); err == nil {
		_, _ = f.WriteString("1")
		f.Close()
	}
	for _, p := range c.pids() {
		_ = syscall.Kill(p, syscall.SIGKILL)
	}
}

// remove kills what is left and removes the cgroups, waiting up to a
// second for them to empty.
func (c *vmCgroup) remove() error {
	deadline := time.Now().Add(time.Second)
	for len(c.pids()) > 0 && time.Now().Before(deadline) {
		c.kill()
		time.Sleep(10 * time.Millisecond)
	}
	var errs []error
	for i := len(c.dirs) - 1; i >= 0; i-- {
		if err := os.Remove(c.dirs[i]); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove cgroup %s: %w", c.dirs[i], err))
		}
	}
	return errors.Join(errs...)
}
