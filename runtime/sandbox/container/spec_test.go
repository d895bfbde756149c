//go:build linux

package container

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"github.com/zfaas/zfaas/runtime/sandbox"
)

func TestParseCgroupMounts(t *testing.T) {
	tests := []struct {
		name, mountinfo string
		unified, memory string
		hybrid          bool
		hierarchies     int
	}{
		{
			name: "hybrid",
			mountinfo: "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n" +
				"35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory\n" +
				"39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids\n" +
				"41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n",
			unified: "/sys/fs/cgroup/unified", memory: "/sys/fs/cgroup/memory", hybrid: true, hierarchies: 3,
		},
		{
			name:      "unified",
			mountinfo: "30 23 0:26 / /sys/fs/cgroup rw,nosuid shared:4 - cgroup2 cgroup2 rw,nsdelegate\n",
			unified:   "/sys/fs/cgroup", memory: "/sys/fs/cgroup", hierarchies: 1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			h, err := parseCgroupMounts([]byte(tt.mountinfo), "p")
			if err != nil {
				t.Fatal(err)
			}
			if h.unified != tt.unified || h.memory != tt.memory || h.hybrid != tt.hybrid || len(h.all) != tt.hierarchies {
				t.Errorf("got unified %q memory %q hybrid %v hierarchies %d, want %q %q %v %d",
					h.unified, h.memory, h.hybrid, len(h.all), tt.unified, tt.memory, tt.hybrid, tt.hierarchies)
			}
			if got, want := h.v2Path("i"), filepath.Join(tt.unified, "p", "i"); got != want {
				t.Errorf("v2Path = %q, want %q", got, want)
			}
		})
	}
	if _, err := parseCgroupMounts([]byte("35 31 0:32 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"), "p"); !errors.Is(err, ErrUnsupported) {
		t.Errorf("no cgroup2: err %v, want ErrUnsupported", err)
	}
}

// testSpecDriver is a Driver that can build specs without containerd.
func testSpecDriver(runtime string) *Driver {
	return &Driver{
		runtime: runtime, uid: DefaultUID, gid: DefaultGID,
		cg: &cgroupHost{unified: "/sys/fs/cgroup", memory: "/sys/fs/cgroup", parent: "zfaas"},
	}
}

func TestOCISpec(t *testing.T) {
	lim := sandbox.Limits{MemoryBytes: 100<<20 + 1, CPUs: 1.5, PIDs: 64, NoFile: 99, TmpBytes: 1 << 20}
	spec := sandbox.Spec{
		ID: "i1", CodeDir: "/code", Args: []string{"/var/task/run"},
		Mounts: []sandbox.Mount{{Source: "/h/a/b", Target: "/x/y"}, {Source: "/h/a", Target: "/x"}},
	}
	for _, rt := range []string{RuntimeRunc, RuntimeKata} {
		t.Run(rt, func(t *testing.T) {
			s, err := testSpecDriver(rt).ociSpec(spec, lim, "/state/i1/rootfs")
			if err != nil {
				t.Fatal(err)
			}
			if !s.Root.Readonly || s.Root.Path != "/state/i1/rootfs" {
				t.Errorf("root = %+v, want read-only /state/i1/rootfs", s.Root)
			}
			if s.Linux.CgroupsPath != "/zfaas/i1" {
				t.Errorf("cgroupsPath = %q, want /zfaas/i1", s.Linux.CgroupsPath)
			}
			p := s.Process
			if p.User.UID != 65534 || p.User.GID != 65534 || !p.NoNewPrivileges || len(p.Capabilities.Bounding) != 0 {
				t.Errorf("process = %+v, want uid/gid 65534, no_new_privs, no capabilities", p)
			}
			if p.Cwd != sandbox.TaskRoot || p.Env == nil {
				t.Errorf("cwd %q env %v, want %s and an empty env", p.Cwd, p.Env, sandbox.TaskRoot)
			}
			r := s.Linux.Resources
			if *r.Memory.Limit != lim.MemoryBytes || *r.Memory.Swap != lim.MemoryBytes || *r.CPU.Quota != 150000 || *r.Pids.Limit != 64 {
				t.Errorf("resources = mem %d swap %d quota %d pids %d", *r.Memory.Limit, *r.Memory.Swap, *r.CPU.Quota, *r.Pids.Limit)
			}
			if slices.ContainsFunc(s.Linux.Namespaces, func(n specs.LinuxNamespace) bool { return n.Type == specs.NetworkNamespace }) {
				t.Error("network namespace requested, want the host's")
			}
			if s.Linux.Seccomp == nil || s.Linux.Seccomp.DefaultAction != specs.ActAllow || len(s.Linux.Seccomp.Syscalls) == 0 {
				t.Errorf("seccomp = %+v", s.Linux.Seccomp)
			}
			var dests []string
			for _, m := range s.Mounts {
				dests = append(dests, m.Destination)
				if m.Type == "bind" && !slices.Contains(m.Options, "ro") {
					t.Errorf("bind %s is not read-only", m.Destination)
				}
			}
			if i, j := slices.Index(dests, "/x"), slices.Index(dests, "/x/y"); i < 0 || j < i {
				t.Errorf("mounts %v: want /x before /x/y", dests)
			}
			for _, want := range []string{"/proc", "/dev", "/usr", "/etc", "/tmp", sandbox.TaskRoot} {
				if !slices.Contains(dests, want) {
					t.Errorf("mounts %v lack %s", dests, want)
				}
			}
			ann := s.Annotations
			if rt == RuntimeKata {
				if ann[KataAnnotationMemory] != "101" || ann[KataAnnotationVCPUs] != "2" {
					t.Errorf("kata annotations = %v, want memory 101 (MiB, rounded up) and 2 vCPUs", ann)
				}
			} else if len(ann) != 0 {
				t.Errorf("annotations = %v, want none for runc", ann)
			}
		})
	}
}

func TestStartRejectsInvalidSpec(t *testing.T) {
	code := t.TempDir()
	if err := os.Chmod(code, 0o755); err != nil {
		t.Fatal(err)
	}
	d := testSpecDriver(RuntimeRunc)
	for _, tt := range []struct {
		name string
		spec sandbox.Spec
	}{
		{"bad id", sandbox.Spec{ID: "a/b", CodeDir: code, Args: []string{"/bin/true"}}},
		{"relative args", sandbox.Spec{ID: "a", CodeDir: code, Args: []string{"true"}}},
		{"no code dir", sandbox.Spec{ID: "a", CodeDir: "/nonexistent-zfaas", Args: []string{"/bin/true"}}},
		{"reserved target", sandbox.Spec{ID: "a", CodeDir: code, Args: []string{"/bin/true"},
			Mounts: []sandbox.Mount{{Source: code, Target: "/proc/x"}}}},
		{"tiny memory", sandbox.Spec{ID: "a", CodeDir: code, Args: []string{"/bin/true"},
			Limits: sandbox.Limits{MemoryBytes: 1024}}},
	} {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := d.Start(context.Background(), tt.spec); !errors.Is(err, sandbox.ErrInvalidSpec) {
				t.Errorf("err = %v, want ErrInvalidSpec", err)
			}
		})
	}
}

func TestNewUnreachableContainerd(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("New needs root")
	}
	_, err := New(Config{
		Address:      filepath.Join(t.TempDir(), "none.sock"),
		StateDir:     filepath.Join(t.TempDir(), "state"),
		CgroupParent: testCgroupParent,
	})
	if !errors.Is(err, ErrUnsupported) {
		t.Fatalf("err = %v, want ErrUnsupported", err)
	}
}
