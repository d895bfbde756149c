//go:build linux

package process

import (
	"testing"

	"github.com/zfaas/zfaas/runtime/sandbox/sandboxtest"
)

// TestConformance runs the driver conformance suite (through a real worker)
// against the process driver.
func TestConformance(t *testing.T) {
	sandboxtest.Run(t, func(t *testing.T) sandboxtest.Target {
		d := newTestDriver(t)
		return sandboxtest.Target{Driver: d, StateDir: d.stateDir, CgroupParent: testCgroupParent,
			// Spec.Mounts are bind mounts: rotated SVID files reach the
			// running instance.
			OptIn: []sandboxtest.Capability{sandboxtest.SVIDFiles}}
	})
}
