//go:build linux

package process

import (
	"os"
	"path/filepath"
	"testing"
)

func TestMountPoint(t *testing.T) {
	root := t.TempDir()
	mustMkdir(t, filepath.Join(root, "var", "task"))
	mustWrite(t, filepath.Join(root, "file"), "")
	if err := os.Symlink("/etc", filepath.Join(root, "var", "task", "link")); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		target  string
		dir     bool
		wantErr bool
	}{
		{"/opt/zfaas", true, false},
		{"/opt/zfaas", true, false}, // exists: reused
		{"/srv/data.txt", false, false},
		{"/var/task/link", true, true},        // ends in a symlink
		{"/var/task/link/sub", true, true},    // traverses a symlink
		{"/file/sub", true, true},             // traverses a file
		{"/file", true, true},                 // dir source onto a file
		{"/opt", false, true},                 // file source onto a dir
		{"/srv/data.txt/x", false, true},      // traverses a file
		{"/var/task/new/deeper", true, false}, // plain nesting
	}
	for _, tt := range tests {
		got, err := mountPoint(root, tt.target, tt.dir)
		if (err != nil) != tt.wantErr {
			t.Errorf("mountPoint(%s, dir=%v) error = %v, want error %v", tt.target, tt.dir, err, tt.wantErr)
			continue
		}
		if err != nil {
			continue
		}
		if want := filepath.Join(root, tt.target); got != want {
			t.Errorf("mountPoint(%s) = %s, want %s", tt.target, got, want)
		}
		fi, err := os.Lstat(got)
		if err != nil || fi.IsDir() != tt.dir {
			t.Errorf("mountPoint(%s): created %v (%v), want dir=%v", tt.target, fi, err, tt.dir)
		}
	}
}
