package archive

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"syscall"
	"testing"
)

// checkBoth runs Inspect and Extract on data and checks both give code
// want ("" for success) and the same Manifest, and that a failed Extract
// leaves its directory empty.
func checkBoth(t *testing.T, data []byte, lim Limits, want string) Manifest {
	t.Helper()
	m1, err := inspect(data, lim)
	wantCode(t, err, want)
	dst := t.TempDir()
	m2, err := Extract(t.Context(), bytes.NewReader(data), int64(len(data)), dst, lim)
	wantCode(t, err, want)
	if want != "" {
		left, err := os.ReadDir(dst)
		if err != nil {
			t.Fatal(err)
		}
		if len(left) != 0 {
			t.Fatalf("Extract left %d entries after refusing the package", len(left))
		}
		return Manifest{}
	}
	if !reflect.DeepEqual(m1, m2) {
		t.Fatalf("Inspect and Extract manifests differ:\n%+v\n%+v", m1, m2)
	}
	checkTree(t, dst, m2)
	return m2
}

// checkTree checks that dir holds exactly what m lists.
func checkTree(t testing.TB, dir string, m Manifest) {
	t.Helper()
	want := map[string]Entry{}
	for _, e := range m.Entries {
		want[e.Name] = e
	}
	seen := 0
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if p == dir {
			return nil
		}
		rel, _ := filepath.Rel(dir, p)
		rel = filepath.ToSlash(rel)
		e, ok := want[rel]
		if !ok {
			return fmt.Errorf("%s on disk but not in the manifest", rel)
		}
		seen++
		info, err := os.Lstat(p)
		if err != nil {
			return err
		}
		if info.Mode() != e.Mode {
			return fmt.Errorf("%s: mode %v, want %v", rel, info.Mode(), e.Mode)
		}
		switch e.Type {
		case TypeFile:
			if info.Size() != e.Size {
				return fmt.Errorf("%s: size %d, want %d", rel, info.Size(), e.Size)
			}
		case TypeSymlink:
			target, err := os.Readlink(p)
			if err != nil {
				return err
			}
			if target != e.Target {
				return fmt.Errorf("%s: target %q, want %q", rel, target, e.Target)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if seen != len(m.Entries) {
		t.Fatalf("%d entries on disk, want %d", seen, len(m.Entries))
	}
}

func TestValidPackages(t *testing.T) {
	tests := []struct {
		name  string
		data  []byte
		files int
		size  int64
		names []string
	}{
		{
			name: "zip",
			data: buildZip(t,
				zent{name: "bootstrap", body: "#!/bin/sh\necho hi\n", mode: 0o755},
				zent{name: "lib/"},
				zent{name: "lib/util.py", body: "x = 1\n"},
				zent{name: "lib/deep/a.txt", body: "a"},
				zent{name: "bin/tool", body: "../lib/util.py", mode: fs.ModeSymlink | 0o777},
				zent{name: "dangling", body: "not/there", mode: fs.ModeSymlink | 0o777},
				zent{name: "self", body: ".", mode: fs.ModeSymlink | 0o777},
			),
			files: 3,
			size:  int64(len("#!/bin/sh\necho hi\n") + 6 + 1),
			names: []string{"bootstrap", "lib", "lib/util.py", "lib/deep", "lib/deep/a.txt", "bin", "bin/tool", "dangling", "self"},
		},
		{
			name:  "empty zip",
			data:  buildZip(t),
			names: []string{},
		},
		{
			name: "tar.gz like tar -C dir . and git archive",
			data: buildTarGz(t,
				tent{typ: tar.TypeXGlobalHeader, name: "pax_global_header", body: "commit"},
				tent{name: "./", typ: tar.TypeDir, mode: 0o755},
				tent{name: "./handler.js", body: "exports.h = 1\n"},
				tent{name: "./node_modules/", typ: tar.TypeDir, mode: 0o700},
				tent{name: "./node_modules/m/index.js", body: "m"},
				tent{name: "./node_modules/.bin/m", typ: tar.TypeSymlink, linkname: "../m/index.js"},
				tent{name: "./copy.js", typ: tar.TypeLink, linkname: "./handler.js"},
			),
			files: 3,
			size:  int64(2*len("exports.h = 1\n") + 1),
			names: []string{"handler.js", "node_modules", "node_modules/m", "node_modules/m/index.js", "node_modules/.bin", "node_modules/.bin/m", "copy.js"},
		},
		{
			name:  "empty tar.gz",
			data:  buildTarGz(t),
			names: []string{},
		},
		{
			name:  "duplicate directories",
			data:  buildZip(t, zent{name: "a/b.txt", body: "b"}, zent{name: "a/"}, zent{name: "a/"}),
			files: 1, size: 1,
			names: []string{"a", "a/b.txt"},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			m := checkBoth(t, tt.data, DefaultLimits(), "")
			var names []string
			for _, e := range m.Entries {
				names = append(names, e.Name)
			}
			if names == nil {
				names = []string{}
			}
			if !reflect.DeepEqual(names, tt.names) {
				t.Errorf("entries: got %q, want %q", names, tt.names)
			}
			if m.Files != tt.files || m.UnpackedSize != tt.size {
				t.Errorf("got %d files, %d bytes; want %d, %d", m.Files, m.UnpackedSize, tt.files, tt.size)
			}
		})
	}
}

func TestHardlinkIsCopy(t *testing.T) {
	data := buildTarGz(t,
		tent{name: "f", body: "content", mode: 0o644},
		tent{name: "h", typ: tar.TypeLink, linkname: "f", mode: 0o755},
	)
	dst := t.TempDir()
	m, err := Extract(t.Context(), bytes.NewReader(data), int64(len(data)), dst, DefaultLimits())
	if err != nil {
		t.Fatal(err)
	}
	if got := m.Entries[1]; got.Target != "f" || got.Size != 7 || got.Mode != 0o755 {
		t.Errorf("hard link entry: got %+v", got)
	}
	b, err := os.ReadFile(filepath.Join(dst, "h"))
	if err != nil || string(b) != "content" {
		t.Fatalf("h: got %q, %v", b, err)
	}
	a, _ := os.Stat(filepath.Join(dst, "f"))
	h, _ := os.Stat(filepath.Join(dst, "h"))
	if os.SameFile(a, h) {
		t.Error("h is the same inode as f, want a copy")
	}
}

func TestUnsafePaths(t *testing.T) {
	names := []string{
		"../x",
		"/etc/x",
		"a/../../x",
		"a/../x",
		`..\x`,
		`a\..\..\x`,
		`C:\x`,
		"./../x",
		"a//b",
		"a/./b",
		"a/.",
		"..",
		"a\x00b",
		"a\nb",
		"\xff\xfe",
		strings.Repeat("a", 256),
		strings.Repeat("a/", 600) + "x",
		".",
		"",
	}
	for _, name := range names {
		t.Run(fmt.Sprintf("zip %q", name), func(t *testing.T) {
			checkBoth(t, buildZip(t, zent{name: "ok", body: "fine"}, zent{name: name, body: "x", mode: 0o644}), DefaultLimits(), CodeUnsafePath)
		})
		if name == "" || strings.Contains(name, "\x00") {
			continue // the tar writer cannot express these
		}
		t.Run(fmt.Sprintf("tar %q", name), func(t *testing.T) {
			checkBoth(t, buildTarGz(t, tent{name: "ok", body: "fine"}, tent{name: name, body: "x"}), DefaultLimits(), CodeUnsafePath)
		})
	}
}

func TestRawTarNames(t *testing.T) {
	// Names the tar writer refuses to produce.
	for _, name := range []string{"file/", "/abs", "../up"} {
		t.Run(name, func(t *testing.T) {
			data := gzipBytes(t, rawTar(t, name, tar.TypeReg, "x"))
			checkBoth(t, data, DefaultLimits(), CodeUnsafePath)
		})
	}
}

func TestConflictingEntries(t *testing.T) {
	tests := []struct {
		name string
		data []byte
	}{
		{"duplicate file", buildZip(t, zent{name: "a", body: "1"}, zent{name: "a", body: "2"})},
		{"file then dir", buildZip(t, zent{name: "a", body: "1"}, zent{name: "a/"})},
		{"dir then file", buildZip(t, zent{name: "a/"}, zent{name: "a", body: "1"})},
		{"file used as parent", buildZip(t, zent{name: "a", body: "1"}, zent{name: "a/b", body: "2"})},
		{"./ alias", buildTarGz(t, tent{name: "a", body: "1"}, tent{name: "./a", body: "2"})},
		{"symlink over implied dir", buildTarGz(t, tent{name: "d/f", body: "1"}, tent{name: "d", typ: tar.TypeSymlink, linkname: "e"})},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkBoth(t, tt.data, DefaultLimits(), CodeUnsafePath)
		})
	}
}

