package egress

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"maps"
	"net"
	"net/netip"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/miekg/dns"

	"github.com/zfaas/zfaas/bpf"
)

// Applier receives an instance's compiled rules; *bpf.Enforcer is one.
type Applier interface {
	Apply(cgroupID uint64, meta bpf.InstanceMeta, rules []bpf.Rule) error
	Remove(cgroupID uint64) error
}

var _ Applier = (*bpf.Enforcer)(nil)

// Defaults of Config.
const (
	DefaultMinTTL  = 5 * time.Second
	DefaultMaxTTL  = time.Hour
	DefaultTimeout = 2 * time.Second
)

// Config configures New.
type Config struct {
	// Enforcer receives every instance's rules. Required.
	Enforcer Applier
	// Servers are the DNS servers ("host:port") host names are resolved
	// with, tried in order; the nameservers of /etc/resolv.conf when
	// empty.
	Servers []string
	// Always are destinations every instance may reach whatever its
	// policy: the platform's own endpoints (the gateway, the Lambda
	// Runtime API, a resolver the functions must use).
	Always []bpf.Rule
	// MinTTL and MaxTTL bound the TTLs of DNS answers: a name is asked
	// again no sooner than MinTTL (also the retry delay after a failed
	// lookup) and no later than MaxTTL. Defaults DefaultMinTTL and
	// DefaultMaxTTL.
	MinTTL, MaxTTL time.Duration
	// Timeout bounds one DNS query; DefaultTimeout when zero.
	Timeout time.Duration
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Logger receives the controller's logs; discarded when nil.
	Logger *slog.Logger
}

// Controller keeps the rules of every instance of a worker in force,
// re-resolving host names as their answers expire. It is safe for
// concurrent use.
type Controller struct {
	cfg Config
	log *slog.Logger
	now func() time.Time
	dns *dns.Client

	mu    sync.Mutex
	hosts map[string]*hostEntry
	inst  map[uint64]*instanceState
	wake  chan struct{} // Run re-plans when signalled
}

// hostEntry is what DNS said about one name.
type hostEntry struct {
	addrs map[netip.Addr]time.Time // address -> when its last TTL runs out
	next  time.Time                // when to ask again
}

type instanceState struct {
	meta    bpf.InstanceMeta
	rules   []Rule
	applied []bpf.Rule
}

