package policyd

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"sync/atomic"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"github.com/open-policy-agent/opa/v1/ast"
	"github.com/open-policy-agent/opa/v1/bundle"
	"github.com/open-policy-agent/opa/v1/rego"

	policydv1 "github.com/zfaas/zfaas/api/policyd/v1"
	"github.com/zfaas/zfaas/store"
)

// Entry points. Decide serves EntryInvoke, EntryDeploy, EntryAdmission
// (data.zfaas.<entry>.decision → {"allow": bool, "reasons": [string]}) and
// EntryEnvoy (Config.EnvoyQuery → bool or {"allowed": bool, …}).
// EntryEgress is served by EgressRules; EntryMask only masks the decision
// log.
const (
	EntryInvoke    = "invoke"
	EntryDeploy    = "deploy"
	EntryAdmission = "admission"
	EntryEgress    = "egress"
	EntryMask      = "mask"
	EntryEnvoy     = "envoy"
)

// Queries of the fixed entry points.
const (
	QueryInvoke    = "data.zfaas.invoke.decision"
	QueryDeploy    = "data.zfaas.deploy.decision"
	QueryAdmission = "data.zfaas.admission.decision"
	QueryEgress    = "data.zfaas.egress.rules"
	QueryMask      = "data.zfaas.log.mask.mask"
)

// Type aliases of the wire types, so callers need not import the api
// package for them.
type (
	RevisionInfo   = policydv1.RevisionInfo
	Activation     = policydv1.Activation
	NodeStatus     = policydv1.NodeStatus
	Status         = policydv1.Status
	DecisionRecord = policydv1.DecisionRecord
)

// Decision is the outcome of one evaluation.
type Decision struct {
	// ID is unique per decision and names its decision-log record.
	ID string
	// Revision is the policy revision that decided: 0 for the built-in
	// default policy, -1 when none was loaded.
	Revision int64
	// Entry is the entry point.
	Entry string
	// Allow is true only when the policy's result said so explicitly.
	Allow bool
	// Reasons are the policy's reasons, or why the engine denied.
	Reasons []string
	// Result is the policy's raw result (JSON-compatible), nil when
	// undefined. EntryEnvoy callers read headers and bodies from it.
	Result any
}

// revision is one compiled policy revision. It is immutable once published.
type revision struct {
	info RevisionInfo
	// seq is the store revision of the "active" key that activated it (0
	// for the built-in default), so activations apply in order.
	seq     uint64
	queries prepared
}

// Engine evaluates policy decisions against the active revision and keeps
// that revision in step with the store. It is safe for concurrent use.
type Engine struct {
	cfg     Config
	log     *slog.Logger
	kv      *store.KV
	objects jetstream.ObjectStore
	reader  bundleReader
	queries map[string]string

	active atomic.Pointer[revision]
	swapMu sync.Mutex // serialises building and swapping revisions

	// lastErr is the node's last refusal, reported in status.<node>.
	statusMu sync.Mutex
	lastErr  string
	lastErrN int64

	dlog   *decisionLog // nil when the decision log is off
	cancel context.CancelFunc
	wg     sync.WaitGroup
}

// New builds an Engine: it binds the store buckets, loads the active
// revision (or Config.Default when none was pushed yet) and starts watching
// for new ones until ctx ends or Close is called. It fails if the store is
// unreachable or Config.Default does not compile; an active revision that
// does not compile here is refused (logged and reported in status) and the
// engine starts with Config.Default, or with no policy.
func New(ctx context.Context, cfg Config) (*Engine, error) {
	if err := cfg.setDefaults(); err != nil {
		return nil, err
	}
	e := &Engine{
		cfg: cfg,
		log: cfg.Logger.With("component", "policyd", "node", cfg.Node),
		reader: bundleReader{
			maxBundle:   cfg.MaxBundleBytes,
			maxUnpacked: cfg.MaxUnpackedBytes,
		},
		queries: map[string]string{
			EntryInvoke:    QueryInvoke,
			EntryDeploy:    QueryDeploy,
			EntryAdmission: QueryAdmission,
			EntryEgress:    QueryEgress,
			EntryMask:      QueryMask,
			EntryEnvoy:     cfg.EnvoyQuery,
		},
	}
	if len(cfg.VerifyKey) > 0 {
		e.reader.verify = bundle.NewVerificationConfig(map[string]*bundle.KeyConfig{
			cfg.KeyID: {Key: string(cfg.VerifyKey), Algorithm: cfg.KeyAlgorithm},
		}, cfg.KeyID, "", nil)
	}
	if _, err := ast.ParseBody(cfg.EnvoyQuery); err != nil {
		return nil, fmt.Errorf("policyd: envoy query %q: %w", cfg.EnvoyQuery, err)
	}
	var err error
	if e.kv, err = cfg.Store.KV(ctx, Bucket); err != nil {
		return nil, fmt.Errorf("policyd: %w", err)
	}
	if e.objects, err = bundleStore(ctx, cfg.Store); err != nil {
		return nil, err
	}
	bg, cancel := context.WithCancel(context.WithoutCancel(ctx))
	e.cancel = cancel
	if cfg.DecisionLog {
		if e.dlog, err = newDecisionLog(ctx, e); err != nil {
			cancel()
			return nil, err
		}
		e.wg.Go(func() { e.dlog.run(bg) })
	}
	if err := e.initial(ctx); err != nil {
		e.Close(ctx)
		return nil, err
	}
	e.wg.Go(func() { e.watch(bg) })
	go func() {
		select {
		case <-ctx.Done():
			cancel()
		case <-bg.Done():
		}
	}()
	return e, nil
}

