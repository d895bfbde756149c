package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	policydv1 "github.com/zfaas/zfaas/api/policyd/v1"
	"github.com/zfaas/zfaas/gateway/client"
	"github.com/zfaas/zfaas/policyd"
	"github.com/zfaas/zfaas/store"
)

const policyUsage = `Usage: zfaas policy <command>

Commands:
  test DIR                          run the policy's _test.rego tests locally
  build DIR --out FILE              pack DIR into an OPA bundle (optionally signed)
  push DIR|BUNDLE.tar.gz            test, push and activate a new policy revision
  status                            show the active revision and each node's view
  rollback REVISION                 make an older revision active again
  decisions [--since 1h] [--deny]   show decision-log records
  reset --data-dir DIR              break glass: with the platform stopped, forget
                                    the active revision so the shipped policy serves
`

func runPolicy(ctx context.Context, args []string, getenv env, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, policyUsage)
		return errUsage
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "test":
		return policyTest(ctx, args, stdout, stderr)
	case "build":
		return policyBuild(args, stdout, stderr)
	case "push":
		return policyPush(ctx, args, getenv, stdout, stderr)
	case "status":
		return policyStatus(ctx, args, getenv, stdout, stderr)
	case "rollback":
		return policyRollback(ctx, args, getenv, stdout, stderr)
	case "decisions":
		return policyDecisions(ctx, args, getenv, stdout, stderr)
	case "reset":
		return policyReset(ctx, args, getenv, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, policyUsage)
		return nil
	}
	fmt.Fprintf(stderr, "zfaas policy: unknown command %q\n\n%s", cmd, policyUsage)
	return errUsage
}

func policyTest(ctx context.Context, args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("zfaas policy test", "zfaas policy test DIR [-v] [-o json]", stderr)
	verbose := fs.Bool("v", false, "list every test, not only failures")
	output := fs.String("o", "table", "output format: table or json")
	pos, err := parseN(fs, args, 1)
	if err != nil {
		return err
	}
	rep, err := runLocalTests(ctx, pos[0])
	if rep == nil {
		return err
	}
	if *output == "json" {
		if perr := printJSON(stdout, rep); perr != nil {
			return perr
		}
		return err
	}
	printTestReport(stdout, rep, *verbose)
	return err
}

// runLocalTests runs dir's tests; the report is nil when none ran.
func runLocalTests(ctx context.Context, dir string) (*policyd.TestReport, error) {
	if fi, err := os.Stat(dir); err != nil {
		return nil, err
	} else if !fi.IsDir() {
		return nil, fmt.Errorf("%s is not a directory", dir)
	}
	rep, err := policyd.Test(ctx, os.DirFS(dir))
	var re *policyd.RefusedError
	if errors.As(err, &re) && errors.Is(err, policyd.ErrTestsFailed) {
		return &rep, fmt.Errorf("%d of %d policy tests failed", rep.Failed+rep.Errored, len(rep.Results))
	}
	if err != nil {
		return nil, err
	}
	return &rep, nil
}

func printTestReport(w io.Writer, rep *policyd.TestReport, verbose bool) {
	for _, r := range rep.Results {
		if r.Outcome == policyd.OutcomePass && !verbose {
			continue
		}
		fmt.Fprintf(w, "%s %s.%s (%s)", strings.ToUpper(r.Outcome), r.Package, r.Name, r.Location)
		if r.Error != "" {
			fmt.Fprintf(w, ": %s", r.Error)
		}
		fmt.Fprintf(w, " %s\n", r.Duration.Round(time.Microsecond))
		if r.Output != "" && r.Outcome != policyd.OutcomePass {
			for line := range strings.SplitSeq(strings.TrimRight(r.Output, "\n"), "\n") {
				fmt.Fprintf(w, "    %s\n", line)
			}
		}
	}
	total := len(rep.Results) - rep.Skipped
	status := "PASS"
	if !rep.OK() {
		status = "FAIL"
	}
	fmt.Fprintf(w, "%s: %d/%d", status, rep.Passed, total)
	if rep.Skipped > 0 {
		fmt.Fprintf(w, " (%d skipped)", rep.Skipped)
	}
	fmt.Fprintln(w)
}

// signFlags are the bundle signing flags of build and push.
type signFlags struct {
	key, keyID, alg string
}

