package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"runtime/debug"
	"strings"
)

// version is set at build time with -ldflags "-X main.version=...".
var version = "dev"

// errUsage reports a usage error already printed.
var errUsage = errors.New("usage")

// errHelped reports that -h printed a command's help; run returns nil.
var errHelped = errors.New("help shown")

func exitCode(err error) int {
	if errors.Is(err, errUsage) {
		return 2
	}
	return 1
}

// env reads an environment variable.
type env func(string) string

const usageText = `zfaas — a zero-trust Function-as-a-Service platform

Usage:
  zfaas up [flags]                 run the all-in-one platform
  zfaas fn <command> [args]        manage and invoke functions
  zfaas policy <command> [args]    test, push, roll back policy; read decisions
  zfaas policyd [flags]            run the standalone policy decision role
  zfaas audit <command> [args]     export the audit trail; verify an export offline
  zfaas identity <command> [args]  bundle, show, issue-user, issue-policyd
  zfaas worker ls | drain NAME | undrain NAME
                                   list and drain the cluster's workers
  zfaas worker --join ADDR ...     run a worker on this machine (TPM-attested)
  zfaas version                    print the version

Function commands:
  zfaas fn deploy NAME (--dir DIR | --zip FILE) [--runtime R] [--handler H] ...
  zfaas fn ls | get NAME | rm NAME | versions NAME
  zfaas fn alias set NAME ALIAS VERSION [--additional-version V --weight W]
  zfaas fn alias rm NAME ALIAS
  zfaas fn invoke NAME[:QUALIFIER] [--data JSON|@FILE]
  zfaas fn logs NAME [-f] [--since 1h]
  zfaas fn egress NAME

Run 'zfaas <command> -h' for a command's flags.
`

func run(ctx context.Context, args []string, getenv env, stdout, stderr io.Writer) error {
	err := dispatch(ctx, args, getenv, stdout, stderr)
	if errors.Is(err, errHelped) {
		return nil
	}
	return err
}

func dispatch(ctx context.Context, args []string, getenv env, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, usageText)
		return errUsage
	}
	switch args[0] {
	case "up":
		return runUp(ctx, args[1:], getenv, stdout, stderr)
	case "fn", "function":
		return runFn(ctx, args[1:], getenv, stdout, stderr)
	case "policy":
		return runPolicy(ctx, args[1:], getenv, stdout, stderr)
	case "policyd":
		return runPolicyd(ctx, args[1:], getenv, stdout, stderr)
	case "audit":
		return runAudit(ctx, args[1:], getenv, stdout, stderr)
	case "identity":
		return runIdentity(ctx, args[1:], getenv, stdout, stderr)
	case "worker":
		return runWorker(ctx, args[1:], getenv, stdout, stderr)
	case "version", "--version":
		fmt.Fprintf(stdout, "zfaas %s\n", buildVersion())
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usageText)
		return nil
	}
	fmt.Fprintf(stderr, "zfaas: unknown command %q\n\n%s", args[0], usageText)
	return errUsage
}

func buildVersion() string {
	v := version
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			if s.Key == "vcs.revision" && len(s.Value) >= 12 {
				v += " (" + s.Value[:12] + ")"
			}
		}
		v += " " + bi.GoVersion
	}
	return v
}

// parseInterspersed parses flags that may come before, between or after
// positional arguments, and returns the positional ones.
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, err
		}
		args = fs.Args()
		if len(args) == 0 {
			return pos, nil
		}
		if args[0] == "--" {
			return append(pos, args[1:]...), nil
		}
		pos = append(pos, args[0])
		args = args[1:]
	}
}

// newFlagSet returns a FlagSet that prints its usage to w.
func newFlagSet(name, usage string, w io.Writer) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(w)
	fs.Usage = func() {
		fmt.Fprintf(w, "Usage: %s\n\nFlags:\n", strings.TrimSpace(usage))
		fs.PrintDefaults()
	}
	return fs
}

// flagErr turns a flag parse error into errUsage, or errHelped for -h (the
// FlagSet printed either).
func flagErr(err error) error {
	if errors.Is(err, flag.ErrHelp) {
		return errHelped
	}
	return errUsage
}
