package egress

import (
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"

	"github.com/zfaas/zfaas/bpf"
)

// zone is a DNS server on loopback whose answers the test changes.
type zone struct {
	mu      sync.Mutex
	records map[string][]dns.RR // by lower-case FQDN
	fail    bool                // answer SERVFAIL
	queries int
}

func newZone(t *testing.T) (*zone, string) {
	t.Helper()
	z := &zone{records: map[string][]dns.RR{}}
	pc, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := &dns.Server{PacketConn: pc, Handler: dns.HandlerFunc(z.serve)}
	started := make(chan struct{})
	srv.NotifyStartedFunc = func() { close(started) }
	go func() { _ = srv.ActivateAndServe() }()
	<-started
	t.Cleanup(func() { _ = srv.Shutdown() })
	return z, pc.LocalAddr().String()
}

func (z *zone) set(rrs ...string) {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.records = map[string][]dns.RR{}
	for _, s := range rrs {
		rr, err := dns.NewRR(s)
		if err != nil {
			panic(err)
		}
		name := strings.ToLower(rr.Header().Name)
		z.records[name] = append(z.records[name], rr)
	}
}

func (z *zone) serve(w dns.ResponseWriter, req *dns.Msg) {
	z.mu.Lock()
	defer z.mu.Unlock()
	z.queries++
	m := new(dns.Msg)
	m.SetReply(req)
	if z.fail {
		m.Rcode = dns.RcodeServerFailure
		_ = w.WriteMsg(m)
		return
	}
	q := req.Question[0]
	name := strings.ToLower(q.Name)
	found := false
	for range 8 {
		rrs := z.records[name]
		if len(rrs) > 0 {
			found = true
		}
		next := ""
		for _, rr := range rrs {
			switch v := rr.(type) {
			case *dns.CNAME:
				m.Answer = append(m.Answer, rr)
				next = strings.ToLower(v.Target)
			default:
				if rr.Header().Rrtype == q.Qtype {
					m.Answer = append(m.Answer, rr)
				}
			}
		}
		if next == "" {
			break
		}
		name = next
	}
	if !found {
		m.Rcode = dns.RcodeNameError
	}
	_ = w.WriteMsg(m)
}

// recorder is the Applier the tests read back.
type recorder struct {
	mu      sync.Mutex
	applied map[uint64][]bpf.Rule
	metas   map[uint64]bpf.InstanceMeta
	calls   int
	removed []uint64
}

func (r *recorder) Apply(id uint64, meta bpf.InstanceMeta, rules []bpf.Rule) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.applied == nil {
		r.applied, r.metas = map[uint64][]bpf.Rule{}, map[uint64]bpf.InstanceMeta{}
	}
	r.applied[id], r.metas[id] = rules, meta
	r.calls++
	return nil
}

func (r *recorder) Remove(id uint64) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.applied, id)
	r.removed = append(r.removed, id)
	return nil
}

func (r *recorder) rules(id uint64) []string {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []string
	for _, x := range r.applied[id] {
		out = append(out, x.String())
	}
	slices.Sort(out)
	return out
}

type clock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *clock) now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *clock) advance(d time.Duration) {
	c.mu.Lock()
	c.t = c.t.Add(d)
	c.mu.Unlock()
}

func newController(t *testing.T, server string, rec Applier, clk *clock, always ...bpf.Rule) *Controller {
	t.Helper()
	c, err := New(Config{Enforcer: rec, Servers: []string{server}, Now: clk.now, MinTTL: 5 * time.Second, Always: always})
	if err != nil {
		t.Fatal(err)
	}
	return c
}

var meta = bpf.InstanceMeta{SPIFFEID: "spiffe://test/ns/acme/fn/echo", Revision: "r1", Instance: "i1"}

