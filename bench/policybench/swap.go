package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"maps"
	"path"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"

	"github.com/zfaas/zfaas/policies"
	"github.com/zfaas/zfaas/policyd"
	"github.com/zfaas/zfaas/store"
)

// swapResult holds the swap figures.
type swapResult struct {
	local, remote []time.Duration // push to deciding, on the pushing and the second engine
	baseline      []time.Duration // rego.New(...).PrepareForEval and a first decision
	bundle, tests []time.Duration // parts of a push, for information
	loadedSwaps   []time.Duration // push to deciding on the second engine, under decision load
	quiet, loaded loadRun         // decisions on the second engine without and during pushes
}

// loadRun is a closed loop of decisions on one engine.
type loadRun struct {
	runResult
	revisions int // distinct revisions that decided
}

// swapTimeout bounds one push and its arrival on the second engine.
const swapTimeout = 30 * time.Second

func swapBench(ctx context.Context, c config, dir string, stderr io.Writer) (swapResult, error) {
	var res swapResult
	st, err := store.Open(ctx, store.Config{DataDir: filepath.Join(dir, "store-swap")})
	if err != nil {
		return res, fmt.Errorf("store: %w", err)
	}
	defer st.Close()
	// Two engines on one store, as two nodes would be: a pushes, b follows
	// through its watch of "active". Neither has a default policy.
	swapped := make(chan int64, 64)
	a, err := policyd.New(ctx, policyd.Config{Store: st, Node: "bench-a"})
	if err != nil {
		return res, fmt.Errorf("policyd: %w", err)
	}
	defer closeEngine(a)
	b, err := policyd.New(ctx, policyd.Config{Store: st, Node: "bench-b", OnSwap: func(rev int64) {
		select {
		case swapped <- rev:
		default:
		}
	}})
	if err != nil {
		return res, fmt.Errorf("policyd: %w", err)
	}
	defer closeEngine(b)
	in := cases[0]

	// push pushes the shipped policies from a and returns the time until a,
	// then b, decided with the new revision.
	push := func() (local, remote time.Duration, err error) {
		ctx, cancel := context.WithTimeout(ctx, swapTimeout)
		defer cancel()
		prev, _ := a.Active()
		for len(swapped) > 0 {
			<-swapped
		}
		type arrival struct {
			at  time.Duration
			rev int64
			err error
		}
		arrived := make(chan arrival, 1)
		t0 := time.Now()
		go func() {
			for {
				select {
				case rev := <-swapped:
					if rev <= prev.Revision {
						continue
					}
					d, err := b.Decide(ctx, policyd.EntryInvoke, in.input)
					at := time.Since(t0)
					if err == nil && (d.Revision != rev || !d.Allow) {
						err = fmt.Errorf("second engine decided allow=%v at revision %d after swapping to %d", d.Allow, d.Revision, rev)
					}
					arrived <- arrival{at, rev, err}
					return
				case <-ctx.Done():
					arrived <- arrival{err: fmt.Errorf("the second engine did not swap: %w", ctx.Err())}
					return
				}
			}
		}()
		info, err := a.PushFS(ctx, policies.FS, "policybench")
		if err != nil {
			cancel()
			<-arrived
			return 0, 0, fmt.Errorf("push: %w", err)
		}
		d, err := a.Decide(ctx, policyd.EntryInvoke, in.input)
		local = time.Since(t0)
		if err == nil && (d.Revision != info.Revision || !d.Allow) {
			err = fmt.Errorf("pushing engine decided allow=%v at revision %d after pushing %d", d.Allow, d.Revision, info.Revision)
		}
		r := <-arrived
		if err == nil {
			err = r.err
		}
		if err == nil && r.rev != info.Revision {
			err = fmt.Errorf("second engine swapped to revision %d, pushed %d", r.rev, info.Revision)
		}
		return local, r.at, err
	}

	// Unmeasured: creates the buckets and loads a first revision on both.
	if _, _, err := push(); err != nil {
		return res, fmt.Errorf("first push: %w", err)
	}
	for i := range c.pushes {
		l, r, err := push()
		if err != nil {
			return res, err
		}
		res.local, res.remote = append(res.local, l), append(res.remote, r)
		fmt.Fprintf(stderr, "  push %d: deciding on the pushing engine after %s, on the second engine after %s\n", i+1, ms(l), ms(r))
	}

	// Baseline: compile and prepare the same files directly with OPA's Go
	// API, then decide once.
	src, err := readPolicy(policies.FS)
	if err != nil {
		return res, err
	}
	for range c.pushes {
		d, err := prepareDirect(ctx, src, in)
		if err != nil {
			return res, fmt.Errorf("baseline: %w", err)
		}
		res.baseline = append(res.baseline, d)
		t0 := time.Now()
		if _, err := policyd.BuildBundleFS(policies.FS); err != nil {
			return res, err
		}
		res.bundle = append(res.bundle, time.Since(t0))
		t0 = time.Now()
		if _, err := policyd.Test(ctx, policies.FS); err != nil {
			return res, fmt.Errorf("policy tests: %w", err)
		}
		res.tests = append(res.tests, time.Since(t0))
	}
	fmt.Fprintf(stderr, "  rego PrepareForEval + first decision: %s\n", summary(res.baseline))
	fmt.Fprintf(stderr, "  parts of a push: BuildBundleFS %s; policyd.Test %s\n", summary(res.bundle), summary(res.tests))

	// Decisions on b with no push, then while a pushes again.
	decide := func() (int64, error) {
		d, err := b.Decide(ctx, policyd.EntryInvoke, in.input)
		if err == nil && !d.Allow {
			err = fmt.Errorf("denied: %q", d.Reasons)
		}
		return d.Revision, err
	}
	quiet := make(chan struct{})
	t := time.AfterFunc(c.quiet, func() { close(quiet) })
	res.quiet = decideUntil(ctx, decide, quiet)
	t.Stop()
	stop := make(chan struct{})
	done := make(chan loadRun, 1)
	go func() { done <- decideUntil(ctx, decide, stop) }()
	var perr error
	for range c.pushes {
		_, r, err := push()
		if err != nil {
			perr = err
			break
		}
		res.loadedSwaps = append(res.loadedSwaps, r)
	}
	close(stop)
	res.loaded = <-done
	if perr != nil {
		return res, fmt.Errorf("push under load: %w", perr)
	}
	fmt.Fprintf(stderr, "  second engine, no push:     %s\n", res.quiet)
	fmt.Fprintf(stderr, "  second engine, %d pushes:    %s, %d revisions served; push to deciding there %s\n",
		len(res.loadedSwaps), res.loaded, res.loaded.revisions, summary(res.loadedSwaps))
	if res.loaded.failed > 0 || res.quiet.failed > 0 {
		return res, fmt.Errorf("decisions failed during the swap benchmark: %s / %s", res.quiet.firstErr, res.loaded.firstErr)
	}
	return res, ctx.Err()
}

