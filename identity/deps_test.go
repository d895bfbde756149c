package identity_test

import (
	"go/build"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestImports enforces the dependency direction: identity packages import
// only the standard library, third-party modules and other identity
// packages from this module, and production code never imports testing.
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
			if strings.HasPrefix(imp, module) && !strings.HasPrefix(imp, module+"identity") {
				t.Errorf("%s imports %s; identity may only import identity packages of this module", dir, imp)
			}
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}