func TestUnsafeSymlinks(t *testing.T) {
	link := func(name, target string) zent { return zent{name: name, body: target, mode: fs.ModeSymlink | 0o777} }
	tests := []struct {
		name string
		data []byte
	}{
		{"absolute", buildZip(t, link("l", "/etc/passwd"))},
		{"parent", buildZip(t, link("l", "../x"))},
		{"deep parent", buildZip(t, zent{name: "a/b/"}, link("a/b/l", "../../../x"))},
		{"dotdot after dir", buildZip(t, link("l", "x/../../y"))},
		{"backslash", buildZip(t, link("l", `..\..\x`))},
		{"empty", buildZip(t, link("l", ""))},
		{"chain", buildZip(t,
			zent{name: "d/"},
			link("d/d2", ".."),
			link("l", "d/d2"),
			link("x", "l/.."), // l is the root, so l/.. is outside
		)},
		{"chain to absolute", buildZip(t, link("a", "b"), link("b", "c/x"), link("c", "../.."))},
		{"loop", buildZip(t, link("a", "b"), link("b", "a"))},
		{"self loop", buildZip(t, link("a", "a/x"))},
		{"file through symlink", buildZip(t, zent{name: "sub/"}, link("lnk", "sub"), zent{name: "lnk/f", body: "x"})},
		{"dir through symlink", buildTarGz(t, tent{name: "lnk", typ: tar.TypeSymlink, linkname: "."}, tent{name: "lnk/d", typ: tar.TypeDir})},
		{"symlink through symlink", buildTarGz(t, tent{name: "lnk", typ: tar.TypeSymlink, linkname: "."}, tent{name: "lnk/l2", typ: tar.TypeSymlink, linkname: "x"})},
		{"tar absolute", buildTarGz(t, tent{name: "l", typ: tar.TypeSymlink, linkname: "/etc"})},
		{"tar escape", buildTarGz(t, tent{name: "a/l", typ: tar.TypeSymlink, linkname: "../../etc"})},
		{"target too long", buildZip(t, link("l", strings.Repeat("a/", 600)))},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkBoth(t, tt.data, DefaultLimits(), CodeUnsafeSymlink)
		})
	}
}

