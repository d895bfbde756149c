package archive

import (
	"archive/tar"
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

var update = flag.Bool("update", false, "rewrite the seed corpus in testdata/fuzz/FuzzInspect")

const corpusDir = "testdata/fuzz/FuzzInspect"

func fuzzLimits() Limits {
	return Limits{MaxCompressed: 1 << 20, MaxUnpacked: 1 << 20, MaxRatio: 100, MaxFiles: 64}
}

type seed struct {
	data []byte
	code string // what Inspect answers under fuzzLimits
}

func seeds(t testing.TB) map[string]seed {
	link := func(name, target string) zent { return zent{name: name, body: target, mode: fs.ModeSymlink | 0o777} }
	return map[string]seed{
		"zip-valid": {buildZip(t,
			zent{name: "bootstrap", body: "#!/bin/sh\n", mode: 0o755},
			zent{name: "lib/"},
			zent{name: "lib/a.py", body: "a = 1\n"},
			link("bin/a", "../lib/a.py"),
		), ""},
		"zip-empty":          {buildZip(t), ""},
		"zip-traversal":      {buildZip(t, zent{name: "a/../../x", body: "x"}), CodeUnsafePath},
		"zip-symlink-escape": {buildZip(t, zent{name: "d/"}, link("d/up", ".."), link("x", "d/up/..")), CodeUnsafeSymlink},
		"zip-device":         {buildZip(t, zent{name: "null", mode: fs.ModeDevice | fs.ModeCharDevice | 0o666}), CodeUnsupportedEntry},
		"zip-lying-size":     {lyingZip(t, "bomb", 10, 4096), CodeInvalid},
		"tgz-valid": {buildTarGz(t,
			tent{name: "pax_global_header", typ: tar.TypeXGlobalHeader, body: "c"},
			tent{name: "./", typ: tar.TypeDir},
			tent{name: "./index.js", body: "exports.h = 1\n"},
			tent{name: "./copy.js", typ: tar.TypeLink, linkname: "index.js"},
			tent{name: "./l", typ: tar.TypeSymlink, linkname: "index.js"},
		), ""},
		"tgz-through-symlink": {buildTarGz(t, tent{name: "lnk", typ: tar.TypeSymlink, linkname: "."}, tent{name: "lnk/f", body: "x"}), CodeUnsafeSymlink},
		"tgz-hardlink-escape": {buildTarGz(t, tent{name: "h", typ: tar.TypeLink, linkname: "../etc/passwd"}), CodeUnsafePath},
		"tgz-fifo":            {buildTarGz(t, tent{name: "p", typ: tar.TypeFifo}), CodeUnsupportedEntry},
	}
}

// TestFuzzSeeds checks the committed seed corpus decodes and still means
// what its name says; -update rewrites it from seeds.
func TestFuzzSeeds(t *testing.T) {
	all := seeds(t)
	if *update {
		if err := os.MkdirAll(corpusDir, 0o755); err != nil {
			t.Fatal(err)
		}
		for name, s := range all {
			body := fmt.Sprintf("go test fuzz v1\n[]byte(%s)\n", strconv.Quote(string(s.data)))
			if err := os.WriteFile(filepath.Join(corpusDir, name), []byte(body), 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	for name, s := range all {
		t.Run(name, func(t *testing.T) {
			raw, err := os.ReadFile(filepath.Join(corpusDir, name))
			if err != nil {
				t.Fatalf("seed missing (run go test -run TestFuzzSeeds -update): %v", err)
			}
			text, ok := strings.CutPrefix(string(raw), "go test fuzz v1\n[]byte(")
			text, ok2 := strings.CutSuffix(text, ")\n")
			if !ok || !ok2 {
				t.Fatal("seed is not in the go test fuzz v1 format")
			}
			data, err := strconv.Unquote(text)
			if err != nil {
				t.Fatalf("seed: %v", err)
			}
			_, err = inspect([]byte(data), fuzzLimits())
			wantCode(t, err, s.code)
		})
	}
}

// FuzzInspect feeds arbitrary bytes to Inspect and Extract. Neither may
// panic; Inspect fails only with *Error; both agree on the outcome and the
// Manifest; what Extract leaves on disk is exactly the Manifest, or nothing.
func FuzzInspect(f *testing.F) {
	for _, s := range seeds(f) {
		f.Add(s.data)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		lim := fuzzLimits()
		m1, err1 := inspect(data, lim)
		var ae1 *Error
		if err1 != nil && !errors.As(err1, &ae1) {
			t.Fatalf("Inspect failed with %T %v, want *Error", err1, err1)
		}
		dst := t.TempDir()
		m2, err2 := Extract(t.Context(), bytes.NewReader(data), int64(len(data)), dst, lim)
		if (err1 == nil) != (err2 == nil) {
			t.Fatalf("Inspect: %v; Extract: %v", err1, err2)
		}
		if err1 != nil {
			var ae2 *Error
			if !errors.As(err2, &ae2) || ae2.Code != ae1.Code {
				t.Fatalf("Inspect: %v; Extract: %v", err1, err2)
			}
			if left, _ := os.ReadDir(dst); len(left) != 0 {
				t.Fatalf("failed Extract left %d entries", len(left))
			}
			return
		}
		if !reflect.DeepEqual(m1, m2) {
			t.Fatalf("manifests differ:\n%+v\n%+v", m1, m2)
		}
		if m1.UnpackedSize > lim.MaxUnpacked {
			t.Fatalf("unpacked %d bytes over the %d limit", m1.UnpackedSize, lim.MaxUnpacked)
		}
		checkTree(t, dst, m2)
	})
}
