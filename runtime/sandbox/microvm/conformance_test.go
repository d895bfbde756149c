//go:build linux

package microvm

import (
	"testing"
	"time"

	"github.com/zfaas/zfaas/runtime/sandbox/sandboxtest"
)

// TestConformance runs the driver conformance suite (through a real worker)
// against the micro-VM driver under TCG. The suite reuses warm instances, so
// it boots five VMs: one per function (Lambda mode, HTTP mode, the isolation
// probe) and the Lambda function's replacements after the timeout and the
// crash checks.
func TestConformance(t *testing.T) {
	sandboxtest.Run(t, func(t *testing.T) sandboxtest.Target {
		d, _ := newDriver(t) // skips without root, QEMU or the kernel cache
		return sandboxtest.Target{
			Driver: d, StateDir: d.cfg.StateDir, CgroupParent: d.cfg.CgroupParent,
			// A TCG boot takes seconds (more at the worker's 0.5 CPU for a
			// 128 MB function); the guest runs the function slower too.
			InitTimeout:     60 * time.Second,
			FunctionTimeout: 5 * time.Second,
		}
	})
}
