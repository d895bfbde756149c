//go:build unix

package sandbox

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestPrepareStateDir(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root: the state dir must be owned by root")
	}
	base := t.TempDir()

	fresh := filepath.Join(base, "a", "b")
	if err := PrepareStateDir(fresh); err != nil {
		t.Fatalf("missing dir: %v", err)
	}
	fi, err := os.Stat(fresh)
	if err != nil {
		t.Fatal(err)
	}
	if got := fi.Mode().Perm(); got != 0o700 {
		t.Errorf("created with mode %#o, want 0700", got)
	}

	open := filepath.Join(base, "open")
	if err := os.Mkdir(open, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chmod(open, 0o750); err != nil {
		t.Fatal(err)
	}
	file := filepath.Join(base, "file")
	if err := os.WriteFile(file, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	link := filepath.Join(base, "link")
	if err := os.Symlink(fresh, link); err != nil {
		t.Fatal(err)
	}
	foreign := filepath.Join(base, "foreign")
	if err := os.Mkdir(foreign, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Chown(foreign, 65534, 65534); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct{ dir, want string }{
		{open, "must not be accessible by group or others"},
		{file, "create state dir"},
		{link, "is not a directory"},
		{foreign, "must be owned by root"},
	} {
		err := PrepareStateDir(tc.dir)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("PrepareStateDir(%s) = %v, want error containing %q", filepath.Base(tc.dir), err, tc.want)
		}
	}
}
