//go:build !linux

package container

import (
	"context"
	"fmt"

	"github.com/zfaas/zfaas/runtime/sandbox"
)

// Driver is the container sandbox driver; it is only available on Linux.
type Driver struct{}

// New always fails with ErrUnsupported on this platform.
func New(Config) (*Driver, error) {
	return nil, fmt.Errorf("container driver: %w: requires Linux", ErrUnsupported)
}

// Start always fails with ErrUnsupported on this platform.
func (*Driver) Start(context.Context, sandbox.Spec) (sandbox.Instance, error) {
	return nil, fmt.Errorf("container driver: %w: requires Linux", ErrUnsupported)
}

// Close does nothing on this platform.
func (*Driver) Close() error { return nil }