func (s *signFlags) register(fs *flag.FlagSet) {
	fs.StringVar(&s.key, "signing-key", "", "PEM private key (RSA or ECDSA) to sign the bundle with")
	fs.StringVar(&s.keyID, "key-id", policyd.DefaultKeyID, "key id written into the signature")
	fs.StringVar(&s.alg, "signing-alg", "", "JWS algorithm (default from the key: RS256, ES256, ES384, ES512)")
}

func (s *signFlags) sign(raw []byte) ([]byte, error) {
	if s.key == "" {
		return raw, nil
	}
	pemKey, err := os.ReadFile(s.key)
	if err != nil {
		return nil, err
	}
	return policyd.SignBundle(raw, pemKey, s.keyID, s.alg)
}

func policyBuild(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("zfaas policy build", "zfaas policy build DIR --out FILE [--signing-key PEM]", stderr)
	out := fs.String("out", "", "bundle file to write (tar.gz)")
	var sf signFlags
	sf.register(fs)
	pos, err := parseN(fs, args, 1)
	if err != nil {
		return err
	}
	if *out == "" {
		fmt.Fprintln(stderr, "zfaas policy build: --out is required")
		return errUsage
	}
	raw, err := policyd.BuildBundle(pos[0])
	if err != nil {
		return err
	}
	if raw, err = sf.sign(raw); err != nil {
		return err
	}
	if err := os.WriteFile(*out, raw, 0o644); err != nil {
		return err
	}
	signed := ""
	if sf.key != "" {
		signed = ", signed"
	}
	fmt.Fprintf(stdout, "wrote %s (%d bytes%s)\n", *out, len(raw), signed)
	return nil
}

func policyPush(ctx context.Context, args []string, getenv env, stdout, stderr io.Writer) error {
	fs := newFlagSet("zfaas policy push", "zfaas policy push DIR|BUNDLE.tar.gz [--signing-key PEM] [flags]", stderr)
	var sf signFlags
	sf.register(fs)
	cf, pos, c, err := clientArgs(fs, args, 1, getenv)
	if err != nil {
		return err
	}
	src := pos[0]
	fi, err := os.Stat(src)
	if err != nil {
		return err
	}
	var raw []byte
	if fi.IsDir() {
		// Test here first: the gateway runs them too, but this prints the
		// whole report.
		rep, err := runLocalTests(ctx, src)
		if err != nil {
			if rep != nil {
				printTestReport(stderr, rep, false)
			}
			return err
		}
		if raw, err = policyd.BuildBundle(src); err != nil {
			return err
		}
	} else if raw, err = os.ReadFile(src); err != nil {
		return err
	}
	if raw, err = sf.sign(raw); err != nil {
		return err
	}
	info, err := c.PushPolicy(ctx, bytes.NewReader(raw))
	if err != nil {
		return err
	}
	if cf.output == "json" {
		return printJSON(stdout, info)
	}
	fmt.Fprintf(stdout, "policy revision %d active (%s, %d bytes, %d tests passed%s)\n",
		info.Revision, short(info.Digest), info.Size, info.Tests.Passed, signedNote(info))
	return nil
}

func signedNote(info policydv1.RevisionInfo) string {
	if info.Signed {
		return ", signed by key " + info.KeyID
	}
	return ""
}

