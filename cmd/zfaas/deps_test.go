package main

import (
	"bytes"
	"encoding/json"
	"io"
	"os/exec"
	"strings"
	"testing"
)

// testSupport are the packages only tests (and the benchmarks) may import.
var testSupport = map[string]bool{
	"runtime/sandbox/sandboxtest": true,
	"runtime/attest/swtpmtest":    true,
	"crypto/tlcp/tlcptest":        true,
}

// TestDependencyDirection enforces the dependency rules of DESIGN.md: cmd →
// roles → shared leaves, never backwards, and no test code in production.
func TestDependencyDirection(t *testing.T) {
	if _, err := exec.LookPath("go"); err != nil {
		t.Skip("go tool not on PATH")
	}
	out, err := exec.Command("go", "list", "-json", "github.com/zfaas/zfaas/...").Output()
	if err != nil {
		t.Fatalf("go list: %v", err)
	}
	const mod = "github.com/zfaas/zfaas/"
	type pkg struct {
		ImportPath string
		Imports    []string
	}
	// Each rule: packages under from may not import packages under to,
	// except the listed exceptions.
	rules := []struct {
		from, to string
		except   []string
	}{
		{"api", "", nil}, // api imports nothing of zfaas but itself
		{"store", "", nil},
		{"crypto", "", []string{"crypto"}},
		{"identity", "gateway", nil},
		{"runtime", "gateway", nil},
		{"policyd", "gateway", nil},
		{"gateway", "runtime", []string{"runtime/archive"}},
		{"audit", "gateway", nil},
	}
	dec := json.NewDecoder(bytes.NewReader(out))
	for {
		var p pkg
		if err := dec.Decode(&p); err == io.EOF {
			break
		} else if err != nil {
			t.Fatal(err)
		}
		rel := strings.TrimPrefix(p.ImportPath, mod)
		for _, imp := range p.Imports {
			if imp == "testing" && !strings.HasSuffix(rel, "test") {
				t.Errorf("%s imports testing in production code", rel)
			}
			if !strings.HasPrefix(imp, mod) {
				continue
			}
			irel := strings.TrimPrefix(imp, mod)
			if testSupport[irel] && !testSupport[rel] && !under(rel, "bench") {
				t.Errorf("%s imports the test-support package %s in production code", rel, irel)
			}
			if strings.HasPrefix(irel, "cmd/") || irel == "cmd" {
				t.Errorf("%s imports %s: nothing may import cmd/", rel, irel)
			}
			for _, r := range rules {
				if !under(rel, r.from) {
					continue
				}
				if r.to == "" {
					// Leaf: may import only itself and api.
					if !under(irel, r.from) && !under(irel, "api") {
						t.Errorf("%s imports %s: %s is a leaf", rel, irel, r.from)
					}
					continue
				}
				if under(irel, r.to) && !anyUnder(irel, r.except) {
					t.Errorf("%s imports %s: %s must not depend on %s", rel, irel, r.from, r.to)
				}
			}
		}
	}
}

func under(p, dir string) bool { return p == dir || strings.HasPrefix(p, dir+"/") }

func anyUnder(p string, dirs []string) bool {
	for _, d := range dirs {
		if under(p, d) {
			return true
		}
	}
	return false
}
