package microvm

import "path/filepath"

// CgroupV2Parent returns the cgroup v2 directory under which every
// instance's cgroup (holding its QEMU and host proxy) is created: where
// eBPF egress enforcement attaches once.
func (d *Driver) CgroupV2Parent() string { return filepath.Join(d.cg.unified, d.cg.parent) }