// New validates cfg.
func New(cfg Config) (*Controller, error) {
	if cfg.Enforcer == nil {
		return nil, errors.New("egress controller: Enforcer is required")
	}
	if len(cfg.Servers) == 0 {
		cc, err := dns.ClientConfigFromFile("/etc/resolv.conf")
		if err != nil {
			return nil, fmt.Errorf("egress controller: no DNS servers configured and /etc/resolv.conf unreadable: %w", err)
		}
		for _, s := range cc.Servers {
			cfg.Servers = append(cfg.Servers, net.JoinHostPort(s, cc.Port))
		}
	}
	if cfg.MinTTL <= 0 {
		cfg.MinTTL = DefaultMinTTL
	}
	if cfg.MaxTTL <= 0 {
		cfg.MaxTTL = DefaultMaxTTL
	}
	if cfg.MaxTTL < cfg.MinTTL {
		return nil, fmt.Errorf("egress controller: MaxTTL %v below MinTTL %v", cfg.MaxTTL, cfg.MinTTL)
	}
	if cfg.Timeout <= 0 {
		cfg.Timeout = DefaultTimeout
	}
	now := cfg.Now
	if now == nil {
		now = time.Now
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Controller{
		cfg:   cfg,
		log:   log.With("component", "egress"),
		now:   now,
		dns:   &dns.Client{Timeout: cfg.Timeout},
		hosts: map[string]*hostEntry{},
		inst:  map[uint64]*instanceState{},
		wake:  make(chan struct{}, 1),
	}, nil
}

// Set puts rules in force for the instance in cgroup cgroupID, replacing
// its earlier ones in one step (bpf.Enforcer.Apply). Malformed rules are
// dropped and reported in the returned error together with any other
// failure; the valid ones are applied regardless. Host names not resolved
// yet are resolved first; a name that cannot be resolved allows nothing
// until it can.
func (c *Controller) Set(ctx context.Context, cgroupID uint64, meta bpf.InstanceMeta, rules []Rule) error {
	var errs []error
	valid := make([]Rule, 0, len(rules))
	for i, r := range rules {
		if err := Validate(r); err != nil {
			errs = append(errs, fmt.Errorf("rule %d: %w", i, err))
			continue
		}
		valid = append(valid, r)
	}
	for _, h := range hostsOf(valid) {
		if err := c.ensureHost(ctx, h); err != nil {
			errs = append(errs, err)
		}
	}
	c.mu.Lock()
	st := &instanceState{meta: meta, rules: valid}
	st.applied = c.compileLocked(valid)
	err := c.cfg.Enforcer.Apply(cgroupID, meta, st.applied)
	if err == nil {
		c.inst[cgroupID] = st
	}
	c.mu.Unlock()
	c.signal()
	if err != nil {
		errs = append(errs, fmt.Errorf("apply: %w", err))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("set egress rules of cgroup %d: %w", cgroupID, err)
	}
	return nil
}

// Forget removes the instance's rules (bpf.Enforcer.Remove); call it once
// the instance's processes are gone.
func (c *Controller) Forget(cgroupID uint64) error {
	c.mu.Lock()
	delete(c.inst, cgroupID)
	used := map[string]bool{}
	for _, st := range c.inst {
		for _, h := range hostsOf(st.rules) {
			used[h] = true
		}
	}
	for h := range c.hosts {
		if !used[h] {
			delete(c.hosts, h)
		}
	}
	c.mu.Unlock()
	if err := c.cfg.Enforcer.Remove(cgroupID); err != nil {
		return fmt.Errorf("forget egress rules of cgroup %d: %w", cgroupID, err)
	}
	return nil
}

// Rules returns the kernel rules last applied for the instance.
func (c *Controller) Rules(cgroupID uint64) ([]bpf.Rule, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	st, ok := c.inst[cgroupID]
	if !ok {
		return nil, false
	}
	return slices.Clone(st.applied), true
}

// Refresh asks DNS again about every name whose answer is due, drops
// addresses whose TTL has run out, and re-applies the instances whose
// address sets changed. It returns when the next name falls due (zero
// when no name is known).
func (c *Controller) Refresh(ctx context.Context) (time.Time, error) {
	now := c.now()
	c.mu.Lock()
	var due []string
	for h, e := range c.hosts {
		if !e.next.After(now) {
			due = append(due, h)
		}
	}
	c.mu.Unlock()
	var errs []error
	for _, h := range due {
		if err := c.resolveInto(ctx, h); err != nil {
			errs = append(errs, err)
		}
	}

	c.mu.Lock()
	defer c.mu.Unlock()
	now = c.now()
	for _, e := range c.hosts {
		for a, exp := range e.addrs {
			if !exp.After(now) {
				delete(e.addrs, a)
			}
		}
	}
	for id, st := range c.inst {
		rules := c.compileLocked(st.rules)
		if slices.EqualFunc(rules, st.applied, ruleEqual) {
			continue
		}
		if err := c.cfg.Enforcer.Apply(id, st.meta, rules); err != nil {
			errs = append(errs, fmt.Errorf("re-apply cgroup %d: %w", id, err))
			continue
		}
		c.log.Debug("egress addresses changed", "cgroup_id", id, "rules", len(rules), "revision", st.meta.Revision)
		st.applied = rules
	}
	return c.nextLocked(), errors.Join(errs...)
}

// nextLocked is when the next name falls due or an address runs out.
func (c *Controller) nextLocked() time.Time {
	var next time.Time
	for _, e := range c.hosts {
		ts := []time.Time{e.next}
		for _, exp := range e.addrs {
			ts = append(ts, exp)
		}
		for _, t := range ts {
			if next.IsZero() || t.Before(next) {
				next = t
			}
		}
	}
	return next
}

// Run calls Refresh whenever something falls due, until ctx is done.
func (c *Controller) Run(ctx context.Context) error {
	for {
		next, err := c.Refresh(ctx)
		if err != nil {
			c.log.Warn("egress refresh", "err", err)
		}
		wait := c.cfg.MaxTTL
		if !next.IsZero() {
			wait = max(next.Sub(c.now()), time.Second)
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return ctx.Err()
		case <-c.wake:
		case <-t.C:
		}
		t.Stop()
	}
}

func (c *Controller) signal() {
	select {
	case c.wake <- struct{}{}:
	default:
	}
}

func (c *Controller) ensureHost(ctx context.Context, h string) error {
	c.mu.Lock()
	_, known := c.hosts[h]
	c.mu.Unlock()
	if known {
		return nil
	}
	return c.resolveInto(ctx, h)
}

// resolveInto asks DNS about h and merges the answer into its entry.
func (c *Controller) resolveInto(ctx context.Context, h string) error {
	addrs, ttl, err := c.resolve(ctx, h)
	now := c.now()
	c.mu.Lock()
	defer c.mu.Unlock()
	e := c.hosts[h]
	if e == nil {
		e = &hostEntry{addrs: map[netip.Addr]time.Time{}}
		c.hosts[h] = e
	}
	if err != nil {
		// Keep what is known until it runs out; ask again soon.
		e.next = now.Add(c.cfg.MinTTL)
		return fmt.Errorf("resolve %s: %w", h, err)
	}
	ttl = min(max(ttl, c.cfg.MinTTL), c.cfg.MaxTTL)
	exp := now.Add(ttl)
	for _, a := range addrs {
		if exp.After(e.addrs[a]) {
			e.addrs[a] = exp
		}
	}
	// Ask again a little before the answer runs out, so that a new
	// address is allowed before a client's cache can hand it out.
	e.next = now.Add(max(c.cfg.MinTTL, ttl-ttl/10))
	return nil
}

// resolve asks the servers for the A and AAAA records of h, following
// CNAMEs within the answer. ttl is the smallest TTL on the way to the
// addresses, MinTTL when there are none. A name that does not exist has
// no addresses, not an error.
func (c *Controller) resolve(ctx context.Context, h string) (addrs []netip.Addr, ttl time.Duration, err error) {
	ttl = c.cfg.MaxTTL
	for _, qt := range []uint16{dns.TypeA, dns.TypeAAAA} {
		as, t, err := c.query(ctx, h, qt)
		if err != nil {
			return nil, 0, err
		}
		if len(as) > 0 {
			addrs = append(addrs, as...)
			ttl = min(ttl, t)
		}
	}
	if len(addrs) == 0 {
		ttl = c.cfg.MinTTL
	}
	return addrs, ttl, nil
}

func (c *Controller) query(ctx context.Context, h string, qt uint16) ([]netip.Addr, time.Duration, error) {
	m := new(dns.Msg)
	m.SetQuestion(dns.Fqdn(h), qt)
	m.RecursionDesired = true
	var errs []error
	for _, srv := range c.cfg.Servers {
		r, _, err := c.dns.ExchangeContext(ctx, m, srv)
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", srv, err))
			continue
		}
		switch r.Rcode {
		case dns.RcodeSuccess:
		case dns.RcodeNameError:
			return nil, c.cfg.MinTTL, nil
		default:
			errs = append(errs, fmt.Errorf("%s: %s", srv, dns.RcodeToString[r.Rcode]))
			continue
		}
		addrs, ttl := fromAnswer(dns.Fqdn(h), r.Answer, c.cfg.MaxTTL)
		return addrs, ttl, nil
	}
	return nil, 0, errors.Join(errs...)
}

