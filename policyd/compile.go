package policyd

import (
	"context"
	"fmt"
	"io/fs"
	"slices"
	"sort"
	"time"

	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/open-policy-agent/opa/v1/rego"
	"github.com/open-policy-agent/opa/v1/storage/inmem"
	"github.com/open-policy-agent/opa/v1/tester"

	policydv1 "github.com/zfaas/zfaas/api/policyd/v1"
)

// deniedBuiltins are left out of the capabilities policies compile against:
// a policy must not reach the network (http.send, net.lookup_ip_addr) or
// read the engine's environment (opa.runtime). Using one is a compile error.
var deniedBuiltins = []string{"http.send", "net.lookup_ip_addr", "opa.runtime"}

func capabilities() *ast.Capabilities {
	c := ast.CapabilitiesForThisVersion()
	c.Builtins = slices.DeleteFunc(c.Builtins, func(b *ast.Builtin) bool {
		return slices.Contains(deniedBuiltins, b.Name)
	})
	return c
}

func modulesOf(b *bundle.Bundle) map[string]*ast.Module {
	mods := make(map[string]*ast.Module, len(b.Modules))
	for _, m := range b.Modules {
		mods[m.Path] = m.Parsed
	}
	return mods
}

// compile compiles a bundle's modules for evaluation.
func compile(b *bundle.Bundle) (*ast.Compiler, error) {
	c := ast.NewCompiler().
		WithCapabilities(capabilities()).
		WithEnablePrintStatements(false)
	if c.Compile(modulesOf(b)); c.Failed() {
		return nil, refused(ErrCompile, "%v", c.Errors)
	}
	return c, nil
}

// prepared is one compiled revision's prepared queries, by entry point.
type prepared map[string]*rego.PreparedEvalQuery

// prepare prepares every query once against the compiled policy and the
// bundle's data.
func prepare(ctx context.Context, c *ast.Compiler, b *bundle.Bundle, queries map[string]string) (prepared, error) {
	data := b.Data
	if data == nil {
		data = map[string]any{}
	}
	st := inmem.NewFromObject(data)
	out := make(prepared, len(queries))
	for entry, q := range queries {
		pq, err := rego.New(
			rego.Query(q),
			rego.Compiler(c),
			rego.Store(st),
			rego.StrictBuiltinErrors(false),
		).PrepareForEval(ctx)
		if err != nil {
			return nil, refused(ErrCompile, "entry point %s (%s): %v", entry, q, err)
		}
		out[entry] = &pq
	}
	return out, nil
}

// Test outcomes of a TestResult.
const (
	OutcomePass  = "pass"
	OutcomeFail  = "fail"
	OutcomeError = "error"
	OutcomeSkip  = "skip"
)

// TestReport is the result of running a policy's tests.
type TestReport struct {
	policydv1.TestSummary
	// Results are sorted by package and name.
	Results []TestResult `json:"results"`
}

// OK reports whether no test failed or raised an error.
func (r *TestReport) OK() bool { return r.Failed == 0 && r.Errored == 0 }

// TestResult is the outcome of one test rule.
type TestResult struct {
	Package  string        `json:"package"`
	Name     string        `json:"name"`
	Location string        `json:"location,omitempty"`
	Outcome  string        `json:"outcome"`
	Error    string        `json:"error,omitempty"`
	Output   string        `json:"output,omitempty"`
	Duration time.Duration `json:"duration"`
}

// Test runs the _test.rego tests (test_* rules) of the policy directory
// fsys with OPA's tester, as `opa test` would, against the same
// capabilities the engine compiles with. A policy that does not compile is
// a *RefusedError wrapping ErrCompile; failed or erroring tests return the
// full report and a *RefusedError wrapping ErrTestsFailed.
func Test(ctx context.Context, fsys fs.FS) (TestReport, error) {
	b, err := readFSBundle(fsys, DefaultMaxUnpackedBytes)
	if err != nil {
		return TestReport{}, err
	}
	if _, err := compile(b); err != nil {
		return TestReport{}, err
	}
	return runTests(ctx, b, DefaultTestTimeout)
}

// runTests runs a bundle's tests; see Test.
func runTests(ctx context.Context, b *bundle.Bundle, timeout time.Duration) (TestReport, error) {
	data := b.Data
	if data == nil {
		data = map[string]any{}
	}
	c := ast.NewCompiler().
		WithCapabilities(capabilities()).
		WithEnablePrintStatements(true)
	ch, err := tester.NewRunner().
		SetCompiler(c).
		SetStore(inmem.NewFromObject(data)).
		SetModules(modulesOf(b)).
		SetTimeout(timeout).
		CapturePrintOutput(true).
		RaiseBuiltinErrors(true).
		RunTests(ctx, nil)
	if err != nil {
		return TestReport{}, refused(ErrCompile, "%v", err)
	}
	var rep TestReport
	for r := range ch {
		tr := TestResult{Package: r.Package, Name: r.Name, Duration: r.Duration, Output: string(r.Output)}
		if r.Location != nil {
			tr.Location = fmt.Sprintf("%s:%d", r.Location.File, r.Location.Row)
		}
		switch {
		case r.Error != nil:
			tr.Outcome, tr.Error = OutcomeError, r.Error.Error()
			rep.Errored++
		case r.Skip:
			tr.Outcome = OutcomeSkip
			rep.Skipped++
		case r.Fail:
			tr.Outcome = OutcomeFail
			rep.Failed++
		default:
			tr.Outcome = OutcomePass
			rep.Passed++
		}
		rep.Results = append(rep.Results, tr)
	}
	if err := ctx.Err(); err != nil {
		return rep, fmt.Errorf("policyd: tests: %w", err)
	}
	sort.Slice(rep.Results, func(i, j int) bool {
		a, b := rep.Results[i], rep.Results[j]
		if a.Package != b.Package {
			return a.Package < b.Package
		}
		return a.Name < b.Name
	})
	if !rep.OK() {
		return rep, testsRefused(&rep)
	}
	return rep, nil
}
