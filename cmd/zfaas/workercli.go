package main

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/zfaas/zfaas/api"
)

const workerUsage = `Usage: zfaas worker <command>

Commands:
  ls                 list the cluster's workers: admission state, attestation,
                     EK fingerprint, PCR summary, lease, load
  drain NAME         stop placing work on a worker (running invocations finish)
  undrain NAME       place work on a drained worker again
  --join ADDR ...    run the worker role on this machine:
                     ` + workerRoleUsage + `
`

// runWorker runs `zfaas worker`: the client commands (ls, drain,
// undrain).
func runWorker(ctx context.Context, args []string, getenv env, stdout, stderr io.Writer) error {
	if len(args) == 0 {
		fmt.Fprint(stderr, workerUsage)
		return errUsage
	}
	if strings.HasPrefix(args[0], "-") && args[0] != "-h" && args[0] != "--help" {
		return runWorkerRole(ctx, args, getenv, stdout, stderr)
	}
	switch args[0] {
	case "ls":
		fs := newFlagSet("zfaas worker ls", "zfaas worker ls [-o json]", stderr)
		cf, _, c, err := clientArgs(fs, args[1:], 0, getenv)
		if err != nil {
			return err
		}
		ws, err := c.Workers(ctx)
		if err != nil {
			return err
		}
		if cf.output == "json" {
			return printJSON(stdout, ws)
		}
		return printWorkers(stdout, ws, time.Now())
	case "drain", "undrain":
		fs := newFlagSet("zfaas worker "+args[0], "zfaas worker "+args[0]+" NAME", stderr)
		cf, pos, c, err := clientArgs(fs, args[1:], 1, getenv)
		if err != nil {
			return err
		}
		drain := args[0] == "drain"
		w, err := c.DrainWorker(ctx, pos[0], drain)
		if err != nil {
			return err
		}
		if cf.output == "json" {
			return printJSON(stdout, w)
		}
		if drain {
			fmt.Fprintf(stdout, "worker %s is %s: no new invocations are placed there\n", w.Node, w.State)
		} else {
			fmt.Fprintf(stdout, "worker %s is %s\n", w.Node, w.State)
		}
		return nil
	case "help", "-h", "--help":
		fmt.Fprint(stdout, workerUsage)
		return nil
	}
	fmt.Fprintf(stderr, "zfaas worker: unknown command %q\n\n%s", args[0], workerUsage)
	return errUsage
}

func printWorkers(w io.Writer, ws []api.WorkerInfo, now time.Time) error {
	sort.Slice(ws, func(i, j int) bool { return ws[i].Node < ws[j].Node })
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "NODE\tSTATE\tATTESTED\tEK\tPCRS\tLEASE\tLOAD\tADDRESS")
	for _, x := range ws {
		state := x.State
		if !x.Live {
			state += " (lease lapsed)"
		}
		ek := x.EKFingerprint
		if len(ek) > 19 {
			ek = ek[:19] + "…"
		}
		if ek == "" {
			ek = "-"
		}
		lease := "-"
		if !x.LeaseExpiry.IsZero() {
			lease = x.LeaseExpiry.Sub(now).Round(time.Second).String()
		}
		load := fmt.Sprintf("%d inflight, %d inst, %d/%dMB", x.Inflight, x.Instances, x.MemoryMB, x.CapacityMB)
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", x.Node, state, x.AttestMethod, ek, pcrSummary(x.PCRs), lease, load, x.Addr)
	}
	return tw.Flush()
}

// pcrSummary shortens PCR values to "0-7 zero" or "i:abcd…" pairs.
func pcrSummary(p map[string]string) string {
	if len(p) == 0 {
		return "-"
	}
	keys := make([]string, 0, len(p))
	zero := true
	for k, v := range p {
		keys = append(keys, k)
		if strings.Trim(v, "0") != "" {
			zero = false
		}
	}
	sort.Strings(keys)
	if zero {
		return fmt.Sprintf("%d, all zero", len(keys))
	}
	var parts []string
	for _, k := range keys {
		v := p[k]
		if len(v) > 8 {
			v = v[:8]
		}
		parts = append(parts, k+":"+v)
	}
	return strings.Join(parts, " ")
}
