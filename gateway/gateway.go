// Package gateway is the front door of zfaas: the HTTP and gRPC APIs that
// deploy functions (versions, aliases) and invoke them, with bounded
// bodies, stable JSON errors, capacity limits and metrics.
//
// The gateway resolves what to run (function, qualifier → version) and hands
// the invocation to an Invoker (the local worker in the all-in-one shape). It
// never runs function code itself and never sends internal error text to a
// client.
package gateway

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"math/rand/v2"
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/zfaas/zfaas/api"
	"github.com/zfaas/zfaas/runtime/archive"
	"github.com/zfaas/zfaas/store"
)

// Invoker runs invocations; the local worker implements it.
type Invoker interface {
	Invoke(ctx context.Context, inv api.Invocation) (*api.InvocationResult, error)
}

// Evicter is optionally implemented by an Invoker to drop idle instances of
// a deleted function version.
type Evicter interface {
	Evict(v api.Version)
}

// Config configures a Gateway. Zero values take the documented defaults.
type Config struct {
	// Store holds state and packages. Required.
	Store *store.Store
	// Invoker runs invocations. Required.
	Invoker Invoker
	// Authorizer decides every invocation and control-plane change.
	// Required: the gateway never serves without a policy.
	Authorizer Authorizer
	// Authenticator establishes HTTP callers; default Anonymous for all
	// (which a deny-by-default policy refuses).
	Authenticator Authenticator
	// GRPCAuthenticator establishes gRPC callers; default Anonymous.
	GRPCAuthenticator ContextAuthenticator
	// Policy, when set, serves the policy administration API
	// (/v1/policy/...).
	Policy PolicyAdmin
	// Bundle, when set, serves the trust bundle at /v1/identity/bundle.
	Bundle TrustBundler
	// Users, when set, issues SVIDs for users at /v1/identity/users/{name}
	// and for policy engines at /v1/identity/policyd/{name}.
	Users SVIDIssuer
	// Egress, when set, serves the egress rules in force at
	// /v1/functions/{name}/egress.
	Egress EgressInspector
	// Workers, when set, lists and drains workers at /v1/workers.
	Workers WorkerAdmin
	// Audit, when set, serves the audit trail at /v1/audit/export and its
	// checkpoint verifier keys at /v1/audit/keys.
	Audit AuditLog
	// Logger is the gateway's log; default discards.
	Logger *slog.Logger
	// Tenant is the tenant of every request until caller identities land;
	// default "default".
	Tenant string
	// MaxPayloadBytes caps invocation request bodies; default 6 MiB (Lambda's
	// synchronous limit).
	MaxPayloadBytes int64
	// Archive bounds uploaded packages; default archive.DefaultLimits()
	// (50 MiB compressed, 250 MiB unpacked).
	Archive archive.Limits
	// DefaultMaxConcurrency applies to functions deployed without one;
	// default 32.
	DefaultMaxConcurrency int
	// WaitBudget is how long an invocation waits for a free instance before
	// 429; default 1 s.
	WaitBudget time.Duration
	// TempDir spools uploads; default os.TempDir().
	TempDir string
	// Registerer receives the gateway's Prometheus metrics; default a new
	// registry (see Gateway.Gatherer).
	Registerer prometheus.Registerer
	// Rand returns a float in [0,1) for weighted alias routing; default
	// math/rand/v2.
	Rand func() float64
	// Now is the clock; default time.Now.
	Now func() time.Time
	// LogRetention is how long function logs are kept; default 24 h.
	LogRetention time.Duration
}

// Gateway serves the zfaas APIs. It is safe for concurrent use.
type Gateway struct {
	cfg      Config
	log      *slog.Logger
	reg      *Registry
	metrics  *Metrics
	logs     *LogStore
	gatherer prometheus.Gatherer
	mux      *http.ServeMux
}

