package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/zfaas/zfaas/api"
	"github.com/zfaas/zfaas/audit"
	"github.com/zfaas/zfaas/bpf"
	"github.com/zfaas/zfaas/gateway"
	"github.com/zfaas/zfaas/identity"
	"github.com/zfaas/zfaas/policyd"
	"github.com/zfaas/zfaas/runtime/egress"
	"github.com/zfaas/zfaas/runtime/worker"
)

// egressBinding enforces the zfaas.egress policy on every instance: it
// evaluates the function's rules, hands them to the controller (which
// resolves host names and writes the kernel maps), re-applies them to every
// live instance when a policy revision activates, and turns the kernel's
// deny events into log lines and audit records.
type egressBinding struct {
	enf    *bpf.Enforcer
	ctl    *egress.Controller
	policy *policyd.Engine
	td     spiffeid.TrustDomain
	log    *slog.Logger
	audit  *audit.Log // nil when the trail is off
	// always are the platform addresses every instance may reach (the
	// gateway's listeners), whatever its policy says.
	always []egress.Rule

	// denied counts kernel denies by function and reason.
	denied *prometheus.CounterVec

	mu   sync.Mutex
	live map[uint64]worker.EgressSpec // cgroup id → instance
}

// newDeniedCounter registers zfaas_egress_denied_total on reg.
func newDeniedCounter(reg prometheus.Registerer) *prometheus.CounterVec {
	c := prometheus.NewCounterVec(prometheus.CounterOpts{
		Name: "zfaas_egress_denied_total",
		Help: "Connections, datagrams, sockets and TLS server names the kernel refused to function instances, by function and reason.",
	}, []string{"function", "reason"})
	reg.MustRegister(c)
	return c
}

// EgressView implements gateway.EgressInspector.
func (e *egressBinding) EgressView(ctx context.Context, tenant, function string) (api.EgressView, error) {
	v := api.EgressView{Function: function, Rules: []map[string]any{}, Instances: []api.EgressInstance{}}
	raw, rev, err := e.policy.EgressRules(ctx, map[string]any{"function": map[string]any{"tenant": tenant, "name": function}})
	if err != nil {
		return v, fmt.Errorf("egress rules: %w", err)
	}
	v.Revision = rev
	v.Rules = raw
	e.mu.Lock()
	var cgids []uint64
	for cgid, spec := range e.live {
		if spec.Tenant == tenant && spec.Function == function {
			cgids = append(cgids, cgid)
		}
	}
	e.mu.Unlock()
	for _, cgid := range cgids {
		meta, rules, ok := e.enf.Rules(cgid)
		if !ok {
			continue
		}
		in := api.EgressInstance{Instance: meta.Instance, Revision: meta.Revision, InForce: []string{}}
		for _, r := range rules {
			in.InForce = append(in.InForce, r.String())
		}
		v.Instances = append(v.Instances, in)
	}
	slices.SortFunc(v.Instances, func(a, b api.EgressInstance) int { return strings.Compare(a.Instance, b.Instance) })
	return v, nil
}

var _ worker.Egress = (*egressBinding)(nil)

// platformRules allows TCP to each address.
func platformRules(addrs []netip.AddrPort) []egress.Rule {
	var out []egress.Rule
	for _, a := range addrs {
		out = append(out, egress.Rule{
			CIDRs:    []string{netip.PrefixFrom(a.Addr(), a.Addr().BitLen()).String()},
			Ports:    []int{int(a.Port())},
			Protocol: "tcp",
		})
	}
	return out
}

// Attach implements worker.Egress.
func (e *egressBinding) Attach(ctx context.Context, spec worker.EgressSpec) (func(), error) {
	cgid, err := bpf.CgroupID(spec.CgroupDir)
	if err != nil {
		return nil, err
	}
	if err := e.apply(ctx, cgid, spec); err != nil {
		_ = e.ctl.Forget(cgid)
		return nil, err
	}
	e.mu.Lock()
	e.live[cgid] = spec
	e.mu.Unlock()
	return func() {
		e.mu.Lock()
		delete(e.live, cgid)
		e.mu.Unlock()
		if err := e.ctl.Forget(cgid); err != nil {
			e.log.Warn("egress: remove an instance's rules", "instance", spec.InstanceID, "err", err)
		}
	}, nil
}

