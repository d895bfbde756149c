package sandbox

import (
	"errors"
	"fmt"
)

// WithDefaults returns l with its zero fields taken from def.
func (l Limits) WithDefaults(def Limits) Limits {
	if l.MemoryBytes == 0 {
		l.MemoryBytes = def.MemoryBytes
	}
	if l.CPUs == 0 {
		l.CPUs = def.CPUs
	}
	if l.PIDs == 0 {
		l.PIDs = def.PIDs
	}
	if l.NoFile == 0 {
		l.NoFile = def.NoFile
	}
	if l.TmpBytes == 0 {
		l.TmpBytes = def.TmpBytes
	}
	return l
}

// Check rejects negative limits, a CPU limit that is not a number, and
// memory or PID limits below what an instance needs to start (zero fields
// mean the default and pass).
func (l Limits) Check(minMemoryBytes, minPIDs int64) error {
	switch {
	case l.MemoryBytes < 0 || l.CPUs < 0 || l.PIDs < 0 || l.TmpBytes < 0:
		return errors.New("limits must not be negative")
	case l.MemoryBytes != 0 && l.MemoryBytes < minMemoryBytes:
		return fmt.Errorf("memory limit %d below minimum %d", l.MemoryBytes, minMemoryBytes)
	case l.PIDs != 0 && l.PIDs < minPIDs:
		return fmt.Errorf("pids limit %d below minimum %d", l.PIDs, minPIDs)
	case l.CPUs != l.CPUs: // NaN
		return errors.New("cpu limit is not a number")
	}
	return nil
}