// New builds a Gateway; ctx bounds background watches.
func New(ctx context.Context, cfg Config) (*Gateway, error) {
	if cfg.Store == nil || cfg.Invoker == nil || cfg.Authorizer == nil {
		return nil, errors.New("gateway: Store, Invoker and Authorizer are required")
	}
	if cfg.Authenticator == nil {
		cfg.Authenticator = anonymousAuth{}
	}
	if cfg.GRPCAuthenticator == nil {
		cfg.GRPCAuthenticator = anonymousAuth{}
	}
	if cfg.Tenant == "" {
		cfg.Tenant = "default"
	}
	if !api.ValidName(cfg.Tenant) {
		return nil, fmt.Errorf("gateway: invalid tenant %q", cfg.Tenant)
	}
	if cfg.MaxPayloadBytes <= 0 {
		cfg.MaxPayloadBytes = 6 << 20
	}
	if cfg.Archive == (archive.Limits{}) {
		cfg.Archive = archive.DefaultLimits()
	}
	if cfg.DefaultMaxConcurrency <= 0 {
		cfg.DefaultMaxConcurrency = 32
	}
	if cfg.WaitBudget <= 0 {
		cfg.WaitBudget = time.Second
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Float64
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.LogRetention <= 0 {
		cfg.LogRetention = 24 * time.Hour
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	g := &Gateway{cfg: cfg, log: log.With("component", "gateway")}
	reg, err := NewRegistry(ctx, cfg.Store, cfg.Now)
	if err != nil {
		return nil, fmt.Errorf("gateway: %w", err)
	}
	g.reg = reg
	if cfg.Registerer == nil {
		r := prometheus.NewRegistry()
		cfg.Registerer, g.gatherer = r, r
		g.cfg.Registerer = r
	} else if gt, ok := cfg.Registerer.(prometheus.Gatherer); ok {
		g.gatherer = gt
	}
	g.metrics, err = newMetrics(cfg.Registerer)
	if err != nil {
		return nil, fmt.Errorf("gateway: metrics: %w", err)
	}
	g.logs, err = newLogStore(ctx, cfg.Store, cfg.LogRetention, g.log)
	if err != nil {
		return nil, fmt.Errorf("gateway: logs: %w", err)
	}
	g.routes()
	return g, nil
}

// Registry returns the function registry.
func (g *Gateway) Registry() *Registry { return g.reg }

// Observer returns the metrics the worker reports instance lifecycle to.
func (g *Gateway) Observer() *Metrics { return g.metrics }

// LogSink returns the store the worker writes function output to.
func (g *Gateway) LogSink() *LogStore { return g.logs }

// Gatherer returns the registry the gateway's metrics live in, when known.
func (g *Gateway) Gatherer() prometheus.Gatherer { return g.gatherer }

// ServeHTTP serves the gateway's HTTP API.
func (g *Gateway) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h, pattern := g.mux.Handler(r)
	if pattern != "" {
		g.mux.ServeHTTP(w, r) // sets the path values Handler does not
		return
	}
	// Let the mux decide between 404 and 405 (it sets Allow), but answer
	// with the JSON error body every other error has.
	rec := &statusRecorder{header: w.Header()}
	h.ServeHTTP(rec, r)
	if rec.status == http.StatusMethodNotAllowed {
		g.writeError(w, r, errf(http.StatusMethodNotAllowed, CodeMethodNotAllowed, "method not allowed"))
		return
	}
	g.writeError(w, r, errf(http.StatusNotFound, CodeNotFound, "no such endpoint"))
}

// statusRecorder keeps a handler's status and headers and drops its body.
type statusRecorder struct {
	header http.Header
	status int
}

func (s *statusRecorder) Header() http.Header         { return s.header }
func (s *statusRecorder) Write(p []byte) (int, error) { return len(p), nil }
func (s *statusRecorder) WriteHeader(code int)        { s.status = code }

func (g *Gateway) routes() {
	m := http.NewServeMux()
	m.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		writeJSON(w, http.StatusOK, map[string]string{"status": "ok"})
	})
	m.HandleFunc("GET /v1/functions", g.handleList)
	m.HandleFunc("GET /v1/functions/{name}", g.handleGet)
	m.HandleFunc("DELETE /v1/functions/{name}", g.handleDelete)
	m.HandleFunc("POST /v1/functions/{name}/versions", g.handleDeploy)
	m.HandleFunc("GET /v1/functions/{name}/versions", g.handleVersions)
	m.HandleFunc("GET /v1/functions/{name}/versions/{version}", g.handleVersion)
	m.HandleFunc("PUT /v1/functions/{name}/aliases/{alias}", g.handleSetAlias)
	m.HandleFunc("DELETE /v1/functions/{name}/aliases/{alias}", g.handleDeleteAlias)
	m.HandleFunc("POST /v1/functions/{target}/invoke", g.handleInvoke)
	m.HandleFunc("GET /v1/functions/{name}/logs", g.handleLogs)
	if g.cfg.Egress != nil {
		m.HandleFunc("GET /v1/functions/{name}/egress", g.handleEgress)
	}
	if g.cfg.Workers != nil {
		m.HandleFunc("GET /v1/workers", g.handleWorkers)
		m.HandleFunc("POST /v1/workers/{name}/drain", g.handleDrainWorker)
		m.HandleFunc("POST /v1/workers/{name}/undrain", g.handleDrainWorker)
	}
	if g.cfg.Bundle != nil {
		m.HandleFunc("GET /v1/identity/bundle", g.handleBundle)
	}
	if g.cfg.Users != nil {
		m.HandleFunc("POST /v1/identity/{kind}/{name}", g.handleIssue)
	}
	if g.cfg.Policy != nil {
		m.HandleFunc("POST /v1/policy/revisions", g.handlePolicyPush)
		m.HandleFunc("GET /v1/policy/status", g.handlePolicyStatus)
		m.HandleFunc("POST /v1/policy/rollback", g.handlePolicyRollback)
		m.HandleFunc("GET /v1/policy/decisions", g.handlePolicyDecisions)
	}
	if g.cfg.Audit != nil {
		m.HandleFunc("GET /v1/audit/export", g.handleAuditExport)
		m.HandleFunc("GET /v1/audit/keys", g.handleAuditKeys)
	}
	m.HandleFunc("/function/{name}", g.handleOpenFaaS)
	m.HandleFunc("/function/{name}/{rest...}", g.handleOpenFaaS)
	g.mux = m
}

type anonymousAuth struct{}

func (anonymousAuth) Authenticate(*http.Request) (Caller, error)          { return Anonymous, nil }
func (anonymousAuth) AuthenticateContext(context.Context) (Caller, error) { return Anonymous, nil }
