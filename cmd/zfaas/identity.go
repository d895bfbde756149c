package main

import (
	"context"
	"fmt"
	"io"
)

const identityUsage = `Usage: zfaas identity <command>

Commands:
  bundle [--format jwks|pem]   print the trust domain's SPIFFE bundle
`

func runIdentity(ctx context.Context, args []string, getenv env, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, identityUsage)
		return errUsage
	}
	switch args[0] {
	case "bundle":
		fs := newFlagSet("zfaas identity bundle", "zfaas identity bundle [--format jwks|pem]", stderr)
		format := fs.String("format", "pem", "jwks (the SPIFFE bundle format) or pem (X.509 authorities)")
		_, _, c, err := clientArgs(fs, args[1:], 0, getenv)
		if err != nil {
			return err
		}
		if *format != "jwks" && *format != "pem" {
			return fmt.Errorf("--format %q: want jwks or pem", *format)
		}
		b, err := c.TrustBundle(ctx, *format)
		if err != nil {
			return err
		}
		_, err = stdout.Write(b)
		return err
	case "help", "-h", "--help":
		fmt.Fprint(stdout, identityUsage)
		return nil
	}
	fmt.Fprintf(stderr, "zfaas identity: unknown command %q\n\n%s", args[0], identityUsage)
	return errUsage
}
