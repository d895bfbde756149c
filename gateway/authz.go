package gateway

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
)

// Caller is who made a request, as the gateway's authenticator established.
type Caller struct {
	// SPIFFEID is the caller's SPIFFE ID; empty for anonymous callers.
	SPIFFEID string `json:"spiffe_id"`
	// Authenticated reports whether the identity was verified.
	Authenticated bool `json:"authenticated"`
	// AuthMethod is how: "x509", "jwt" or "none".
	AuthMethod string `json:"auth_method"`
	// Kind is "user", "function", "worker", "gateway", "policyd" or
	// "anonymous", from the ID's path.
	Kind string `json:"kind"`
	// Tenant and Name come from the ID's path where it has them.
	Tenant string `json:"tenant,omitempty"`
	Name   string `json:"name,omitempty"`
}

// Anonymous is the caller of a request that carried no identity.
var Anonymous = Caller{AuthMethod: "none", Kind: "anonymous"}

// Authenticator establishes the caller of an HTTP request. It returns
// Anonymous (not an error) for a request without credentials, and an error
// for credentials that fail verification.
type Authenticator interface {
	Authenticate(r *http.Request) (Caller, error)
}

// ContextAuthenticator establishes the caller of a gRPC call from its
// context (peer certificates, metadata).
type ContextAuthenticator interface {
	AuthenticateContext(ctx context.Context) (Caller, error)
}

// Decision is a policy decision.
type Decision struct {
	ID       string
	Revision int64
	Allow    bool
	Reasons  []string
}

// Authorizer decides on an entry point ("invoke", "deploy") of the policy
// with the documented input (docs/policy.md). It must deny by default.
type Authorizer interface {
	Decide(ctx context.Context, entry string, input map[string]any) (Decision, error)
}

// ErrUnauthenticated is returned when credentials were presented and failed.
var ErrUnauthenticated = errors.New("unauthenticated")

// deniedError is a policy deny, answered with 403 and the decision id.
type deniedError struct {
	d Decision
}

func (e *deniedError) Error() string {
	return fmt.Sprintf("denied by policy revision %d (decision %s): %s", e.d.Revision, e.d.ID, strings.Join(e.d.Reasons, "; "))
}

// ParseSPIFFEID splits a zfaas SPIFFE ID into kind, tenant and name:
// spiffe://TD/ns/TENANT/fn/NAME is a function; spiffe://TD/user/NAME a
// user; spiffe://TD/{worker,gateway,policyd}/NODE a platform component.
func ParseSPIFFEID(id string) (kind, tenant, name string, ok bool) {
	rest, found := strings.CutPrefix(id, "spiffe://")
	if !found {
		return "", "", "", false
	}
	_, path, found := strings.Cut(rest, "/")
	if !found {
		return "", "", "", false
	}
	seg := strings.Split(path, "/")
	switch {
	case len(seg) == 4 && seg[0] == "ns" && seg[2] == "fn":
		return "function", seg[1], seg[3], true
	case len(seg) == 2 && (seg[0] == "user" || seg[0] == "worker" || seg[0] == "gateway" || seg[0] == "policyd"):
		return seg[0], "", seg[1], true
	}
	return "", "", "", false
}

// CallerFromID builds a Caller for a verified SPIFFE ID.
func CallerFromID(id, method string) Caller {
	c := Caller{SPIFFEID: id, Authenticated: true, AuthMethod: method, Kind: "unknown"}
	if kind, tenant, name, ok := ParseSPIFFEID(id); ok {
		c.Kind, c.Tenant, c.Name = kind, tenant, name
	}
	return c
}

// requestInput is the request part of a policy input.
func requestInput(r *http.Request, protocol string) map[string]any {
	hdr := make(map[string]any, len(r.Header))
	for k, vs := range r.Header {
		hdr[strings.ToLower(k)] = strings.Join(vs, ", ")
	}
	proto, suite := secureState(requestState(r))
	tlsInfo := map[string]any{"protocol": proto, "cipher_suite": suite}
	return map[string]any{
		"protocol": protocol,
		"method":   r.Method,
		"path":     r.URL.Path,
		"headers":  hdr,
		"tls":      tlsInfo,
		"trace_id": traceID(r),
	}
}

func callerInput(c Caller) map[string]any {
	return map[string]any{
		"spiffe_id":     c.SPIFFEID,
		"authenticated": c.Authenticated,
		"auth_method":   c.AuthMethod,
		"kind":          c.Kind,
		"tenant":        c.Tenant,
		"name":          c.Name,
	}
}

// authorize asks the policy and turns a deny into an error.
func (g *Gateway) authorize(ctx context.Context, entry string, input map[string]any) (Decision, error) {
	input["time_ns"] = g.cfg.Now().UnixNano()
	d, err := g.cfg.Authorizer.Decide(ctx, entry, input)
	if err != nil {
		return d, fmt.Errorf("policy %s: %w", entry, err)
	}
	g.recordDecision(entry, input, d)
	if !d.Allow {
		return d, &deniedError{d: d}
	}
	return d, nil
}

// caller authenticates an HTTP request.
func (g *Gateway) caller(r *http.Request) (Caller, error) {
	c, err := g.cfg.Authenticator.Authenticate(r)
	if err != nil {
		return Anonymous, fmt.Errorf("%w: %w", ErrUnauthenticated, err)
	}
	return c, nil
}

// authorizeControl authenticates r and asks the deploy policy about action
// on a function (name may be empty for tenant-wide actions).
func (g *Gateway) authorizeControl(r *http.Request, action, name string) error {
	_, err := g.authenticateControl(r, action, name)
	return err
}

// authenticateControl is authorizeControl for handlers that also need the
// caller (for example to record who pushed a policy).
func (g *Gateway) authenticateControl(r *http.Request, action, name string) (Caller, error) {
	c, err := g.caller(r)
	if err != nil {
		return c, err
	}
	return c, g.authorizeAs(r, c, action, name, nil)
}

// authorizeAs asks the deploy policy about an already authenticated caller.
func (g *Gateway) authorizeAs(r *http.Request, c Caller, action, name string, cfg map[string]any) error {
	input := map[string]any{
		"caller":   callerInput(c),
		"action":   action,
		"function": map[string]any{"tenant": g.cfg.Tenant, "name": name},
		"request":  requestInput(r, "http"),
	}
	if cfg != nil {
		input["config"] = cfg
	}
	_, err := g.authorize(r.Context(), "deploy", input)
	return err
}