func TestUnsupportedEntries(t *testing.T) {
	tests := []struct {
		name string
		data []byte
		code string
	}{
		{"zip char device", buildZip(t, zent{name: "dev", mode: fs.ModeDevice | fs.ModeCharDevice | 0o644}), CodeUnsupportedEntry},
		{"zip block device", buildZip(t, zent{name: "dev", mode: fs.ModeDevice | 0o644}), CodeUnsupportedEntry},
		{"zip fifo", buildZip(t, zent{name: "p", mode: fs.ModeNamedPipe | 0o644}), CodeUnsupportedEntry},
		{"zip socket", buildZip(t, zent{name: "s", mode: fs.ModeSocket | 0o644}), CodeUnsupportedEntry},
		{"tar char device", buildTarGz(t, tent{name: "null", typ: tar.TypeChar}), CodeUnsupportedEntry},
		{"tar block device", buildTarGz(t, tent{name: "sda", typ: tar.TypeBlock}), CodeUnsupportedEntry},
		{"tar fifo", buildTarGz(t, tent{name: "p", typ: tar.TypeFifo}), CodeUnsupportedEntry},
		{"tar contiguous", buildTarGz(t, tent{name: "c", typ: tar.TypeCont}), CodeUnsupportedEntry},
		{"hardlink escaping", buildTarGz(t, tent{name: "h", typ: tar.TypeLink, linkname: "../../etc/passwd"}), CodeUnsafePath},
		{"hardlink absolute", buildTarGz(t, tent{name: "h", typ: tar.TypeLink, linkname: "/etc/passwd"}), CodeUnsafePath},
		{"hardlink forward", buildTarGz(t, tent{name: "h", typ: tar.TypeLink, linkname: "f"}, tent{name: "f", body: "x"}), CodeUnsupportedEntry},
		{"hardlink to dir", buildTarGz(t, tent{name: "d", typ: tar.TypeDir}, tent{name: "h", typ: tar.TypeLink, linkname: "d"}), CodeUnsupportedEntry},
		{"hardlink to symlink", buildTarGz(t, tent{name: "f", body: "x"}, tent{name: "l", typ: tar.TypeSymlink, linkname: "f"}, tent{name: "h", typ: tar.TypeLink, linkname: "l"}), CodeUnsupportedEntry},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkBoth(t, tt.data, DefaultLimits(), tt.code)
		})
	}
}

