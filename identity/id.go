package identity

import (
	"errors"
	"fmt"
	"regexp"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// ErrInvalidName is returned (wrapped) when a tenant, function, node or user
// name cannot be used as a SPIFFE ID path segment.
var ErrInvalidName = errors.New("invalid identity name")

// Kind says what an ID names.
type Kind string

// The kinds of zfaas SPIFFE IDs.
const (
	KindFunction Kind = "fn"
	KindWorker   Kind = "worker"
	KindGateway  Kind = "gateway"
	KindPolicyd  Kind = "policyd"
	KindUser     Kind = "user"
)

// nameRE is stricter than the SPIFFE segment grammar: lowercase letters,
// digits, '-', '_' and '.', starting with a letter or digit, at most 63
// characters, so names are safe in paths, labels and logs.
var nameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

func checkName(what, s string) error {
	if !nameRE.MatchString(s) {
		return fmt.Errorf("%w: %s %q", ErrInvalidName, what, s)
	}
	return nil
}

// FunctionID returns spiffe://TD/ns/TENANT/fn/NAME, the ID shared by all
// instances of one function.
func FunctionID(td spiffeid.TrustDomain, tenant, name string) (spiffeid.ID, error) {
	if err := checkName("tenant", tenant); err != nil {
		return spiffeid.ID{}, err
	}
	if err := checkName("function", name); err != nil {
		return spiffeid.ID{}, err
	}
	return build(td, "ns", tenant, string(KindFunction), name)
}

// WorkerID returns spiffe://TD/worker/NODE.
func WorkerID(td spiffeid.TrustDomain, node string) (spiffeid.ID, error) {
	return nodeID(td, KindWorker, node)
}

// GatewayID returns spiffe://TD/gateway/NODE.
func GatewayID(td spiffeid.TrustDomain, node string) (spiffeid.ID, error) {
	return nodeID(td, KindGateway, node)
}

// PolicydID returns spiffe://TD/policyd/NODE.
func PolicydID(td spiffeid.TrustDomain, node string) (spiffeid.ID, error) {
	return nodeID(td, KindPolicyd, node)
}

// UserID returns spiffe://TD/user/NAME for people and CI using the CLI.
func UserID(td spiffeid.TrustDomain, name string) (spiffeid.ID, error) {
	return nodeID(td, KindUser, name)
}

func nodeID(td spiffeid.TrustDomain, k Kind, name string) (spiffeid.ID, error) {
	if err := checkName(string(k), name); err != nil {
		return spiffeid.ID{}, err
	}
	return build(td, string(k), name)
}

func build(td spiffeid.TrustDomain, segs ...string) (spiffeid.ID, error) {
	if td.IsZero() {
		return spiffeid.ID{}, fmt.Errorf("%w: empty trust domain", ErrInvalidName)
	}
	id, err := spiffeid.FromSegments(td, segs...)
	if err != nil {
		return spiffeid.ID{}, fmt.Errorf("%w: %v", ErrInvalidName, err)
	}
	return id, nil
}

// Name is a parsed zfaas SPIFFE ID.
type Name struct {
	Kind   Kind
	Tenant string // set for KindFunction only
	Name   string // function, node or user name
}

// Parse splits a zfaas SPIFFE ID into its parts. It returns an error wrapping
// ErrInvalidName for IDs that do not follow the zfaas layout.
func Parse(id spiffeid.ID) (Name, error) {
	var segs []string
	p := id.Path()
	if p == "" {
		return Name{}, fmt.Errorf("%w: %s has no path", ErrInvalidName, id)
	}
	start := 1
	for i := 1; i <= len(p); i++ {
		if i == len(p) || p[i] == '/' {
			segs = append(segs, p[start:i])
			start = i + 1
		}
	}
	switch {
	case len(segs) == 4 && segs[0] == "ns" && segs[2] == string(KindFunction):
		if checkName("tenant", segs[1]) != nil || checkName("function", segs[3]) != nil {
			break
		}
		return Name{Kind: KindFunction, Tenant: segs[1], Name: segs[3]}, nil
	case len(segs) == 2:
		k := Kind(segs[0])
		switch k {
		case KindWorker, KindGateway, KindPolicyd, KindUser:
			if checkName(string(k), segs[1]) == nil {
				return Name{Kind: k, Name: segs[1]}, nil
			}
		}
	}
	return Name{}, fmt.Errorf("%w: %s is not a zfaas ID", ErrInvalidName, id)
}
