// Command zfaas-agent is the micro-VM guest agent (PID 1 in the guest) and,
// run on the host as "zfaas-agent host-proxy" with the control socket as
// file descriptor 3, the driver's per-instance socket proxy. Build it
// statically: CGO_ENABLED=0 go build ./runtime/guestagent/cmd/zfaas-agent.
package main

import (
	"fmt"
	"os"

	"github.com/zfaas/zfaas/runtime/guestagent"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "host-proxy" {
		if err := guestagent.RunHostProxy(os.NewFile(3, "ctl")); err != nil {
			fmt.Fprintln(os.Stderr, "zfaas-agent:", err)
			os.Exit(1)
		}
		return
	}
	if os.Getpid() != 1 {
		fmt.Fprintln(os.Stderr, "zfaas-agent: runs as PID 1 in a zfaas micro-VM, or as: zfaas-agent host-proxy")
		os.Exit(2)
	}
	if err := guestagent.RunGuest(); err != nil {
		fmt.Fprintln(os.Stderr, "zfaas-agent:", err)
	}
	guestagent.PowerOff()
}