func TestEncryptedZipEntry(t *testing.T) {
	data := buildZip(t, zent{name: "secret", body: "x"})
	// Set the "encrypted" flag (bit 0) in the local and central headers.
	for _, sig := range [][]byte{[]byte("PK\x03\x04"), []byte("PK\x01\x02")} {
		i := bytes.Index(data, sig)
		off := 6
		if sig[2] == 1 {
			off = 8
		}
		data[i+off] |= 1
	}
	checkBoth(t, data, DefaultLimits(), CodeUnsupportedEntry)
}

func TestSizeLimits(t *testing.T) {
	zeros := strings.Repeat("\x00", 10<<20)
	tests := []struct {
		name string
		data []byte
		lim  Limits
		code string
	}{
		{
			name: "compressed over limit",
			data: buildZip(t, zent{name: "a", body: "hello"}),
			lim:  Limits{MaxCompressed: 50},
			code: CodeTooLarge,
		},
		{
			name: "lying header: declares 10 bytes, holds 10 MiB",
			data: lyingZip(t, "bomb", 10, 10<<20),
			code: CodeInvalid,
		},
		{
			name: "lying header: declares 10 bytes, holds 10 MiB, ratio off",
			data: lyingZip(t, "bomb", 10, 10<<20),
			lim:  Limits{MaxRatio: -1, MaxUnpacked: 1 << 20},
			code: CodeInvalid,
		},
		{
			name: "header declares huge, contents over MaxUnpacked",
			data: lyingZip(t, "bomb", 1<<40, 3<<20),
			lim:  Limits{MaxRatio: -1, MaxUnpacked: 2 << 20},
			code: CodeUnpackedTooLarge,
		},
		{
			name: "zip ratio bomb",
			data: buildZip(t, zent{name: "zeros", body: zeros}),
			code: CodeRatioExceeded,
		},
		{
			name: "tar.gz ratio bomb",
			data: buildTarGz(t, tent{name: "zeros", body: zeros}),
			code: CodeRatioExceeded,
		},
		{
			name: "unpacked over limit across files",
			data: buildZip(t, zent{name: "a", body: zeros[:600<<10]}, zent{name: "b", body: zeros[:600<<10]}),
			lim:  Limits{MaxUnpacked: 1 << 20},
			code: CodeUnpackedTooLarge,
		},
		{
			name: "hard link copies count",
			data: buildTarGz(t, tent{name: "a", body: zeros[:600<<10]}, tent{name: "b", typ: tar.TypeLink, linkname: "a"}),
			lim:  Limits{MaxUnpacked: 1 << 20, MaxRatio: -1},
			code: CodeUnpackedTooLarge,
		},
		{
			name: "hard link crossing both limits reports the lower",
			data: buildTarGz(t, tent{name: "a", body: zeros[:900<<10]}, tent{name: "b", typ: tar.TypeLink, linkname: "a"}),
			lim:  Limits{MaxUnpacked: 1536 << 10, MaxRatio: 1},
			code: CodeRatioExceeded,
		},
		{
			name: "ratio exempt below 1 MiB",
			data: buildZip(t, zent{name: "zeros", body: zeros[:1<<20]}),
			code: "",
		},
		{
			name: "junk after the tar end is counted",
			data: gzipBytes(t, append(buildTar(t), make([]byte, 10<<20)...)),
			lim:  Limits{MaxUnpacked: 1 << 10, MaxFiles: 1, MaxRatio: -1},
			code: CodeUnpackedTooLarge,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkBoth(t, tt.data, tt.lim, tt.code)
		})
	}
}

// buildTar is an uncompressed tar with one small file.
func buildTar(t *testing.T) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	if err := tw.WriteHeader(&tar.Header{Name: "f", Mode: 0o644, Size: 1, Typeflag: tar.TypeReg}); err != nil {
		t.Fatal(err)
	}
	tw.Write([]byte("x"))
	tw.Close()
	return buf.Bytes()
}