// fromAnswer picks the addresses of name out of an answer section,
// following its CNAME chain (at most 8 links), and the smallest TTL on
// the way.
func fromAnswer(name string, rrs []dns.RR, maxTTL time.Duration) ([]netip.Addr, time.Duration) {
	ttl := maxTTL
	target := strings.ToLower(name)
	for range 8 {
		next := ""
		for _, rr := range rrs {
			if cn, ok := rr.(*dns.CNAME); ok && strings.EqualFold(rr.Header().Name, target) {
				next = strings.ToLower(cn.Target)
				ttl = min(ttl, time.Duration(rr.Header().Ttl)*time.Second)
			}
		}
		if next == "" {
			break
		}
		target = next
	}
	var out []netip.Addr
	for _, rr := range rrs {
		if !strings.EqualFold(rr.Header().Name, target) {
			continue
		}
		var ip net.IP
		switch v := rr.(type) {
		case *dns.A:
			ip = v.A
		case *dns.AAAA:
			ip = v.AAAA
		default:
			continue
		}
		if a, ok := netip.AddrFromSlice(ip); ok {
			out = append(out, a.Unmap())
			ttl = min(ttl, time.Duration(rr.Header().Ttl)*time.Second)
		}
	}
	return out, ttl
}

// compileLocked expands rules into kernel rules: one per destination
// prefix and port, host names as their current addresses, plus
// Config.Always.
func (c *Controller) compileLocked(rules []Rule) []bpf.Rule {
	out := slices.Clone(c.cfg.Always)
	for _, r := range rules {
		proto := bpf.TCP
		if r.Protocol == "udp" {
			proto = bpf.UDP
		}
		var prefixes []netip.Prefix
		for _, s := range r.CIDRs {
			if p, err := netip.ParsePrefix(s); err == nil {
				prefixes = append(prefixes, p.Masked())
			}
		}
		for _, h := range r.Hosts {
			if e := c.hosts[h]; e != nil {
				for _, a := range slices.SortedFunc(maps.Keys(e.addrs), netip.Addr.Compare) {
					prefixes = append(prefixes, netip.PrefixFrom(a, a.BitLen()))
				}
			}
		}
		for _, p := range prefixes {
			for _, port := range r.Ports {
				out = append(out, bpf.Rule{Prefix: p, Port: uint16(port), Protocol: proto, SNI: slices.Clone(r.SNI)})
			}
		}
	}
	return out
}

func ruleEqual(a, b bpf.Rule) bool {
	return a.Prefix == b.Prefix && a.Port == b.Port && a.Protocol == b.Protocol && slices.Equal(a.SNI, b.SNI)
}

func hostsOf(rules []Rule) []string {
	var hs []string
	for _, r := range rules {
		hs = append(hs, r.Hosts...)
	}
	slices.Sort(hs)
	return slices.Compact(hs)
}
