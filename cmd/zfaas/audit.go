package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/zfaas/zfaas/audit"
	"github.com/zfaas/zfaas/gateway/client"
)

const auditUsage = `Usage: zfaas audit <command>

Commands:
  export [--since 24h] [--until T] [--kind K,...] [--format jsonl|cef|ocsf] [--out FILE]
                                    stream the audit trail (admins only)
  verify FILE|- --key PUBKEYS [--key ...] [--allow-filtered]
                                    verify a jsonl export offline: chain, gaps,
                                    order, checkpoint signatures; exit 1 at the
                                    first broken link
  keys                              print the checkpoint verifier keys the
                                    platform published
  rotate-key [--data-dir DIR | --key-dir DIR] [--suite standard|gm]
                                    make a new audit signing key (old public keys
                                    stay listed in audit.pub); restart to use it
`

func runAudit(ctx context.Context, args []string, getenv env, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, auditUsage)
		return errUsage
	}
	cmd, args := args[0], args[1:]
	switch cmd {
	case "export":
		return auditExport(ctx, args, getenv, stdout, stderr)
	case "verify":
		return auditVerify(args, stdout, stderr)
	case "keys":
		return auditKeys(ctx, args, getenv, stdout, stderr)
	case "rotate-key":
		return auditRotateKey(args, getenv, stdout, stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, auditUsage)
		return nil
	}
	fmt.Fprintf(stderr, "zfaas audit: unknown command %q\n\n%s", cmd, auditUsage)
	return errUsage
}

func auditExport(ctx context.Context, args []string, getenv env, stdout, stderr io.Writer) error {
	fs := newFlagSet("zfaas audit export", "zfaas audit export [--since 24h] [--until T] [--kind K,...] [--format jsonl|cef|ocsf] [--out FILE]", stderr)
	since := fs.String("since", "", "from: a duration back from now (24h) or an RFC 3339 time (default: the beginning)")
	until := fs.String("until", "", "up to: a duration back from now or an RFC 3339 time (default: now)")
	kinds := fs.String("kind", "", "only these record kinds, comma-separated (decision,policy.*); the chain then has gaps")
	format := fs.String("format", "jsonl", "jsonl (verifiable), cef or ocsf")
	out := fs.String("out", "", "write to FILE (0600) instead of standard output")
	cf := &cliFlags{}
	cf.register(fs)
	if _, err := parseN(fs, args, 0); err != nil {
		return err
	}
	if _, err := audit.ParseFormat(*format); err != nil {
		fmt.Fprintf(stderr, "zfaas audit export: --format %q: want jsonl, cef or ocsf\n", *format)
		return errUsage
	}
	c, err := cf.client(getenv)
	if err != nil {
		return err
	}
	q := client.AuditQuery{Since: *since, Until: *until, Format: *format}
	for k := range strings.SplitSeq(*kinds, ",") {
		if k = strings.TrimSpace(k); k != "" {
			q.Kinds = append(q.Kinds, k)
		}
	}
	if *out == "" {
		return c.AuditExport(ctx, q, stdout)
	}
	tmp := *out + ".part"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return err
	}
	err = c.AuditExport(ctx, q, f)
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err != nil {
		os.Remove(tmp)
		return err
	}
	if err := os.Rename(tmp, *out); err != nil {
		return err
	}
	fmt.Fprintf(stderr, "wrote %s\n", *out)
	return nil
}

// keyFiles is a repeatable --key flag.
type keyFiles []string

func (k *keyFiles) String() string     { return strings.Join(*k, ",") }
func (k *keyFiles) Set(s string) error { *k = append(*k, s); return nil }

// errNotVerified is returned by audit verify for an export that does not
// verify; the report is already printed.
var errNotVerified = errors.New("the audit export does not verify")

func auditVerify(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("zfaas audit verify", "zfaas audit verify FILE|- --key PUBKEYS [--key ...] [--allow-filtered] [--no-signatures] [-o json]", stderr)
	var keys keyFiles
	fs.Var(&keys, "key", "file of trusted verifier keys, one per line (the platform's <data-dir>/audit/audit.pub); repeatable")
	allowFiltered := fs.Bool("allow-filtered", false, "accept a kind-filtered export (its gaps cannot be checked)")
	noSigs := fs.Bool("no-signatures", false, "check the chain only, without any key (checkpoint signatures unchecked)")
	output := fs.String("o", "table", "output format: table or json")
	pos, err := parseN(fs, args, 1)
	if err != nil {
		return err
	}
	if len(keys) == 0 && !*noSigs {
		fmt.Fprintln(stderr, "zfaas audit verify: --key is required (or --no-signatures to check the chain only)")
		return errUsage
	}
	if *output != "table" && *output != "json" {
		fmt.Fprintf(stderr, "zfaas audit verify: -o %q: want table or json\n", *output)
		return errUsage
	}
	var trusted []*audit.Verifier
	for _, kf := range keys {
		raw, err := os.ReadFile(kf)
		if err != nil {
			return err
		}
		vs, err := audit.ParseVerifiers(string(raw))
		if err != nil {
			return fmt.Errorf("%s: %w", kf, err)
		}
		trusted = append(trusted, vs...)
	}
	var in io.Reader = os.Stdin
	if pos[0] != "-" {
		f, err := os.Open(pos[0])
		if err != nil {
			return err
		}
		defer f.Close()
		in = f
	}
	rep, err := audit.Verify(in, trusted...)
	if err != nil && !errors.Is(err, audit.ErrBroken) {
		return err
	}
	ok := rep.Broken == nil && (!rep.Filtered || *allowFiltered)
	if *output == "json" {
		if perr := printJSON(stdout, rep); perr != nil {
			return perr
		}
	} else {
		printVerifyReport(stdout, rep, *allowFiltered)
	}
	if !ok {
		return errNotVerified
	}
	return nil
}