// apply puts the active revision's rules for spec's function in force. A
// policy that cannot be evaluated allows nothing but the platform.
func (e *egressBinding) apply(ctx context.Context, cgid uint64, spec worker.EgressSpec) error {
	id, err := identity.FunctionID(e.td, spec.Tenant, spec.Function)
	if err != nil {
		return err
	}
	raw, rev, err := e.policy.EgressRules(ctx, map[string]any{"function": map[string]any{"tenant": spec.Tenant, "name": spec.Function}})
	var rules []egress.Rule
	if err != nil {
		e.log.Error("egress: the policy's rules could not be evaluated; the instance may reach only the platform", "function", spec.Function, "revision", rev, "err", err)
	} else {
		items := make([]any, len(raw))
		for i, r := range raw {
			items[i] = r
		}
		var bad []error
		rules, bad = egress.Decode(items)
		for _, b := range bad {
			e.log.Warn("egress: rule dropped", "function", spec.Function, "revision", rev, "err", b)
		}
	}
	rules = append(rules, e.always...)
	rules = append(rules, platformRules(spec.Platform)...)
	meta := bpf.InstanceMeta{SPIFFEID: id.String(), Revision: strconv.FormatInt(rev, 10), Instance: spec.InstanceID}
	if err := e.ctl.Set(ctx, cgid, meta, rules); err != nil {
		if errors.Is(err, egress.ErrMalformed) {
			e.log.Warn("egress: rules dropped", "function", spec.Function, "err", err)
			return nil
		}
		return fmt.Errorf("egress rules for %s: %w", spec.Function, err)
	}
	return nil
}

// onSwap re-applies the new revision's rules to every live instance, each
// in one step.
func (e *egressBinding) onSwap(rev int64) {
	e.mu.Lock()
	live := make(map[uint64]worker.EgressSpec, len(e.live))
	for k, v := range e.live {
		live[k] = v
	}
	e.mu.Unlock()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for cgid, spec := range live {
		if err := e.apply(ctx, cgid, spec); err != nil {
			e.log.Error("egress: could not switch an instance to the new revision", "instance", spec.InstanceID, "revision", rev, "err", err)
		}
	}
}

// events logs every kernel deny and records it in the audit trail.
func (e *egressBinding) events(ctx context.Context) error {
	for ev := range e.enf.Events(ctx) {
		dst := ""
		if ev.Dst.IsValid() {
			dst = ev.Dst.String()
		}
		if _, _, name, ok := gateway.ParseSPIFFEID(ev.Meta.SPIFFEID); ok {
			e.denied.WithLabelValues(name, ev.Reason.String()).Inc()
		} else {
			e.denied.WithLabelValues("", ev.Reason.String()).Inc()
		}
		e.log.Info("egress denied", "spiffe_id", ev.Meta.SPIFFEID, "instance", ev.Meta.Instance, "revision", ev.Meta.Revision,
			"reason", ev.Reason.String(), "dst", dst, "sni", ev.SNI, "pid", ev.PID)
		if e.audit == nil {
			continue
		}
		rev, _ := strconv.ParseInt(ev.Meta.Revision, 10, 64)
		d := map[string]any{"reason": ev.Reason.String(), "pid": int64(ev.PID), "instance": ev.Meta.Instance}
		if dst != "" {
			d["dst"] = dst
		}
		if ev.SNI != "" {
			d["sni"] = ev.SNI
		}
		_ = e.audit.Append(audit.Record{Kind: audit.KindEgressDeny, Time: ev.Time, Actor: ev.Meta.SPIFFEID, PolicyRevision: rev,
			Subject: dst, Action: "egress", Outcome: audit.OutcomeDeny, Details: d})
	}
	return nil
}