func policyStatus(ctx context.Context, args []string, getenv env, stdout, stderr io.Writer) error {
	fs := newFlagSet("zfaas policy status", "zfaas policy status [-o json]", stderr)
	cf, _, c, err := clientArgs(fs, args, 0, getenv)
	if err != nil {
		return err
	}
	st, err := c.PolicyStatus(ctx)
	if err != nil {
		return err
	}
	if cf.output == "json" {
		return printJSON(stdout, st)
	}
	if a := st.Active; a != nil {
		fmt.Fprintf(stdout, "active revision %d (%s) by %s at %s (%s)\n\n", a.Revision, short(a.Digest), a.PushedBy, a.Time.Local().Format(time.DateTime), a.Action)
	} else {
		fmt.Fprint(stdout, "no revision pushed: nodes serve their built-in default policy\n\n")
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tREVISION\tDIGEST\tUPDATED\tERROR")
	for _, n := range st.Nodes {
		rev := strconv.FormatInt(n.Revision, 10)
		switch n.Revision {
		case 0:
			rev = "0 (default)"
		case -1:
			rev = "none"
		}
		msg := "-"
		if n.Error != "" {
			msg = fmt.Sprintf("refused revision %d: %s", n.ErrorRevision, n.Error)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\n", n.Node, rev, short(n.Digest), n.Time.Local().Format(time.DateTime), msg)
	}
	return tw.Flush()
}

func policyRollback(ctx context.Context, args []string, getenv env, stdout, stderr io.Writer) error {
	fs := newFlagSet("zfaas policy rollback", "zfaas policy rollback REVISION", stderr)
	cf, pos, c, err := clientArgs(fs, args, 1, getenv)
	if err != nil {
		return err
	}
	n, err := strconv.ParseInt(pos[0], 10, 64)
	if err != nil || n < 1 {
		fmt.Fprintf(stderr, "zfaas policy rollback: revision %q: want a number ≥ 1\n", pos[0])
		return errUsage
	}
	info, err := c.RollbackPolicy(ctx, n)
	if err != nil {
		return err
	}
	if cf.output == "json" {
		return printJSON(stdout, info)
	}
	fmt.Fprintf(stdout, "policy revision %d active again (%s, pushed by %s at %s)\n", info.Revision, short(info.Digest), info.PushedBy, info.Time.Local().Format(time.DateTime))
	return nil
}

func policyDecisions(ctx context.Context, args []string, getenv env, stdout, stderr io.Writer) error {
	fs := newFlagSet("zfaas policy decisions", "zfaas policy decisions [--since 1h] [--deny] [--entry E] [--limit N] [-o json]", stderr)
	since := fs.String("since", "1h", "how far back: a duration (1h, 30m) or an RFC 3339 time")
	deny := fs.Bool("deny", false, "only denials")
	entry := fs.String("entry", "", "only this entry point: invoke, deploy, admission or envoy")
	limit := fs.Int("limit", 0, "stop after N records (0: the server's maximum, 100000)")
	cf, _, c, err := clientArgs(fs, args, 0, getenv)
	if err != nil {
		return err
	}
	q := client.DecisionQuery{Since: *since, DenyOnly: *deny, Entry: *entry, Limit: *limit}
	if cf.output == "json" {
		enc := json.NewEncoder(stdout)
		return c.PolicyDecisions(ctx, q, func(r policydv1.DecisionRecord) { _ = enc.Encode(r) })
	}
	tw := tabwriter.NewWriter(stdout, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "TIME\tENTRY\tRESULT\tREVISION\tCALLER\tREASONS\tDECISION")
	err = c.PolicyDecisions(ctx, q, func(r policydv1.DecisionRecord) {
		result := "allow"
		if !r.Allow {
			result = "deny"
		}
		caller := r.Caller
		if caller == "" {
			caller = "-"
		}
		reasons := strings.Join(r.Reasons, "; ")
		if reasons == "" {
			reasons = "-"
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\n", r.Time.Local().Format(time.DateTime), r.Entry, result, r.Revision, caller, reasons, r.DecisionID)
	})
	if ferr := tw.Flush(); err == nil {
		err = ferr
	}
	return err
}

// policyReset is the break-glass recovery from a revision that locks every
// administrator out: with the platform stopped it opens the store in the
// data directory and forgets the active revision, so the next start serves
// the shipped policy. Pushed revisions stay and can be rolled back to.
func policyReset(ctx context.Context, args []string, getenv env, stdout, stderr io.Writer) error {
	fs := newFlagSet("zfaas policy reset", "zfaas policy reset --data-dir DIR (with the platform stopped)", stderr)
	dataDir := fs.String("data-dir", defaultUpConfig(getenv).DataDir, "the platform's data directory")
	if _, err := parseN(fs, args, 0); err != nil {
		return err
	}
	natsDir := filepath.Join(*dataDir, "nats")
	if _, err := os.Stat(natsDir); err != nil {
		return fmt.Errorf("no platform state in %s: %w", *dataDir, err)
	}
	st, err := store.Open(ctx, store.Config{DataDir: natsDir, Logger: slog.New(slog.DiscardHandler)})
	if err != nil {
		return fmt.Errorf("open the store (is the platform still running?): %w", err)
	}
	defer st.Close()
	if err := policyd.ResetActive(ctx, st); err != nil {
		return err
	}
	fmt.Fprintln(stdout, "no policy revision is active any more: the next start serves the shipped policy")
	return nil
}
