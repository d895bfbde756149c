//go:build !linux

package process

import (
	"context"
	"fmt"

	"github.com/zfaas/zfaas/runtime/sandbox"
)

// Init returns immediately: there is no sandbox init on this platform.
func Init() {}

// Driver is the process sandbox driver; it is only available on Linux.
type Driver struct{}

// New always fails with ErrUnsupported on this platform.
func New(Config) (*Driver, error) {
	return nil, fmt.Errorf("process driver: %w: requires Linux", ErrUnsupported)
}

// Start always fails with ErrUnsupported on this platform.
func (*Driver) Start(context.Context, sandbox.Spec) (sandbox.Instance, error) {
	return nil, fmt.Errorf("process driver: %w: requires Linux", ErrUnsupported)
}