// initial loads the active revision, or the default policy.
func (e *Engine) initial(ctx context.Context) error {
	ent, err := e.kv.Get(ctx, keyActive)
	switch {
	case err == nil:
		if aerr := e.activate(ctx, ent); aerr == nil {
			return nil
		}
	case !errors.Is(err, store.ErrNotFound):
		return fmt.Errorf("policyd: read active revision: %w", err)
	}
	if e.cfg.Default == nil {
		e.log.Warn("no policy revision is active and there is no default policy: every decision is a denial until one is pushed")
		e.writeStatus(ctx)
		return nil
	}
	raw, err := BuildBundleFS(e.cfg.Default)
	if err != nil {
		return fmt.Errorf("policyd: default policy: %w", err)
	}
	rev, _, err := e.build(ctx, raw, true)
	if err != nil {
		return fmt.Errorf("policyd: default policy: %w", err)
	}
	rev.info = RevisionInfo{Revision: 0, Digest: digestOf(raw), Size: int64(len(raw)), PushedBy: "built-in default", Time: e.cfg.Now()}
	if e.swap(rev) {
		e.log.Info("serving the built-in default policy", "digest", rev.info.Digest)
	}
	e.writeStatus(ctx)
	return nil
}

// build reads, verifies (unless trusted), compiles and prepares a bundle.
func (e *Engine) build(ctx context.Context, raw []byte, trusted bool) (*revision, *bundle.Bundle, error) {
	b, signed, err := e.reader.read(raw, trusted)
	if err != nil {
		return nil, nil, err
	}
	c, err := compile(b)
	if err != nil {
		return nil, nil, err
	}
	q, err := prepare(ctx, c, b, e.queries)
	if err != nil {
		return nil, nil, err
	}
	rev := &revision{queries: q}
	rev.info.Signed = signed
	if signed {
		rev.info.KeyID = e.cfg.KeyID
	}
	return rev, b, nil
}

// swap publishes rev unless a revision activated later (higher seq) is
// already served. It reports whether rev was published.
func (e *Engine) swap(rev *revision) bool {
	for {
		cur := e.active.Load()
		if cur != nil && cur.seq >= rev.seq && !(cur.seq == 0 && rev.seq == 0) {
			return false
		}
		if e.active.CompareAndSwap(cur, rev) {
			if cur == nil || cur.info.Revision != rev.info.Revision || cur.info.Digest != rev.info.Digest {
				e.log.Info("policy revision active", "revision", rev.info.Revision, "digest", rev.info.Digest)
				if e.cfg.OnSwap != nil {
					e.cfg.OnSwap(rev.info.Revision)
				}
			}
			return true
		}
	}
}

// Active returns the revision this engine serves; ok is false when none is
// loaded.
func (e *Engine) Active() (info RevisionInfo, ok bool) {
	rev := e.active.Load()
	if rev == nil {
		return RevisionInfo{Revision: -1}, false
	}
	return rev.info, true
}

// Node returns the engine's node name.
func (e *Engine) Node() string { return e.cfg.Node }

// Close stops watching and flushes the decision log (bounded by ctx). The
// engine keeps answering Decide with the revision it has; decisions after
// Close are not logged.
func (e *Engine) Close(ctx context.Context) error {
	var err error
	if e.dlog != nil {
		err = e.dlog.Flush(ctx)
	}
	e.cancel()
	done := make(chan struct{})
	go func() { e.wg.Wait(); close(done) }()
	select {
	case <-done:
	case <-ctx.Done():
		return errors.Join(err, ctx.Err())
	}
	return err
}

// Reasons the engine gives when it denies by itself.
const (
	reasonNoPolicy  = "no policy revision is loaded (deny by default)"
	reasonUndefined = "policy result is undefined (deny by default)"
	reasonMalformed = "policy result is malformed (deny by default)"
	reasonEvalError = "policy evaluation failed (deny by default)"
	reasonBadInput  = "input is not JSON data (deny by default)"
)