// decideUntil runs decide in a closed loop until stop is closed, ctx ends,
// one minute passed or 10 million decisions were made.
func decideUntil(ctx context.Context, decide func() (int64, error), stop <-chan struct{}) loadRun {
	stopped := func() bool {
		select {
		case <-stop:
			return true
		default:
			return false
		}
	}
	var r loadRun
	revs := map[int64]bool{}
	t0 := time.Now()
	deadline := t0.Add(time.Minute)
	for i := 0; i < 10_000_000 && !stopped() && ctx.Err() == nil; i++ {
		s := time.Now()
		if s.After(deadline) {
			break
		}
		rev, err := decide()
		d := time.Since(s)
		if err != nil {
			if r.failed == 0 {
				r.firstErr = err.Error()
			}
			r.failed++
			continue
		}
		revs[rev] = true
		r.lat = append(r.lat, d)
	}
	r.elapsed = time.Since(t0)
	r.revisions = len(revs)
	slices.Sort(r.lat)
	return r
}

// policySource is the policy repo as OPA's Go API takes it.
type policySource struct {
	modules map[string]string // path → Rego source, tests included
	data    []byte            // the data document, JSON
}

// readPolicy reads every .rego file of fsys and merges every data.json
// under its directory's path, as `opa run` and `opa build` do.
func readPolicy(fsys fs.FS) (policySource, error) {
	src := policySource{modules: map[string]string{}}
	data := map[string]any{}
	err := fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		raw, err := fs.ReadFile(fsys, p)
		if err != nil {
			return err
		}
		switch {
		case strings.HasSuffix(p, ".rego"):
			src.modules[p] = string(raw)
		case path.Base(p) == "data.json":
			var v any
			if err := json.Unmarshal(raw, &v); err != nil {
				return fmt.Errorf("%s: %w", p, err)
			}
			node := data
			parts := strings.Split(path.Dir(p), "/")
			for i, k := range parts {
				if i == len(parts)-1 {
					node[k] = v
					break
				}
				next, ok := node[k].(map[string]any)
				if !ok {
					next = map[string]any{}
					node[k] = next
				}
				node = next
			}
		}
		return nil
	})
	if err != nil {
		return src, err
	}
	if len(src.modules) == 0 {
		return src, errors.New("no .rego files in the policy repo")
	}
	src.data, err = json.Marshal(data)
	return src, err
}

// prepareDirect times parsing, compiling and preparing the invoke query
// over the same modules and data with rego.New(...).PrepareForEval, plus one
// decision with the prepared query (checked).
func prepareDirect(ctx context.Context, src policySource, in invokeCase) (time.Duration, error) {
	var data map[string]any
	if err := json.Unmarshal(src.data, &data); err != nil {
		return 0, err
	}
	opts := []func(*rego.Rego){rego.Query(policyd.QueryInvoke), rego.Store(inmem.NewFromObject(data))}
	for _, p := range slices.Sorted(maps.Keys(src.modules)) {
		opts = append(opts, rego.Module(p, src.modules[p]))
	}
	t0 := time.Now()
	pq, err := rego.New(opts...).PrepareForEval(ctx)
	if err != nil {
		return 0, err
	}
	rs, err := pq.Eval(ctx, rego.EvalInput(in.input))
	d := time.Since(t0)
	if err != nil {
		return 0, err
	}
	if len(rs) != 1 || len(rs[0].Expressions) != 1 {
		return 0, errors.New("the invoke decision is undefined")
	}
	obj, _ := rs[0].Expressions[0].Value.(map[string]any)
	if allow, _ := obj["allow"].(bool); allow != in.allow {
		return 0, fmt.Errorf("decided %v, want allow=%v", obj, in.allow)
	}
	return d, nil
}
