package main

import (
	"os/exec"
	"syscall"
)

// setDeathSignal makes the kernel kill cmd when this program dies, so an
// interrupted benchmark leaves no OPA server behind.
func setDeathSignal(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