// Decide evaluates entry point entry (EntryInvoke, EntryDeploy,
// EntryAdmission or EntryEnvoy) on input against the active revision, and
// queues the decision for the decision log. The revision is read once: the
// decision, its record and its mask all come from that one revision.
//
// A result that is undefined or not of the entry point's shape is a denial
// with a nil error. An evaluation failure (timeout, cancelled ctx, bad
// input) is a denial with an error; so is ErrNoPolicy when no revision is
// loaded, and ErrUnknownEntry. The Decision is always filled in, so a caller
// may deny on err != nil or on !Allow alike.
func (e *Engine) Decide(ctx context.Context, entry string, input map[string]any) (Decision, error) {
	d := Decision{ID: e.cfg.NewID(), Revision: -1, Entry: entry}
	if !isDecisionEntry(entry) {
		d.Reasons = []string{"unknown entry point (deny by default)"}
		return d, fmt.Errorf("%w %q", ErrUnknownEntry, entry)
	}
	now := e.cfg.Now()
	rev := e.active.Load()
	if rev == nil {
		d.Reasons = []string{reasonNoPolicy}
		e.record(rev, d, now, nil, "no_policy")
		return d, ErrNoPolicy
	}
	d.Revision = rev.info.Revision
	if input == nil {
		input = map[string]any{}
	}
	val, err := ast.InterfaceToValue(input)
	if err != nil {
		d.Reasons = []string{reasonBadInput}
		e.record(rev, d, now, nil, "bad_input")
		return d, fmt.Errorf("policyd: %s input: %w", entry, err)
	}
	res, defined, err := e.eval(ctx, rev, entry, val, now)
	if err != nil {
		d.Reasons = []string{reasonEvalError}
		e.record(rev, d, now, val, "eval_error")
		return d, fmt.Errorf("policyd: evaluate %s at revision %d: %w", entry, rev.info.Revision, err)
	}
	d.Result = res
	d.Allow, d.Reasons = interpret(entry, res, defined)
	e.record(rev, d, now, val, "")
	return d, nil
}

func isDecisionEntry(entry string) bool {
	switch entry {
	case EntryInvoke, EntryDeploy, EntryAdmission, EntryEnvoy:
		return true
	}
	return false
}

// eval evaluates one prepared query of rev.
func (e *Engine) eval(ctx context.Context, rev *revision, entry string, input ast.Value, now time.Time) (any, bool, error) {
	ctx, cancel := context.WithTimeout(ctx, e.cfg.EvalTimeout)
	defer cancel()
	rs, err := rev.queries[entry].Eval(ctx, rego.EvalParsedInput(input), rego.EvalTime(now))
	if err != nil {
		return nil, false, err
	}
	if len(rs) == 0 || len(rs[0].Expressions) == 0 {
		return nil, false, nil
	}
	return rs[0].Expressions[0].Value, true, nil
}

// interpret applies the deny-by-default reading of a result.
func interpret(entry string, res any, defined bool) (bool, []string) {
	if !defined {
		return false, []string{reasonUndefined}
	}
	if entry == EntryEnvoy {
		switch v := res.(type) {
		case bool:
			return v, nil
		case map[string]any:
			allowed, ok := v["allowed"].(bool)
			if !ok {
				return false, []string{reasonMalformed}
			}
			reasons, _ := stringList(v["reasons"])
			return allowed, reasons
		}
		return false, []string{reasonMalformed}
	}
	obj, ok := res.(map[string]any)
	if !ok {
		return false, []string{reasonMalformed}
	}
	allow, ok := obj["allow"].(bool)
	if !ok {
		return false, []string{reasonMalformed}
	}
	var reasons []string
	if r, present := obj["reasons"]; present {
		if reasons, ok = stringList(r); !ok {
			return false, []string{reasonMalformed}
		}
	}
	return allow, reasons
}

// stringList reads a JSON array (or Rego set) of strings.
func stringList(v any) ([]string, bool) {
	arr, ok := v.([]any)
	if !ok {
		return nil, v == nil
	}
	out := make([]string, 0, len(arr))
	for _, x := range arr {
		s, ok := x.(string)
		if !ok {
			return nil, false
		}
		out = append(out, s)
	}
	return out, true
}

// EgressRules evaluates data.zfaas.egress.rules for a function (input
// describes it, e.g. {"function": {...}}) against the active revision and
// returns the rules with the revision they came from. Undefined rules are
// an empty list: no egress. A result that is not an array (or set) of
// objects is ErrMalformed, and the caller must then allow no egress.
func (e *Engine) EgressRules(ctx context.Context, input map[string]any) ([]map[string]any, int64, error) {
	rev := e.active.Load()
	if rev == nil {
		return nil, -1, ErrNoPolicy
	}
	if input == nil {
		input = map[string]any{}
	}
	val, err := ast.InterfaceToValue(input)
	if err != nil {
		return nil, rev.info.Revision, fmt.Errorf("policyd: egress input: %w", err)
	}
	res, defined, err := e.eval(ctx, rev, EntryEgress, val, e.cfg.Now())
	if err != nil {
		return nil, rev.info.Revision, fmt.Errorf("policyd: evaluate egress at revision %d: %w", rev.info.Revision, err)
	}
	if !defined {
		return []map[string]any{}, rev.info.Revision, nil
	}
	arr, ok := res.([]any)
	if !ok {
		return nil, rev.info.Revision, fmt.Errorf("%w: egress rules are %T, want an array", ErrMalformed, res)
	}
	rules := make([]map[string]any, 0, len(arr))
	for _, x := range arr {
		m, ok := x.(map[string]any)
		if !ok {
			return nil, rev.info.Revision, fmt.Errorf("%w: egress rule is %T, want an object", ErrMalformed, x)
		}
		rules = append(rules, m)
	}
	return rules, rev.info.Revision, nil
}
