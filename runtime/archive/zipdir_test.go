package archive

import (
	"bytes"
	"os"
	"path/filepath"
	"syscall"
	"testing"
	"time"
)

// makeTree creates a directory with files, an executable, nested and empty
// directories and inside symlinks.
func makeTree(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	write := func(name, body string, mode os.FileMode) {
		p := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte(body), mode); err != nil {
			t.Fatal(err)
		}
		if err := os.Chmod(p, mode); err != nil {
			t.Fatal(err)
		}
	}
	write("bootstrap", "#!/bin/sh\nexec ./app\n", 0o755)
	write("app", "binary", 0o700)
	write("lib/util.py", "x = 1\n", 0o600)
	write("lib/sub/data.json", `{"a":1}`, 0o644)
	if err := os.MkdirAll(filepath.Join(dir, "empty"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("../util.py", filepath.Join(dir, "lib", "sub", "link.py")); err != nil {
		t.Fatal(err)
	}
	if err := os.Symlink("lib", filepath.Join(dir, "libdir")); err != nil {
		t.Fatal(err)
	}
	return dir
}

func zipDir(t *testing.T, dir string) []byte {
	t.Helper()
	var buf bytes.Buffer
	if err := ZipDir(t.Context(), dir, &buf); err != nil {
		t.Fatalf("ZipDir: %v", err)
	}
	return buf.Bytes()
}

func TestZipDirDeterministic(t *testing.T) {
	dir := makeTree(t)
	first := zipDir(t, dir)
	// Touching files changes nothing.
	later := time.Now().Add(time.Hour)
	if err := filepath.Walk(dir, func(p string, info os.FileInfo, err error) error {
		if err != nil || info.Mode()&os.ModeSymlink != 0 {
			return err
		}
		return os.Chtimes(p, later, later)
	}); err != nil {
		t.Fatal(err)
	}
	if second := zipDir(t, dir); !bytes.Equal(first, second) {
		t.Fatal("ZipDir of the same tree gave different bytes")
	}
	// An identical tree elsewhere gives the same bytes.
	if other := zipDir(t, makeTree(t)); !bytes.Equal(first, other) {
		t.Fatal("ZipDir of an identical tree in another directory gave different bytes")
	}
}

func TestZipDirRoundTrip(t *testing.T) {
	dir := makeTree(t)
	data := zipDir(t, dir)
	m := checkBoth(t, data, DefaultLimits(), "")
	want := map[string]struct {
		typ    EntryType
		mode   os.FileMode
		target string
	}{
		"app":               {TypeFile, 0o755, ""},
		"bootstrap":         {TypeFile, 0o755, ""},
		"empty":             {TypeDir, os.ModeDir | 0o755, ""},
		"lib":               {TypeDir, os.ModeDir | 0o755, ""},
		"lib/sub":           {TypeDir, os.ModeDir | 0o755, ""},
		"lib/sub/data.json": {TypeFile, 0o644, ""},
		"lib/sub/link.py":   {TypeSymlink, os.ModeSymlink | 0o777, "../util.py"},
		"lib/util.py":       {TypeFile, 0o644, ""},
		"libdir":            {TypeSymlink, os.ModeSymlink | 0o777, "lib"},
	}
	if len(m.Entries) != len(want) {
		t.Fatalf("got %d entries, want %d: %+v", len(m.Entries), len(want), m.Entries)
	}
	order := []string{"app", "bootstrap", "empty", "lib", "lib/sub", "lib/sub/data.json", "lib/sub/link.py", "lib/util.py", "libdir"}
	for i, e := range m.Entries {
		if e.Name != order[i] {
			t.Errorf("entry %d: got %q, want %q", i, e.Name, order[i])
		}
		w, ok := want[e.Name]
		if !ok {
			t.Errorf("unexpected entry %q", e.Name)
			continue
		}
		if e.Type != w.typ || e.Mode != w.mode || e.Target != w.target {
			t.Errorf("%s: got %s %v %q, want %s %v %q", e.Name, e.Type, e.Mode, e.Target, w.typ, w.mode, w.target)
		}
	}
	// Contents survive.
	dst := t.TempDir()
	if _, err := Extract(t.Context(), bytes.NewReader(data), int64(len(data)), dst, DefaultLimits()); err != nil {
		t.Fatal(err)
	}
	for _, name := range []string{"bootstrap", "app", "lib/util.py", "lib/sub/data.json", "lib/sub/link.py", "libdir/util.py"} {
		a, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(filepath.Join(dst, name))
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(a, b) {
			t.Errorf("%s: contents differ after the round trip", name)
		}
	}
}

func TestZipDirRefuses(t *testing.T) {
	tests := []struct {
		name  string
		setup func(t *testing.T, dir string)
		code  string
	}{
		{"absolute symlink", func(t *testing.T, dir string) {
			mustSymlink(t, "/etc/passwd", filepath.Join(dir, "passwd"))
		}, CodeUnsafeSymlink},
		{"escaping symlink", func(t *testing.T, dir string) {
			mustSymlink(t, "../../secret", filepath.Join(dir, "lib", "secret"))
		}, CodeUnsafeSymlink},
		{"escaping chain", func(t *testing.T, dir string) {
			mustSymlink(t, "..", filepath.Join(dir, "lib", "up"))
			mustSymlink(t, "lib/up/..", filepath.Join(dir, "out"))
		}, CodeUnsafeSymlink},
		{"fifo", func(t *testing.T, dir string) {
			if err := syscall.Mkfifo(filepath.Join(dir, "pipe"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, CodeUnsupportedEntry},
		{"backslash name", func(t *testing.T, dir string) {
			if err := os.WriteFile(filepath.Join(dir, `a\b`), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}, CodeUnsafePath},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			dir := makeTree(t)
			tt.setup(t, dir)
			var buf bytes.Buffer
			err := ZipDir(t.Context(), dir, &buf)
			wantCode(t, err, tt.code)
			if buf.Len() != 0 {
				t.Errorf("ZipDir wrote %d bytes before refusing", buf.Len())
			}
		})
	}
}

func mustSymlink(t *testing.T, target, name string) {
	t.Helper()
	if err := os.Symlink(target, name); err != nil {
		t.Fatal(err)
	}
}
