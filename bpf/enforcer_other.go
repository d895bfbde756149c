//go:build !linux

package bpf

import (
	"context"
	"fmt"
	"log/slog"
	"runtime"
	"time"
)

// DefaultPinDir is where Open pins programs and maps on Linux.
const DefaultPinDir = "/sys/fs/bpf/zfaas"

// Config configures Open; see the Linux documentation.
type Config struct {
	PinDir       string
	CgroupParent string
	DenyUnknown  bool
	Logger       *slog.Logger
	Now          func() time.Time
}

// Enforcer is unavailable outside Linux.
type Enforcer struct{}

// Open fails with ErrUnsupported outside Linux.
func Open(Config) (*Enforcer, error) {
	return nil, fmt.Errorf("%w: %s", ErrUnsupported, runtime.GOOS)
}

// CgroupID fails with ErrUnsupported outside Linux.
func CgroupID(string) (uint64, error) { return 0, ErrUnsupported }

// Apply fails with ErrUnsupported.
func (*Enforcer) Apply(uint64, InstanceMeta, []Rule) error { return ErrUnsupported }

// Remove fails with ErrUnsupported.
func (*Enforcer) Remove(uint64) error { return ErrUnsupported }

// Rules reports no rules.
func (*Enforcer) Rules(uint64) (InstanceMeta, []Rule, bool) { return InstanceMeta{}, nil, false }

// Instances reports none.
func (*Enforcer) Instances() []uint64 { return nil }

// LostEvents fails with ErrUnsupported.
func (*Enforcer) LostEvents() (uint64, error) { return 0, ErrUnsupported }

// Events returns a closed channel.
func (*Enforcer) Events(context.Context) <-chan DenyEvent {
	ch := make(chan DenyEvent)
	close(ch)
	return ch
}

// Close does nothing.
func (*Enforcer) Close() error { return nil }

// Teardown does nothing.
func (*Enforcer) Teardown() error { return nil }
