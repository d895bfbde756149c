// Package egress turns an instance's zfaas.egress policy rules into the
// kernel rules of bpf.Enforcer: CIDRs directly, host names through the
// worker's own DNS resolver, keeping each instance's address allow-list in
// step with the DNS answers and their TTLs (an address stays allowed until
// the TTL of the last answer that named it runs out). It never widens a
// rule: a malformed rule is dropped, a name that does not resolve allows
// nothing.
package egress

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strings"
)

// Rule is one rule of the zfaas.egress policy, as the policy returns it.
type Rule struct {
	CIDRs    []string `json:"cidrs"`
	Hosts    []string `json:"hosts"`
	Ports    []int    `json:"ports"`
	Protocol string   `json:"protocol"` // "tcp" or "udp"
	SNI      []string `json:"sni"`      // tcp only; "*.example.com" allows one label
}

// ErrMalformed wraps every reason a rule is dropped.
var ErrMalformed = errors.New("malformed egress rule")

var (
	dnsName = regexp.MustCompile(`^([a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?\.)*[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	allNum  = regexp.MustCompile(`^[0-9.]+$`)
)

func validHost(h string) bool {
	return len(h) <= 253 && dnsName.MatchString(h) && !allNum.MatchString(h)
}

func validSNI(s string) bool {
	return validHost(strings.TrimPrefix(s, "*."))
}

// Validate reports why r is malformed (an error wrapping ErrMalformed), or
// nil. The checks are those of policies/zfaas/egress/egress.rego.
func Validate(r Rule) error {
	var problems []string
	if r.Protocol != "tcp" && r.Protocol != "udp" {
		problems = append(problems, fmt.Sprintf("protocol must be tcp or udp, got %q", r.Protocol))
	}
	if len(r.Ports) == 0 {
		problems = append(problems, "ports must be a non-empty list")
	}
	for _, p := range r.Ports {
		if p < 1 || p > 65535 {
			problems = append(problems, fmt.Sprintf("port %d is not in 1-65535", p))
		}
	}
	for _, c := range r.CIDRs {
		if _, err := netip.ParsePrefix(c); err != nil {
			problems = append(problems, fmt.Sprintf("cidr %q is not a valid CIDR", c))
		}
	}
	for _, h := range r.Hosts {
		if !validHost(h) {
			problems = append(problems, fmt.Sprintf("host %q is not a valid host name", h))
		}
	}
	for _, s := range r.SNI {
		if !validSNI(s) {
			problems = append(problems, fmt.Sprintf("sni %q is not a valid SNI name", s))
		}
	}
	if len(r.SNI) > 0 && r.Protocol != "tcp" {
		problems = append(problems, `sni needs protocol "tcp"`)
	}
	if len(r.CIDRs)+len(r.Hosts) == 0 {
		problems = append(problems, "rule needs at least one destination in cidrs or hosts")
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: %s", ErrMalformed, strings.Join(problems, "; "))
	}
	return nil
}

var ruleKeys = []string{"cidrs", "hosts", "ports", "protocol", "sni"}

// Decode reads the rules value of the policy (a JSON array of rule
// objects; raw JSON bytes or the decoded []any) and returns the valid
// rules. Each malformed rule is dropped and reported in the errors, with
// its index: a rule is never repaired or widened.
func Decode(v any) ([]Rule, []error) {
	if b, ok := v.([]byte); ok {
		if err := json.Unmarshal(b, &v); err != nil {
			return nil, []error{fmt.Errorf("%w: %w", ErrMalformed, err)}
		}
	}
	list, ok := v.([]any)
	if !ok {
		return nil, []error{fmt.Errorf("%w: rules must be an array, got %T", ErrMalformed, v)}
	}
	var (
		out  []Rule
		errs []error
	)
	for i, item := range list {
		r, err := decodeOne(item)
		if err == nil {
			err = Validate(r)
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("rule %d: %w", i, err))
			continue
		}
		out = append(out, r)
	}
	return out, errs
}

func decodeOne(item any) (Rule, error) {
	obj, ok := item.(map[string]any)
	if !ok {
		return Rule{}, fmt.Errorf("%w: rule must be an object", ErrMalformed)
	}
	for k := range obj {
		if !slices.Contains(ruleKeys, k) {
			return Rule{}, fmt.Errorf("%w: unknown key %q", ErrMalformed, k)
		}
	}
	b, err := json.Marshal(obj)
	if err != nil {
		return Rule{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	var r Rule
	if err := json.Unmarshal(b, &r); err != nil {
		return Rule{}, fmt.Errorf("%w: %w", ErrMalformed, err)
	}
	// json.Unmarshal truncates nothing into ints, but 443.5 must not
	// become 443.
	if ports, ok := obj["ports"].([]any); ok {
		for _, p := range ports {
			if !isInteger(p) {
				return Rule{}, fmt.Errorf("%w: port %v is not an integer", ErrMalformed, p)
			}
		}
	}
	return r, nil
}

// isInteger reports whether a decoded JSON number (float64 from
// encoding/json, json.Number from OPA, or a Go integer) is integral.
func isInteger(v any) bool {
	switch n := v.(type) {
	case float64:
		return n == float64(int64(n))
	case json.Number:
		_, err := n.Int64()
		return err == nil
	case int, int64, int32, uint16:
		return true
	}
	return false
}