func TestTooManyFiles(t *testing.T) {
	many := func(n int) []zent {
		var ents []zent
		for i := range n {
			ents = append(ents, zent{name: fmt.Sprintf("f%d", i), body: "x"})
		}
		return ents
	}
	var tents []tent
	for i := range 6 {
		tents = append(tents, tent{name: fmt.Sprintf("f%d", i), body: "x"})
	}
	tests := []struct {
		name string
		data []byte
		lim  Limits
		code string
	}{
		{"at the limit", buildZip(t, many(5)...), Limits{MaxFiles: 5}, ""},
		{"one over", buildZip(t, many(6)...), Limits{MaxFiles: 5}, CodeTooManyFiles},
		{"central directory precheck", buildZip(t, many(100)...), Limits{MaxFiles: 5}, CodeTooManyFiles},
		{"tar", buildTarGz(t, tents...), Limits{MaxFiles: 5}, CodeTooManyFiles},
		{"implied parents count", buildZip(t, zent{name: "a/b/c/d/e", body: "x"}), Limits{MaxFiles: 4}, CodeTooManyFiles},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkBoth(t, tt.data, tt.lim, tt.code)
		})
	}
}

func TestCorrupt(t *testing.T) {
	good := buildZip(t, zent{name: "a.txt", body: strings.Repeat("hello zfaas ", 1000)})
	flipped := bytes.Clone(good)
	flipped[60] ^= 0xff // inside a.txt's deflate data
	tgz := buildTarGz(t, tent{name: "a.txt", body: strings.Repeat("hello zfaas ", 1000)})
	tgzFlipped := bytes.Clone(tgz)
	tgzFlipped[len(tgzFlipped)-6] ^= 0xff // the gzip CRC-32
	tests := []struct {
		name string
		data []byte
	}{
		{"unknown format", []byte("#!/bin/sh\necho not an archive\n")},
		{"too short", []byte("PK")},
		{"zip flipped data", flipped},
		{"zip truncated", good[:len(good)-30]},
		{"zip magic then junk", append([]byte("PK\x03\x04"), bytes.Repeat([]byte{7}, 100)...)},
		{"tar.gz bad crc", tgzFlipped},
		{"tar.gz truncated", tgz[:len(tgz)/2]},
		{"gzip of not a tar", gzipBytes(t, bytes.Repeat([]byte("not a tar "), 100))},
		{"gzip then junk", append(bytes.Clone(tgz), "junk"...)},
		{"bare tar", buildTar(t)},
		{"zip directory with contents", func() []byte {
			var buf bytes.Buffer
			zw := zip.NewWriter(&buf)
			hdr := &zip.FileHeader{Name: "d/", Method: zip.Store}
			w, _ := zw.CreateRaw(&zip.FileHeader{Name: hdr.Name, CompressedSize64: 3, UncompressedSize64: 3})
			w.Write([]byte("abc"))
			zw.Close()
			return buf.Bytes()
		}()},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			checkBoth(t, tt.data, DefaultLimits(), CodeInvalid)
		})
	}
}

func TestModes(t *testing.T) {
	old := syscall.Umask(0o077)
	defer syscall.Umask(old)
	data := buildZip(t,
		zent{name: "exec", body: "x", mode: 0o755},
		zent{name: "owner-exec", body: "x", mode: 0o700},
		zent{name: "plain", body: "x", mode: 0o600},
		zent{name: "setuid", body: "x", mode: fs.ModeSetuid | fs.ModeSetgid | 0o4755},
		zent{name: "sticky/", mode: fs.ModeDir | fs.ModeSticky | 0o1777},
		zent{name: "private/", mode: fs.ModeDir | 0o700},
	)
	dst := t.TempDir()
	if _, err := Extract(t.Context(), bytes.NewReader(data), int64(len(data)), dst, DefaultLimits()); err != nil {
		t.Fatal(err)
	}
	want := map[string]fs.FileMode{
		"exec":       0o755,
		"owner-exec": 0o755,
		"plain":      0o644,
		"setuid":     0o755,
		"sticky":     fs.ModeDir | 0o755,
		"private":    fs.ModeDir | 0o755,
	}
	for name, mode := range want {
		info, err := os.Lstat(filepath.Join(dst, name))
		if err != nil {
			t.Fatal(err)
		}
		if info.Mode() != mode {
			t.Errorf("%s: got mode %v, want %v", name, info.Mode(), mode)
		}
	}
	tgz := buildTarGz(t, tent{name: "run", body: "x", mode: 0o6755}, tent{name: "d", typ: tar.TypeDir, mode: 0o1700})
	dst = t.TempDir()
	if _, err := Extract(t.Context(), bytes.NewReader(tgz), int64(len(tgz)), dst, DefaultLimits()); err != nil {
		t.Fatal(err)
	}
	for name, mode := range map[string]fs.FileMode{"run": 0o755, "d": fs.ModeDir | 0o755} {
		info, err := os.Lstat(filepath.Join(dst, name))
		if err != nil {
			t.Fatal(err)
		}
		if info.Mode() != mode {
			t.Errorf("tar %s: got mode %v, want %v", name, info.Mode(), mode)
		}
	}
}

