package main

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

const identityUsage = `Usage: zfaas identity <command>

Commands:
  bundle [--format jwks|pem]   print the trust domain's SPIFFE bundle
  show                         show the CLI's own SVID (from the client config)
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
	case "show":
		fs := newFlagSet("zfaas identity show", "zfaas identity show", stderr)
		if _, err := parseN(fs, args[1:], 0); err != nil {
			return err
		}
		cc, err := readClientConfig(getenv)
		if err != nil {
			return err
		}
		if cc.Cert == "" {
			fmt.Fprintln(stdout, "no SVID: the CLI uses the plain loopback listener (", cc.Gateway, ")")
			return nil
		}
		svid, err := x509svid.Load(cc.Cert, cc.Key)
		if err != nil {
			return fmt.Errorf("load the CLI's SVID: %w", err)
		}
		leaf := svid.Certificates[0]
		fmt.Fprintf(stdout, "SPIFFE ID:  %s\nExpires:    %s (in %s)\nGateway:    %s (%s)\nFiles:      %s, %s, %s\n",
			svid.ID, leaf.NotAfter.Local().Format(time.DateTime), time.Until(leaf.NotAfter).Round(time.Second),
			cc.GatewayMTLS, cc.GatewayID, cc.Cert, cc.Key, cc.Bundle)
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, identityUsage)
		return nil
	}
	fmt.Fprintf(stderr, "zfaas identity: unknown command %q\n\n%s", args[0], identityUsage)
	return errUsage
}
