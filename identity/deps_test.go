package identity_test

import (
	"go/build"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestImports enforces the dependency direction: identity packages import
// only the standard library, third-party modules, other identity packages
// and the shared leaves of this module (api, crypto, audit, store), and
// production code never imports testing.
func TestImports(t *testing.T) {
	const module = "github.com/zfaas/zfaas/"
	err := filepath.WalkDir(".", func(dir string, d os.DirEntry, err error) error {
		if err != nil || !d.IsDir() {
			return err
		}
		pkg, err := build.ImportDir(dir, 0)
		if _, ok := err.(*build.NoGoError); ok {
			return nil
		}
		if err != nil {
			return err
		}
		for _, imp := range pkg.Imports {
			if imp == "testing" || strings.HasPrefix(imp, "testing/") {
				t.Errorf("%s: production code imports %s", dir, imp)
			}
			if strings.HasPrefix(imp, module) && !leaf(strings.TrimPrefix(imp, module)) {
				t.Errorf("%s imports %s; identity may only import identity packages and the shared leaves (api, crypto, audit, store) of this module", dir, imp)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// leaf reports whether a module-relative import path is one identity may
// use.
func leaf(p string) bool {
	for _, root := range []string{"identity", "api", "crypto", "audit", "store"} {
		if p == root || strings.HasPrefix(p, root+"/") {
			return true
		}
	}
	return false
}
