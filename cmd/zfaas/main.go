// Command zfaas is the one zfaas binary: the all-in-one platform (`zfaas
// up`), and the client commands (`zfaas fn ...`).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/zfaas/zfaas/runtime/sandbox/process"
)

func main() {
	// When started as a sandbox's init, this sets up the sandbox and execs
	// the function; it never returns then.
	process.Init()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	err := run(ctx, os.Args[1:], os.Getenv, os.Stdout, os.Stderr)
	stop()
	if err != nil {
		if err != errUsage {
			fmt.Fprintln(os.Stderr, "zfaas:", err)
		}
		os.Exit(exitCode(err))
	}
}