func TestSetResolvesHosts(t *testing.T) {
	z, server := newZone(t)
	z.set("api.test. 60 IN A 192.0.2.1", "api.test. 60 IN AAAA 2001:db8::1",
		"cdn.test. 30 IN CNAME edge.cdn.test.", "edge.cdn.test. 300 IN A 198.51.100.7")
	rec := &recorder{}
	clk := &clock{t: time.Unix(1000, 0)}
	gw := bpf.Rule{Prefix: netip.MustParsePrefix("127.0.0.1/32"), Port: 8443, Protocol: bpf.TCP}
	c := newController(t, server, rec, clk, gw)
	err := c.Set(t.Context(), 7, meta, []Rule{
		{Hosts: []string{"api.test"}, Ports: []int{443}, Protocol: "tcp", SNI: []string{"api.test"}},
		{Hosts: []string{"cdn.test", "missing.test"}, CIDRs: []string{"10.1.2.0/24"}, Ports: []int{80, 8080}, Protocol: "tcp"},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"tcp 10.1.2.0/24/80", "tcp 10.1.2.0/24/8080",
		"tcp 127.0.0.1/32/8443",
		"tcp 192.0.2.1/32/443 sni=api.test", "tcp 198.51.100.7/32/80", "tcp 198.51.100.7/32/8080",
		"tcp 2001:db8::1/128/443 sni=api.test",
	}
	slices.Sort(want)
	if got := rec.rules(7); !slices.Equal(got, want) {
		t.Errorf("applied:\n got %q\nwant %q", got, want)
	}
	if rec.metas[7] != meta {
		t.Errorf("meta: got %+v, want %+v", rec.metas[7], meta)
	}
	if got, _ := c.Rules(7); len(got) != len(want) {
		t.Errorf("Rules: got %d, want %d", len(got), len(want))
	}
}

func TestTTLRefresh(t *testing.T) {
	z, server := newZone(t)
	z.set("api.test. 60 IN A 192.0.2.1")
	rec := &recorder{}
	clk := &clock{t: time.Unix(1000, 0)}
	c := newController(t, server, rec, clk)
	if err := c.Set(t.Context(), 1, meta, []Rule{{Hosts: []string{"api.test"}, Ports: []int{443}, Protocol: "tcp"}}); err != nil {
		t.Fatal(err)
	}
	// Answers are asked again at 90% of their TTL; each address stays
	// allowed until the TTL of the last answer naming it runs out.
	steps := []struct {
		name    string
		advance time.Duration
		answer  []string
		fail    bool
		want    []string
	}{
		{"before the refresh", 30 * time.Second, []string{"api.test. 20 IN A 192.0.2.2"}, false, []string{"tcp 192.0.2.1/32/443"}},
		{"refreshed, old address still in its TTL", 24 * time.Second, nil, false, []string{"tcp 192.0.2.1/32/443", "tcp 192.0.2.2/32/443"}},
		{"old address ran out", 6 * time.Second, nil, false, []string{"tcp 192.0.2.2/32/443"}},
		{"failure keeps known addresses", 12 * time.Second, nil, true, []string{"tcp 192.0.2.2/32/443"}},
		{"ran out with the server down", 5 * time.Second, nil, true, nil},
		{"server back", 5 * time.Second, []string{"api.test. 60 IN A 192.0.2.3"}, false, []string{"tcp 192.0.2.3/32/443"}},
	}
	for _, s := range steps {
		clk.advance(s.advance)
		z.mu.Lock()
		z.fail = s.fail
		z.mu.Unlock()
		if s.answer != nil {
			z.set(s.answer...)
		}
		z.mu.Lock()
		queries := z.queries
		z.mu.Unlock()
		_, err := c.Refresh(t.Context())
		z.mu.Lock()
		asked := z.queries > queries
		z.mu.Unlock()
		if s.fail && !asked {
			t.Errorf("%s: the server was not asked", s.name)
		}
		if s.fail != (err != nil) {
			t.Errorf("%s: refresh error %v, want failure %v", s.name, err, s.fail)
		}
		if got := rec.rules(1); !slices.Equal(got, s.want) {
			t.Errorf("%s: got %q, want %q", s.name, got, s.want)
		}
	}
}

func TestRefreshReappliesOnlyChanged(t *testing.T) {
	z, server := newZone(t)
	z.set("a.test. 60 IN A 192.0.2.1", "b.test. 600 IN A 192.0.2.9")
	rec := &recorder{}
	clk := &clock{t: time.Unix(0, 0)}
	c := newController(t, server, rec, clk)
	_ = c.Set(t.Context(), 1, meta, []Rule{{Hosts: []string{"a.test"}, Ports: []int{443}, Protocol: "tcp"}})
	_ = c.Set(t.Context(), 2, meta, []Rule{{Hosts: []string{"b.test"}, Ports: []int{443}, Protocol: "tcp"}})
	calls := rec.calls
	clk.advance(61 * time.Second)
	z.set("a.test. 60 IN A 192.0.2.5", "b.test. 600 IN A 192.0.2.9")
	next, err := c.Refresh(t.Context())
	if err != nil {
		t.Fatal(err)
	}
	if rec.calls != calls+1 {
		t.Errorf("applies: got %d, want 1 (only the instance whose addresses changed)", rec.calls-calls)
	}
	if want := clk.now().Add(54 * time.Second); !next.Equal(want) {
		t.Errorf("next refresh: got %v, want %v", next, want)
	}
	if err := c.Forget(1); err != nil {
		t.Fatal(err)
	}
	if _, ok := c.Rules(1); ok || !slices.Equal(rec.removed, []uint64{1}) {
		t.Errorf("Forget: rules still there or Remove not called (%v)", rec.removed)
	}
}

func TestMalformedRulesDropped(t *testing.T) {
	raw := []byte(`[
		{"cidrs": ["10.0.0.0/8"], "ports": [443], "protocol": "tcp"},
		{"cidrs": ["10.0.0.0/8"], "ports": [443], "protocol": "icmp"},
		{"cidrs": ["10.0.0.0/33"], "ports": [443], "protocol": "tcp"},
		{"hosts": ["Bad_Host"], "ports": [443], "protocol": "tcp"},
		{"hosts": ["1.2.3.4"], "ports": [443], "protocol": "tcp"},
		{"cidrs": ["10.0.0.0/8"], "ports": [], "protocol": "tcp"},
		{"cidrs": ["10.0.0.0/8"], "ports": [70000], "protocol": "tcp"},
		{"cidrs": ["10.0.0.0/8"], "ports": [443.5], "protocol": "tcp"},
		{"cidrs": ["10.0.0.0/8"], "ports": [53], "protocol": "udp", "sni": ["a.test"]},
		{"cidrs": ["10.0.0.0/8"], "ports": [443], "protocol": "tcp", "sni": ["*.*.test"]},
		{"ports": [443], "protocol": "tcp"},
		{"cidrs": ["10.0.0.0/8"], "ports": [443], "protocol": "tcp", "extra": 1},
		"not an object",
		{"hosts": ["ok.test"], "ports": [53], "protocol": "udp"}
	]`)
	rules, errs := Decode(raw)
	if len(rules) != 2 || rules[0].CIDRs[0] != "10.0.0.0/8" || rules[1].Hosts[0] != "ok.test" {
		t.Errorf("valid rules: got %+v", rules)
	}
	if len(errs) != 12 {
		t.Errorf("errors: got %d, want 12: %v", len(errs), errs)
	}
	for _, err := range errs {
		if !errors.Is(err, ErrMalformed) {
			t.Errorf("error %v does not wrap ErrMalformed", err)
		}
	}
	if _, errs := Decode(map[string]any{}); len(errs) != 1 {
		t.Errorf("not an array: got %v", errs)
	}

	// Set drops them too, applies the rest and says why.
	_, server := newZone(t)
	rec := &recorder{}
	c := newController(t, server, rec, &clock{t: time.Unix(0, 0)})
	err := c.Set(context.Background(), 3, meta, []Rule{
		{CIDRs: []string{"192.0.2.0/24"}, Ports: []int{443}, Protocol: "tcp"},
		{CIDRs: []string{"192.0.2.0/24"}, Ports: []int{0}, Protocol: "tcp"},
	})
	if !errors.Is(err, ErrMalformed) {
		t.Errorf("Set: got %v, want ErrMalformed", err)
	}
	if got := rec.rules(3); !slices.Equal(got, []string{"tcp 192.0.2.0/24/443"}) {
		t.Errorf("applied: got %q", got)
	}
}

// TestDecodeNumberTypes: ports arrive as float64 (encoding/json) or
// json.Number (OPA results); both decode, a fraction in either is refused.
func TestDecodeNumberTypes(t *testing.T) {
	for _, p := range []any{float64(443), json.Number("443"), 443} {
		rules, errs := Decode([]any{map[string]any{"cidrs": []any{"10.0.0.0/8"}, "ports": []any{p}, "protocol": "tcp"}})
		if len(errs) != 0 || len(rules) != 1 || rules[0].Ports[0] != 443 {
			t.Errorf("port %#v: rules %v errs %v", p, rules, errs)
		}
	}
	for _, p := range []any{443.5, json.Number("443.5"), "443"} {
		if rules, errs := Decode([]any{map[string]any{"cidrs": []any{"10.0.0.0/8"}, "ports": []any{p}, "protocol": "tcp"}}); len(rules) != 0 || len(errs) != 1 {
			t.Errorf("port %#v: rules %v errs %v, want it dropped", p, rules, errs)
		}
	}
}
