//go:build linux

package container

import (
	"fmt"
	"testing"
	"time"

	"github.com/zfaas/zfaas/runtime/sandbox/sandboxtest"
)

// TestConformance runs the driver conformance suite (through a real worker)
// against the container driver on a private containerd with runc.
func TestConformance(t *testing.T) {
	sandboxtest.Run(t, func(t *testing.T) sandboxtest.Target {
		d, c := newTestDriver(t)
		return sandboxtest.Target{
			Driver: d, StateDir: d.stateDir, CgroupParent: testCgroupParent,
			// Spec.Mounts are bind mounts: rotated SVID files reach the
			// running instance (the delivery meant for Kata).
			OptIn: []sandboxtest.Capability{sandboxtest.SVIDFiles},
			// A shim exits once its last container is deleted.
			Leftovers: func() []string {
				deadline := time.Now().Add(5 * time.Second)
				for len(c.shims()) > 0 && time.Now().Before(deadline) {
					time.Sleep(20 * time.Millisecond)
				}
				var left []string
				for _, pid := range c.shims() {
					left = append(left, fmt.Sprintf("containerd shim %d", pid))
				}
				return left
			},
		}
	})
}