func TestExtractDestination(t *testing.T) {
	data := buildZip(t, zent{name: "a", body: "x"})
	t.Run("not empty", func(t *testing.T) {
		dst := t.TempDir()
		if err := os.WriteFile(filepath.Join(dst, "existing"), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		_, err := Extract(t.Context(), bytes.NewReader(data), int64(len(data)), dst, DefaultLimits())
		if err == nil {
			t.Fatal("Extract into a non-empty directory: got nil error")
		}
		if _, err := os.Stat(filepath.Join(dst, "existing")); err != nil {
			t.Errorf("existing file touched: %v", err)
		}
	})
	t.Run("missing", func(t *testing.T) {
		_, err := Extract(t.Context(), bytes.NewReader(data), int64(len(data)), filepath.Join(t.TempDir(), "nope"), DefaultLimits())
		if err == nil {
			t.Fatal("Extract into a missing directory: got nil error")
		}
	})
	t.Run("canceled", func(t *testing.T) {
		ctx, cancel := context.WithCancel(t.Context())
		cancel()
		dst := t.TempDir()
		_, err := Extract(ctx, bytes.NewReader(data), int64(len(data)), dst, DefaultLimits())
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
		if left, _ := os.ReadDir(dst); len(left) != 0 {
			t.Errorf("canceled Extract left %d entries", len(left))
		}
	})
	t.Run("failure late removes everything", func(t *testing.T) {
		bad := buildZip(t,
			zent{name: "a/b/c", body: "x"},
			zent{name: "top", body: "y", mode: 0o755},
			zent{name: "l", body: "a", mode: fs.ModeSymlink | 0o777},
			zent{name: "z/../../evil", body: "z"},
		)
		checkBoth(t, bad, DefaultLimits(), CodeUnsafePath)
	})
}

func TestErrorHTTPStatus(t *testing.T) {
	tests := map[string]int{
		CodeTooLarge:         http.StatusRequestEntityTooLarge,
		CodeInvalid:          http.StatusBadRequest,
		CodeUnpackedTooLarge: http.StatusUnprocessableEntity,
		CodeRatioExceeded:    http.StatusUnprocessableEntity,
		CodeTooManyFiles:     http.StatusUnprocessableEntity,
		CodeUnsafePath:       http.StatusUnprocessableEntity,
		CodeUnsafeSymlink:    http.StatusUnprocessableEntity,
		CodeUnsupportedEntry: http.StatusUnprocessableEntity,
	}
	for code, want := range tests {
		if got := (&Error{Code: code}).HTTPStatus(); got != want {
			t.Errorf("%s: got %d, want %d", code, got, want)
		}
	}
}

func TestErrorNamesEntry(t *testing.T) {
	_, err := inspect(buildZip(t, zent{name: "../escape-me", body: "x"}), DefaultLimits())
	var ae *Error
	if !errors.As(err, &ae) || !strings.Contains(ae.Msg, `"../escape-me"`) {
		t.Fatalf("got %v, want a message naming \"../escape-me\"", err)
	}
	if strings.Contains(err.Error(), "\n") {
		t.Error("message has a newline")
	}
}

func TestDefaultLimits(t *testing.T) {
	got := Limits{}.normalize()
	if got != DefaultLimits() {
		t.Errorf("zero Limits: got %+v, want %+v", got, DefaultLimits())
	}
	want := Limits{MaxCompressed: 50 << 20, MaxUnpacked: 250 << 20, MaxRatio: 100, MaxFiles: 10000}
	if DefaultLimits() != want {
		t.Errorf("DefaultLimits: got %+v, want %+v", DefaultLimits(), want)
	}
}