func printVerifyReport(w io.Writer, rep audit.Report, allowFiltered bool) {
	if b := rep.Broken; b != nil {
		fmt.Fprintf(w, "FAIL: first broken link at seq %d (line %d): %s\n", b.Seq, b.Line, b.Reason)
		if rep.Records > 0 {
			fmt.Fprintf(w, "      records %d..%d before it verified\n", rep.First, rep.Last)
		}
		return
	}
	status := "OK"
	if rep.Filtered && !allowFiltered {
		status = "FAIL"
	}
	if rep.Records == 0 {
		fmt.Fprintf(w, "%s: the export of %s holds no records\n", status, rep.Origin)
	} else {
		fmt.Fprintf(w, "%s: %d records, seq %d..%d of %s, %s chain intact\n", status, rep.Records, rep.First, rep.Last, rep.Origin, rep.Hash)
	}
	if rep.SignaturesChecked {
		fmt.Fprintf(w, "    %d checkpoints verified, through size %d, signed by %s\n", rep.Checkpoints, rep.CoveredThrough, orDash(strings.Join(rep.Signers, ", ")))
	} else {
		fmt.Fprintf(w, "    %d checkpoints matched the records; signatures NOT checked (no --key)\n", rep.Checkpoints)
	}
	if rep.Anchor != "" {
		fmt.Fprintf(w, "    start: %s\n", rep.Anchor)
	}
	if rep.Uncovered > 0 {
		fmt.Fprintf(w, "warning: the last %d records are after the last verified checkpoint: chained but not signed\n", rep.Uncovered)
	}
	if rep.Unchecked > 0 {
		fmt.Fprintf(w, "note: %d checkpoints refer to records not in this export (signatures checked)\n", rep.Unchecked)
	}
	if rep.Filtered {
		fmt.Fprintf(w, "%s: the export is filtered by kind (%s): each record's hash is checked, but records may be missing between them\n",
			map[bool]string{true: "note", false: "FAIL"}[allowFiltered], strings.Join(rep.Kinds, ","))
	}
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func auditKeys(ctx context.Context, args []string, getenv env, stdout, stderr io.Writer) error {
	fs := newFlagSet("zfaas audit keys", "zfaas audit keys", stderr)
	_, _, c, err := clientArgs(fs, args, 0, getenv)
	if err != nil {
		return err
	}
	b, err := c.AuditKeys(ctx)
	if err != nil {
		return err
	}
	_, err = stdout.Write(b)
	return err
}

func auditRotateKey(args []string, getenv env, stdout, stderr io.Writer) error {
	fs := newFlagSet("zfaas audit rotate-key", "zfaas audit rotate-key [--data-dir DIR | --key-dir DIR] [--suite standard|gm] [--origin NAME]", stderr)
	dataDir := fs.String("data-dir", defaultUpConfig(getenv).DataDir, "the platform's data directory (keys in DIR/audit)")
	keyDir := fs.String("key-dir", "", "the audit key directory (default DATA-DIR/audit)")
	suite := fs.String("suite", "standard", "standard (ECDSA P-256) or gm (SM2)")
	origin := fs.String("origin", audit.DefaultOrigin, "the log origin (key name)")
	if _, err := parseN(fs, args, 0); err != nil {
		return err
	}
	s, err := audit.ParseSuite(*suite)
	if err != nil {
		fmt.Fprintf(stderr, "zfaas audit rotate-key: %v\n", err)
		return errUsage
	}
	dir := *keyDir
	if dir == "" {
		dir = filepath.Join(*dataDir, "audit")
	}
	v, err := audit.RotateKey(dir, s, *origin, nil)
	if err != nil {
		return err
	}
	fmt.Fprintf(stdout, "new audit key %s (%s); older keys stay listed in %s\n", v, v.Algorithm(), filepath.Join(dir, audit.PublicKeysFile))
	return nil
}
