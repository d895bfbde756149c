//go:build linux

package container

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"

	"github.com/moby/sys/mountinfo"
)

// cgroupHost is the host's cgroup layout as detected by New. It is
// immutable after detection.
type cgroupHost struct {
	unified string // cgroup2 mount point
	hybrid  bool   // the limit controllers live in v1 hierarchies
	memory  string // mount point of the hierarchy with the memory controller
	// all holds the mount point of every cgroup hierarchy (v1 and v2): runc
	// creates the instance's path in each of them.
	all    []string
	parent string // Config.CgroupParent, relative and clean
}

// detectCgroups reads /proc/self/mountinfo and creates the v2 parent cgroup
// (which also proves it is writable). Failures wrap ErrUnsupported.
func detectCgroups(parent string) (*cgroupHost, error) {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	h, err := parseCgroupMounts(b, parent)
	if err != nil {
		return nil, err
	}
	if err := os.MkdirAll(filepath.Join(h.unified, parent), 0o755); err != nil {
		return nil, fmt.Errorf("%w: create parent cgroup: %w", ErrUnsupported, err)
	}
	return h, nil
}

// parseCgroupMounts finds the cgroup mounts in a mountinfo table.
func parseCgroupMounts(table []byte, parent string) (*cgroupHost, error) {
	infos, err := mountinfo.GetMountsFromReader(bytes.NewReader(table), mountinfo.FSTypeFilter("cgroup", "cgroup2"))
	if err != nil {
		return nil, fmt.Errorf("%w: parse mountinfo: %w", ErrUnsupported, err)
	}
	h := &cgroupHost{parent: parent}
	for _, m := range infos {
		switch m.FSType {
		case "cgroup2":
			if h.unified == "" {
				h.unified = m.Mountpoint
				h.all = append(h.all, m.Mountpoint)
			}
		case "cgroup":
			h.all = append(h.all, m.Mountpoint)
			if slices.Contains(strings.Split(m.VFSOptions, ","), "memory") {
				h.memory = m.Mountpoint
				h.hybrid = true
			}
		}
	}
	if h.unified == "" {
		return nil, fmt.Errorf("%w: no cgroup2 file system mounted", ErrUnsupported)
	}
	if h.memory == "" {
		h.memory = h.unified
	}
	return h, nil
}

// rel returns the instance's cgroup path relative to every hierarchy's
// root, as the OCI spec's cgroupsPath wants it.
func (h *cgroupHost) rel(id string) string { return "/" + h.parent + "/" + id }

// v2Path returns the instance's cgroup v2 directory.
func (h *cgroupHost) v2Path(id string) string { return filepath.Join(h.unified, h.parent, id) }

// create makes the instance's cgroup v2 directory; it must not exist.
func (h *cgroupHost) create(id string) (string, error) {
	p := h.v2Path(id)
	if err := os.Mkdir(p, 0o755); err != nil {
		if errors.Is(err, fs.ErrExist) {
			return "", fmt.Errorf("%w: cgroup %s exists", ErrInstanceExists, p)
		}
		return "", fmt.Errorf("create cgroup: %w", err)
	}
	return p, nil
}

// join moves pid into the instance's cgroup v2 directory.
func (h *cgroupHost) join(id string, pid uint32) error {
	f := filepath.Join(h.v2Path(id), "cgroup.procs")
	if err := os.WriteFile(f, []byte(strconv.FormatUint(uint64(pid), 10)), 0); err != nil {
		return fmt.Errorf("move pid %d into %s: %w", pid, f, err)
	}
	return nil
}

// oomKills returns how often the OOM killer acted in the instance's memory
// cgroup (v1 memory.oom_control or v2 memory.events, field oom_kill).
func (h *cgroupHost) oomKills(id string) (uint64, error) {
	dir := filepath.Join(h.memory, h.parent, id)
	file := "memory.events"
	if h.hybrid {
		file = "memory.oom_control"
	}
	b, err := os.ReadFile(filepath.Join(dir, file))
	if err != nil {
		return 0, err
	}
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, "oom_kill "); ok {
			return strconv.ParseUint(strings.TrimSpace(v), 10, 64)
		}
	}
	return 0, fmt.Errorf("no oom_kill field in %s", file)
}

// remove deletes the instance's cgroup in every hierarchy (runc removes
// its own on delete; this catches what a failed start or a crash left).
// Missing directories are not an error.
func (h *cgroupHost) remove(id string) error {
	var errs []error
	for _, mp := range h.all {
		p := filepath.Join(mp, h.parent, id)
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			errs = append(errs, fmt.Errorf("remove cgroup: %w", err))
		}
	}
	return errors.Join(errs...)
}

// leftovers lists the instance's cgroup directories that still exist.
func (h *cgroupHost) leftovers(id string) []string {
	var out []string
	for _, mp := range h.all {
		p := filepath.Join(mp, h.parent, id)
		if _, err := os.Stat(p); err == nil {
			out = append(out, p)
		}
	}
	return out
}
