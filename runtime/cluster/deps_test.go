package cluster

import (
	"go/build"
	"strings"
	"testing"
)

// TestImports keeps the dependency direction: cluster is used by the
// gateway, the worker and the composition roots, so it imports only shared
// leaves of this module (api, store), and its production code never
// imports testing.
func TestImports(t *testing.T) {
	const module = "github.com/zfaas/zfaas/"
	pkg, err := build.ImportDir(".", 0)
	if err != nil {
		t.Fatal(err)
	}
	leaves := []string{module + "api", module + "store"}
	for _, imp := range pkg.Imports {
		if imp == "testing" || strings.HasPrefix(imp, "testing/") {
			t.Errorf("production code imports %s", imp)
		}
		if strings.HasPrefix(imp, module) && !hasAny(imp, leaves) {
			t.Errorf("imports %s; cluster may import only %v from this module", imp, leaves)
		}
	}
}

func hasAny(imp string, prefixes []string) bool {
	for _, p := range prefixes {
		if imp == p || strings.HasPrefix(imp, p+"/") {
			return true
		}
	}
	return false
}
