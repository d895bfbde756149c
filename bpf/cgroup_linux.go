//go:build linux

package bpf

import (
	"encoding/binary"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"golang.org/x/sys/unix"
)

// CgroupID returns the id of the cgroup v2 directory at path: the id the
// kernel reports for tasks in it (bpf_get_current_cgroup_id), which is
// also the directory's inode number.
func CgroupID(path string) (uint64, error) {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		return 0, fmt.Errorf("cgroup id of %s: %w", path, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return 0, fmt.Errorf("cgroup id of %s: not on a cgroup v2 file system", path)
	}
	// The file handle of a cgroup v2 directory is its id.
	h, _, err := unix.NameToHandleAt(unix.AT_FDCWD, path, 0)
	if err == nil && h.Size() == 8 {
		return binary.NativeEndian.Uint64(h.Bytes()), nil
	}
	var s unix.Stat_t
	if err := unix.Stat(path, &s); err != nil {
		return 0, fmt.Errorf("cgroup id of %s: %w", path, err)
	}
	return s.Ino, nil
}

// cgroupParentInfo returns the id of the cgroup v2 directory at path and
// its level (the root of the hierarchy is level 0). The level is counted
// from the mount's root, so the worker must see the whole hierarchy (no
// cgroup namespace).
func cgroupParentInfo(path string) (id uint64, level int, err error) {
	fi, err := os.Stat(path)
	if err != nil {
		return 0, 0, fmt.Errorf("%w: cgroup parent: %w", ErrUnsupported, err)
	}
	if !fi.IsDir() {
		return 0, 0, fmt.Errorf("cgroup parent %s is not a directory", path)
	}
	if id, err = CgroupID(path); err != nil {
		return 0, 0, fmt.Errorf("%w: %w", ErrUnsupported, err)
	}
	dir := path
	for {
		up := filepath.Dir(dir)
		if up == dir {
			break
		}
		var st unix.Statfs_t
		if unix.Statfs(up, &st) != nil || st.Type != unix.CGROUP2_SUPER_MAGIC {
			break
		}
		level++
		dir = up
	}
	return id, level, nil
}

// preparePinDir makes sure dir is a directory on a bpffs, mounting one at
// /sys/fs/bpf when dir is below it and it is not mounted yet.
func preparePinDir(dir string) error {
	const bpffs = "/sys/fs/bpf"
	onBPFFS := func(p string) bool {
		var st unix.Statfs_t
		return unix.Statfs(p, &st) == nil && st.Type == unix.BPF_FS_MAGIC
	}
	if rel, err := filepath.Rel(bpffs, dir); err == nil && filepath.IsLocal(rel) && !onBPFFS(bpffs) {
		if err := os.MkdirAll(bpffs, 0o700); err != nil {
			return fmt.Errorf("%w: create %s: %w", ErrUnsupported, bpffs, err)
		}
		if err := unix.Mount("bpffs", bpffs, "bpf", 0, "mode=0700"); err != nil {
			return fmt.Errorf("%w: mount bpffs at %s: %w", ErrUnsupported, bpffs, err)
		}
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		if errors.Is(err, os.ErrPermission) {
			err = fmt.Errorf("%w: %w", ErrUnsupported, err)
		}
		return fmt.Errorf("create pin directory %s: %w", dir, err)
	}
	if !onBPFFS(dir) {
		return fmt.Errorf("%w: pin directory %s is not on a bpffs", ErrUnsupported, dir)
	}
	return nil
}
