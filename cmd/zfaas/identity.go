package main

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"

	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/zfaas/zfaas/gateway/client"
)

const identityUsage = `Usage: zfaas identity <command>

Commands:
  bundle [--format jwks|pem]   print the trust domain's SPIFFE bundle
  show                         show the CLI's own SVID (from the client config)
  issue-user NAME --out DIR    get an X.509-SVID for spiffe://TD/user/NAME (admins)
  issue-policyd NODE --out DIR get an X.509-SVID for spiffe://TD/policyd/NODE, for
                               a standalone 'zfaas policyd --svid-dir DIR' (admins)
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
			fmt.Fprintf(stdout, "no SVID in the client config; gateway %s\n", cc.Gateway)
			return nil
		}
		svid, err := x509svid.Load(cc.Cert, cc.Key)
		if err != nil {
			return fmt.Errorf("load the CLI's SVID: %w", err)
		}
		leaf := svid.Certificates[0]
		fmt.Fprintf(stdout, "SPIFFE ID:  %s\nExpires:    %s (in %s)\nGateway:    %s (%s)\nFiles:      %s, %s, %s\n",
			svid.ID, leaf.NotAfter.Local().Format(time.DateTime), time.Until(leaf.NotAfter).Round(time.Second),
			cc.Gateway, cc.GatewayID, cc.Cert, cc.Key, cc.Bundle)
		return nil
	case "issue-user", "issue-policyd":
		kind := map[string]string{"issue-user": "users", "issue-policyd": "policyd"}[args[0]]
		fs := newFlagSet("zfaas identity "+args[0], "zfaas identity "+args[0]+" NAME --out DIR", stderr)
		out := fs.String("out", "", "directory for svid.pem, svid-key.pem (0600) and bundle.pem (required)")
		cf, pos, c, err := clientArgs(fs, args[1:], 1, getenv)
		if err != nil {
			return err
		}
		if *out == "" {
			fs.Usage()
			return errUsage
		}
		return issueSVID(ctx, c, cf.conn, kind, pos[0], *out, stdout)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, identityUsage)
		return nil
	}
	fmt.Fprintf(stderr, "zfaas identity: unknown command %q\n\n%s", args[0], identityUsage)
	return errUsage
}

// issueSVID makes a key here (it never leaves this machine), asks the
// gateway to certify it for a user or policy engine (kind "users" or
// "policyd"), and writes the SVID files; for users also a client config.
func issueSVID(ctx context.Context, c *client.Client, conn clientConfig, kind, name, dir string, stdout io.Writer) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	csr, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: name}}, key)
	if err != nil {
		return err
	}
	chain, err := c.IssueSVID(ctx, kind, name, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: csr}))
	if err != nil {
		return err
	}
	bundle, err := c.TrustBundle(ctx, "pem")
	if err != nil {
		return err
	}
	keyDER, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return err
	}
	files := map[string][]byte{
		"svid.pem":     chain,
		"svid-key.pem": pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: keyDER}),
		"bundle.pem":   bundle,
	}
	for f, data := range files {
		if err := os.WriteFile(filepath.Join(dir, f), data, 0o600); err != nil {
			return err
		}
	}
	svid, err := x509svid.Load(filepath.Join(dir, "svid.pem"), filepath.Join(dir, "svid-key.pem"))
	if err != nil {
		return fmt.Errorf("the issued SVID does not load: %w", err)
	}
	if kind != "users" {
		fmt.Fprintf(stdout, "issued %s, valid until %s, in %s\n", svid.ID, svid.Certificates[0].NotAfter.Local().Format(time.DateTime), dir)
		return nil
	}
	abs, err := filepath.Abs(dir)
	if err != nil {
		return err
	}
	// A client config beside the files, so ZFAAS_CLIENT_CONFIG=DIR/config.yaml
	// makes the CLI act as the user.
	cfgPath, err := writeClientConfig(filepath.Join(abs, "config.yaml"), nil, clientConfig{
		Gateway: conn.Gateway, GatewayID: conn.GatewayID,
		Cert: filepath.Join(abs, "svid.pem"), Key: filepath.Join(abs, "svid-key.pem"), Bundle: filepath.Join(abs, "bundle.pem"),
	})
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "issued %s, valid until %s, in %s (client config %s)\n", svid.ID, svid.Certificates[0].NotAfter.Local().Format(time.DateTime), dir, cfgPath)
	return nil
}
