//go:build linux

package process

import (
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/zfaas/zfaas/runtime/sandbox"
)

// TestCgroupLayouts runs detection and instance creation against fake
// cgroup trees in plain directories, covering the layouts this host does
// not have (pure cgroup v2 in particular).
func TestCgroupLayouts(t *testing.T) {
	lim := sandbox.Limits{MemoryBytes: 100 << 20, CPUs: 0.5, PIDs: 42}
	tests := []struct {
		name        string
		v1          []string // controllers mounted on v1
		v2          string   // cgroup2 cgroup.controllers; "-" for no cgroup2 mount
		wantErr     error
		wantMode    string
		wantFiles   map[string]string // path relative to the fake root → content
		wantV1Names []string
	}{
		{
			name: "hybrid", v1: []string{"memory", "cpu", "pids"}, v2: "hugetlb",
			wantMode: "hybrid", wantV1Names: []string{"memory", "cpu", "pids"},
			wantFiles: map[string]string{
				"v1/memory/p/i/memory.limit_in_bytes":       "104857600",
				"v1/memory/p/i/memory.memsw.limit_in_bytes": "104857600",
				"v1/cpu/p/i/cpu.cfs_quota_us":               "50000",
				"v1/cpu/p/i/cpu.cfs_period_us":              "100000",
				"v1/pids/p/i/pids.max":                      "42",
			},
		},
		{
			name: "unified", v2: "cpuset cpu io memory hugetlb pids",
			wantMode: "unified",
			wantFiles: map[string]string{
				"unified/p/i/memory.max":           "104857600",
				"unified/p/i/cpu.max":              "50000 100000",
				"unified/p/i/pids.max":             "42",
				"unified/cgroup.subtree_control":   "+cpu +memory +pids",
				"unified/p/cgroup.subtree_control": "+cpu +memory +pids",
			},
		},
		{
			name: "mixed", v1: []string{"memory"}, v2: "cpu pids",
			wantMode: "mixed", wantV1Names: []string{"memory"},
			wantFiles: map[string]string{
				"v1/memory/p/i/memory.limit_in_bytes": "104857600",
				"unified/p/i/cpu.max":                 "50000 100000",
				"unified/p/i/pids.max":                "42",
			},
		},
		{name: "no cgroup2", v1: []string{"memory", "cpu", "pids"}, v2: "-", wantErr: ErrUnsupported},
		{name: "missing pids", v1: []string{"memory", "cpu"}, v2: "", wantErr: ErrUnsupported},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			root := t.TempDir()
			var mounts []mountEntry
			for _, c := range tt.v1 {
				dir := filepath.Join(root, "v1", c)
				mustMkdir(t, dir)
				mounts = append(mounts, mountEntry{mountPoint: dir, fsType: "cgroup", superOpts: []string{"rw", c}})
				switch c {
				case "cpu":
					mustWrite(t, filepath.Join(dir, "cpu.cfs_quota_us"), "-1")
				case "memory":
					mustWrite(t, filepath.Join(dir, "memory.memsw.limit_in_bytes"), "")
				}
			}
			if tt.v2 != "-" {
				dir := filepath.Join(root, "unified")
				mustMkdir(t, dir)
				mustWrite(t, filepath.Join(dir, "cgroup.controllers"), tt.v2)
				mustWrite(t, filepath.Join(dir, "cgroup.subtree_control"), "")
				mounts = append(mounts, mountEntry{mountPoint: dir, fsType: "cgroup2", superOpts: []string{"rw"}})
			}

			h, err := detectCgroupsIn(mounts, "p")
			if !errors.Is(err, tt.wantErr) {
				t.Fatalf("detect: error %v, want %v", err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if got := h.mode(); got != tt.wantMode {
				t.Errorf("mode() = %q, want %q", got, tt.wantMode)
			}
			if !slices.Equal(h.v1Name, tt.wantV1Names) {
				t.Errorf("v1 controllers = %v, want %v", h.v1Name, tt.wantV1Names)
			}
			if len(h.v2Ctrl) > 0 { // cgroup2.NewManager enables controllers in existing files only
				mustWrite(t, filepath.Join(root, "unified", "p", "cgroup.subtree_control"), "")
			}
			c, err := h.create("i", lim)
			if err != nil {
				t.Fatalf("create: %v", err)
			}
			if got, want := c.v2Path, filepath.Join(root, "unified", "p", "i"); got != want {
				t.Errorf("v2 path = %q, want %q", got, want)
			}
			for rel, want := range tt.wantFiles {
				b, err := os.ReadFile(filepath.Join(root, rel))
				if err != nil {
					t.Errorf("read %s: %v", rel, err)
					continue
				}
				if got := strings.TrimSpace(string(b)); got != want {
					t.Errorf("%s = %q, want %q", rel, got, want)
				}
			}
		})
	}
}

func mustMkdir(t *testing.T, dir string) {
	t.Helper()
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
}

func mustWrite(t *testing.T, path, content string) {
	t.Helper()
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

func TestReadMountinfo(t *testing.T) {
	const table = `24 27 0:6 / /dev rw,relatime - devtmpfs devtmpfs rw,size=12334492k
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime shared:9 - cgroup cgroup rw,memory
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
50 27 0:40 / /mnt/with\040space rw - tmpfs tmpfs rw
`
	path := filepath.Join(t.TempDir(), "mountinfo")
	mustWrite(t, path, table)
	got, err := readMountinfo(path)
	if err != nil {
		t.Fatal(err)
	}
	want := []mountEntry{
		{"/dev", "devtmpfs", []string{"rw", "size=12334492k"}},
		{"/sys/fs/cgroup/memory", "cgroup", []string{"rw", "memory"}},
		{"/sys/fs/cgroup/unified", "cgroup2", []string{"rw"}},
		{"/mnt/with space", "tmpfs", []string{"rw"}},
	}
	if len(got) != len(want) {
		t.Fatalf("got %d entries, want %d: %+v", len(got), len(want), got)
	}
	for i := range want {
		if got[i].mountPoint != want[i].mountPoint || got[i].fsType != want[i].fsType || !slices.Equal(got[i].superOpts, want[i].superOpts) {
			t.Errorf("entry %d = %+v, want %+v", i, got[i], want[i])
		}
	}

	mustWrite(t, path, "garbage\n")
	if _, err := readMountinfo(path); err == nil {
		t.Error("malformed mountinfo: got nil error")
	}
}
