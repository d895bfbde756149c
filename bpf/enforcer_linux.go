//go:build linux

package bpf

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/link"
	"github.com/cilium/ebpf/ringbuf"
	"github.com/cilium/ebpf/rlimit"
)

// DefaultPinDir is where Open pins programs and maps when Config.PinDir is
// empty.
const DefaultPinDir = "/sys/fs/bpf/zfaas"

const componentName = "bpf"

// Config configures Open.
type Config struct {
	// PinDir is the bpffs directory holding the pinned links and maps;
	// DefaultPinDir when empty. A worker restarted with the same PinDir
	// re-adopts what is pinned there. /sys/fs/bpf is mounted when it is
	// not a bpffs yet.
	PinDir string
	// CgroupParent is the absolute path of the cgroup v2 directory whose
	// child directories are the instances (for the process sandbox:
	// <cgroup2 mount>/<its CgroupParent>). The programs are attached
	// there, once. Required.
	CgroupParent string
	// DenyUnknown refuses every connection and every non-TCP/UDP socket of
	// an instance cgroup (a child of CgroupParent) that has no rules, so an
	// instance is never open before its first Apply. Processes outside
	// CgroupParent are never affected.
	DenyUnknown bool
	// Logger receives the enforcer's logs; discarded when nil.
	Logger *slog.Logger
	// Now stamps deny events; time.Now when nil.
	Now func() time.Time
}

// Enforcer owns the egress programs and their maps. Its methods are safe
// for concurrent use.
type Enforcer struct {
	cfg   Config
	log   *slog.Logger
	now   func() time.Time
	objs  objects
	links map[string]link.Link
	skMsg bool // sk_msg attached to sni_socks
	// lsmProg is the socket_create LSM program, nil when the host has no
	// BPF LSM or refused it.
	lsmProg *ebpf.Program
	rcu     *ebpf.Map
	rcuVal  *ebpf.Map
	done    chan struct{}

	mu      sync.Mutex
	closed  bool
	inst    map[uint64]*instance
	readers []*ringbuf.Reader

	metaMu sync.RWMutex
	metas  map[metaKey]InstanceMeta
	gone   []metaKey // metas of removed instances, oldest first
}

// objects are the loaded maps and the programs but the LSM one (loaded
// on its own by loadLSM).
type objects struct {
	egressMaps
	EgressConnect4   *ebpf.Program `ebpf:"egress_connect4"`
	EgressConnect6   *ebpf.Program `ebpf:"egress_connect6"`
	EgressSendmsg4   *ebpf.Program `ebpf:"egress_sendmsg4"`
	EgressSendmsg6   *ebpf.Program `ebpf:"egress_sendmsg6"`
	EgressSockCreate *ebpf.Program `ebpf:"egress_sock_create"`
	EgressSockops    *ebpf.Program `ebpf:"egress_sockops"`
	EgressSkMsg      *ebpf.Program `ebpf:"egress_sk_msg"`
	EgressSkb        *ebpf.Program `ebpf:"egress_skb"`
}

func (o *objects) Close() {
	for _, p := range []*ebpf.Program{o.EgressConnect4, o.EgressConnect6, o.EgressSendmsg4, o.EgressSendmsg6,
		o.EgressSockCreate, o.EgressSockops, o.EgressSkMsg, o.EgressSkb} {
		if p != nil {
			p.Close()
		}
	}
	_ = o.egressMaps.Close()
}

// instance is what the maps hold for one cgroup.
type instance struct {
	gen  uint32
	meta InstanceMeta
	c    compiled
}

type metaKey struct {
	cgid uint64
	gen  uint32
}

// maxGoneMetas bounds how many removed instances' metadata is kept for
// late deny events.
const maxGoneMetas = 1024

// attachment is one program attached at the cgroup parent (or as LSM).
type attachment struct {
	name   string
	prog   func(*objects) *ebpf.Program
	attach ebpf.AttachType
	lsm    bool
}

var attachments = []attachment{
	{"connect4", func(o *objects) *ebpf.Program { return o.EgressConnect4 }, ebpf.AttachCGroupInet4Connect, false},
	{"connect6", func(o *objects) *ebpf.Program { return o.EgressConnect6 }, ebpf.AttachCGroupInet6Connect, false},
	{"sendmsg4", func(o *objects) *ebpf.Program { return o.EgressSendmsg4 }, ebpf.AttachCGroupUDP4Sendmsg, false},
	{"sendmsg6", func(o *objects) *ebpf.Program { return o.EgressSendmsg6 }, ebpf.AttachCGroupUDP6Sendmsg, false},
	{"sock_create", func(o *objects) *ebpf.Program { return o.EgressSockCreate }, ebpf.AttachCGroupInetSockCreate, false},
	{"sockops", func(o *objects) *ebpf.Program { return o.EgressSockops }, ebpf.AttachCGroupSockOps, false},
	{"skb_egress", func(o *objects) *ebpf.Program { return o.EgressSkb }, ebpf.AttachCGroupInetEgress, false},
	{"socket_create", nil, ebpf.AttachLSMMac, true}, // Enforcer.lsmProg
}

// Open loads the programs, attaches them at cfg.CgroupParent and pins
// everything under cfg.PinDir. When PinDir already holds an enforcer's
// pins (a restarted worker), Open re-adopts them: the pinned maps and
// their rules are kept, the attached programs are replaced by this
// binary's without a gap, and the instances are read back from the maps.
// Failures for lack of privileges or kernel support wrap ErrUnsupported.
func Open(cfg Config) (*Enforcer, error) {
	if cfg.PinDir == "" {
		cfg.PinDir = DefaultPinDir
	}
	if !filepath.IsAbs(cfg.PinDir) || !filepath.IsAbs(cfg.CgroupParent) {
		return nil, fmt.Errorf("open egress enforcer: PinDir %q and CgroupParent %q must be absolute paths", cfg.PinDir, cfg.CgroupParent)
	}
	cfg.PinDir = filepath.Clean(cfg.PinDir)
	cfg.CgroupParent = filepath.Clean(cfg.CgroupParent)
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", componentName)
	now := cfg.Now
	if now == nil {
		now = time.Now
	}

	parentID, level, err := cgroupParentInfo(cfg.CgroupParent)
	if err != nil {
		return nil, fmt.Errorf("open egress enforcer: %w", err)
	}
	if err := preparePinDir(cfg.PinDir); err != nil {
		return nil, fmt.Errorf("open egress enforcer: %w", err)
	}
	if err := rlimit.RemoveMemlock(); err != nil {
		return nil, fmt.Errorf("open egress enforcer: %w: %w", ErrUnsupported, err)
	}

	spec, err := loadEgress()
	if err != nil {
		return nil, fmt.Errorf("open egress enforcer: %w", err)
	}
	for name, v := range map[string]any{
		egressVarInstanceLevel: uint32(level + 1),
		egressVarParentCgid:    parentID,
		egressVarDenyUnknown:   boolByte(cfg.DenyUnknown),
	} {
		if err := spec.Variables[name].Set(v); err != nil {
			return nil, fmt.Errorf("open egress enforcer: set %s: %w", name, err)
		}
	}
	// The LSM program is loaded on its own: hosts without the BPF LSM, or
	// that refuse LSM programs, still get everything else.
	lsmSpec := spec.Copy()
	delete(spec.Programs, egressProgEgressSocketCreate)
	for name := range lsmSpec.Programs {
		if name != egressProgEgressSocketCreate {
			delete(lsmSpec.Programs, name)
		}
	}

	e := &Enforcer{
		cfg:   cfg,
		log:   log,
		now:   now,
		links: map[string]link.Link{},
		done:  make(chan struct{}),
		inst:  map[uint64]*instance{},
		metas: map[metaKey]InstanceMeta{},
	}
	err = spec.LoadAndAssign(&e.objs, &ebpf.CollectionOptions{Maps: ebpf.MapOptions{PinPath: cfg.PinDir}})
	if err != nil {
		if errors.Is(err, ebpf.ErrMapIncompatible) {
			return nil, fmt.Errorf("open egress enforcer: maps pinned in %s are from an incompatible version (remove them with Teardown): %w", cfg.PinDir, err)
		}
		if errors.Is(err, fs.ErrPermission) || errors.Is(err, ebpf.ErrNotSupported) {
			err = fmt.Errorf("%w: %w", ErrUnsupported, err)
		}
		return nil, fmt.Errorf("open egress enforcer: load programs: %w", err)
	}
	if bpfLSMEnabled() {
		e.lsmProg, err = loadLSM(lsmSpec, &e.objs)
		if err != nil {
			log.Warn("BPF LSM program refused: packet and other non-inet sockets are not refused by the enforcer (the sandbox must drop CAP_NET_RAW)", "err", err)
		}
	} else {
		log.Warn("BPF LSM not enabled (lsm= boot parameter): packet and other non-inet sockets are not refused by the enforcer (the sandbox must drop CAP_NET_RAW)")
	}
	if err := e.setup(parentID); err != nil {
		e.closeFDs()
		return nil, fmt.Errorf("open egress enforcer: %w", err)
	}
	log.Info("egress enforcer ready", "cgroup_parent", cfg.CgroupParent, "pin_dir", cfg.PinDir,
		"instance_level", level+1, "deny_unknown", cfg.DenyUnknown, "lsm", e.lsmProg != nil, "adopted_instances", len(e.inst))
	return e, nil
}

func boolByte(b bool) uint8 {
	if b {
		return 1
	}
	return 0
}

// loadLSM loads the LSM program of spec using the maps of objs.
func loadLSM(spec *ebpf.CollectionSpec, objs *objects) (*ebpf.Program, error) {
	m := objs.egressMaps
	coll, err := ebpf.NewCollectionWithOptions(spec, ebpf.CollectionOptions{MapReplacements: map[string]*ebpf.Map{
		egressMapAllow: m.Allow, egressMapEnforced: m.Enforced, egressMapEvents: m.Events, egressMapInstances: m.Instances,
		egressMapLostEvents: m.LostEvents, egressMapSkStates: m.SkStates, egressMapSniNames: m.SniNames, egressMapSniSocks: m.SniSocks,
	}})
	if err != nil {
		return nil, err
	}
	defer coll.Close()
	return coll.DetachProgram(egressProgEgressSocketCreate), nil
}

// setup attaches (or re-adopts) the programs and reads back the state.
func (e *Enforcer) setup(parentID uint64) error {
	for _, a := range attachments {
		var prog *ebpf.Program
		if a.prog != nil {
			prog = a.prog(&e.objs)
		}
		if a.lsm {
			prog = e.lsmProg
			if prog == nil {
				// A link pinned by an earlier enforcer stays as it is.
				continue
			}
		}
		if err := e.attach(a, prog, parentID); err != nil {
			return err
		}
	}
	// Replaces the program of an earlier enforcer in one step; sockets
	// already in sni_socks keep the program they were added with.
	if err := link.RawAttachProgram(link.RawAttachProgramOptions{
		Target: e.objs.SniSocks.FD(), Program: e.objs.EgressSkMsg, Attach: ebpf.AttachSkMsgVerdict,
	}); err != nil {
		return fmt.Errorf("attach sk_msg to sni_socks: %w", err)
	}
	e.skMsg = true

	// Updating an element of a map-in-map waits for an RCU grace period,
	// i.e. for every program run that may still use an old generation.
	inner := &ebpf.MapSpec{Name: "zfaas_rcu_in", Type: ebpf.Array, KeySize: 4, ValueSize: 4, MaxEntries: 1}
	var err error
	if e.rcuVal, err = ebpf.NewMap(inner); err != nil {
		return fmt.Errorf("create grace-period map: %w", err)
	}
	if e.rcu, err = ebpf.NewMap(&ebpf.MapSpec{Name: "zfaas_rcu", Type: ebpf.ArrayOfMaps, KeySize: 4, ValueSize: 4,
		MaxEntries: 1, InnerMap: inner}); err != nil {
		return fmt.Errorf("create grace-period map: %w", err)
	}
	return e.adopt()
}

func (e *Enforcer) linkPin(name string) string { return filepath.Join(e.cfg.PinDir, "link_"+name) }

// attach attaches prog, replacing the program of a link pinned by an
// earlier enforcer in place when there is one.
func (e *Enforcer) attach(a attachment, prog *ebpf.Program, parentID uint64) error {
	pin := e.linkPin(a.name)
	old, err := link.LoadPinnedLink(pin, nil)
	switch {
	case errors.Is(err, fs.ErrNotExist):
		old = nil
	case err != nil:
		return fmt.Errorf("load pinned link %s: %w", pin, err)
	}
	if old != nil && !a.lsm && sameCgroup(old, parentID) {
		if err := old.Update(prog); err == nil {
			e.links[a.name] = old
			return nil
		}
	}
	var l link.Link
	if a.lsm {
		l, err = link.AttachLSM(link.LSMOptions{Program: prog})
	} else {
		l, err = link.AttachCgroup(link.CgroupOptions{Path: e.cfg.CgroupParent, Attach: a.attach, Program: prog})
	}
	if err != nil {
		if old != nil {
			old.Close()
		}
		return fmt.Errorf("attach %s: %w", a.name, err)
	}
	// The new program is in force before the old link goes.
	if old != nil {
		if err := old.Unpin(); err != nil {
			l.Close()
			old.Close()
			return fmt.Errorf("replace pinned link %s: %w", pin, err)
		}
		old.Close()
	}
	if err := l.Pin(pin); err != nil {
		l.Close()
		return fmt.Errorf("pin link %s: %w", pin, err)
	}
	e.links[a.name] = l
	return nil
}

// sameCgroup reports whether l is a cgroup link attached at the cgroup
// with id want.
func sameCgroup(l link.Link, want uint64) bool {
	info, err := l.Info()
	if err != nil {
		return false
	}
	cg := info.Cgroup()
	return cg != nil && cg.CgroupId == want
}

// adopt reads the instances back from the maps and deletes entries no
// active generation refers to (left by an Apply or Remove cut short).
func (e *Enforcer) adopt() error {
	var (
		cgid uint64
		st   egressCgState
		meta egressInstMeta
	)
	it := e.objs.Enforced.Iterate()
	for it.Next(&cgid, &st) {
		e.inst[cgid] = &instance{gen: st.Gen}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read enforced instances: %w", err)
	}
	it = e.objs.Instances.Iterate()
	for it.Next(&cgid, &meta) {
		if in := e.inst[cgid]; in != nil {
			in.meta = decodeMeta(&meta)
			e.metas[metaKey{cgid, in.gen}] = in.meta
		}
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read instance metadata: %w", err)
	}

	type setRef struct {
		cgid uint64
		set  uint32
	}
	sets := map[setRef][]string{}
	var (
		nk    egressSniKey
		one   uint8
		stale []egressSniKey
	)
	it = e.objs.SniNames.Iterate()
	for it.Next(&nk, &one) {
		in := e.inst[nk.Cgid]
		if in == nil || in.gen != nk.Gen {
			stale = append(stale, nk)
			continue
		}
		r := setRef{nk.Cgid, nk.Set}
		sets[r] = append(sets[r], cString(nk.Name[:]))
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read sni names: %w", err)
	}
	var (
		ak         egressAllowKey
		av         egressAllowVal
		staleAllow []egressAllowKey
	)
	it = e.objs.Allow.Iterate()
	for it.Next(&ak, &av) {
		in := e.inst[ak.Cgid]
		if in == nil || in.gen != ak.Gen {
			staleAllow = append(staleAllow, ak)
			continue
		}
		en := entry{prefix: keyPrefix(&ak), port: binary.BigEndian.Uint16(portBytes(ak.Port)), proto: Protocol(ak.Proto),
			open: av.SniSet == 0}
		if !en.open {
			en.sni = slices.Sorted(slices.Values(sets[setRef{ak.Cgid, av.SniSet}]))
			for len(in.c.sets) < int(av.SniSet) {
				in.c.sets = append(in.c.sets, nil)
			}
			in.c.sets[av.SniSet-1] = en.sni
		}
		in.c.entries = append(in.c.entries, en)
		in.c.setOf = append(in.c.setOf, av.SniSet)
	}
	if err := it.Err(); err != nil {
		return fmt.Errorf("read allow entries: %w", err)
	}
	// An SNI set only some stale entry used is stale too.
	for r := range sets {
		in := e.inst[r.cgid]
		if int(r.set) > len(in.c.sets) || in.c.sets[r.set-1] == nil {
			for _, n := range sets[r] {
				stale = append(stale, sniKey(r.cgid, in.gen, r.set, n))
			}
		}
	}
	for _, k := range staleAllow {
		if err := e.objs.Allow.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete stale allow entry: %w", err)
		}
	}
	for _, k := range stale {
		if err := e.objs.SniNames.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			return fmt.Errorf("delete stale sni name: %w", err)
		}
	}
	if n := len(staleAllow) + len(stale); n > 0 {
		e.log.Info("deleted stale egress entries", "count", n)
	}
	return nil
}

// Apply replaces the rules of the instance in cgroup cgroupID with rules
// (an empty list allows nothing), labelled meta in deny events. The switch
// is atomic: every decision uses either the old rules or the new ones,
// never both and never none. On error the old rules stay in force. An
// invalid rule fails the whole call with an error wrapping ErrInvalidRule.
func (e *Enforcer) Apply(cgroupID uint64, meta InstanceMeta, rules []Rule) error {
	c, err := compile(rules)
	if err != nil {
		return fmt.Errorf("apply egress rules to cgroup %d: %w", cgroupID, err)
	}
	mv, err := encodeMeta(meta)
	if err != nil {
		return fmt.Errorf("apply egress rules to cgroup %d: %w", cgroupID, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return ErrClosed
	}
	old := e.inst[cgroupID]
	gen := uint32(1)
	if old != nil {
		gen = nextGen(old.gen)
	}
	if err := e.write(cgroupID, gen, c); err != nil {
		e.erase(cgroupID, gen, c)
		return fmt.Errorf("apply egress rules to cgroup %d: %w", cgroupID, err)
	}
	e.setMeta(metaKey{cgroupID, gen}, meta)
	if err := e.objs.Instances.Update(cgroupID, mv, ebpf.UpdateAny); err != nil {
		e.erase(cgroupID, gen, c)
		return fmt.Errorf("apply egress rules to cgroup %d: store metadata: %w", cgroupID, err)
	}
	// The switch: one update of the instance's active generation.
	if err := e.objs.Enforced.Update(cgroupID, egressCgState{Gen: gen}, ebpf.UpdateAny); err != nil {
		e.erase(cgroupID, gen, c)
		if old != nil {
			if mvOld, err := encodeMeta(old.meta); err == nil {
				_ = e.objs.Instances.Update(cgroupID, mvOld, ebpf.UpdateAny)
			}
		}
		return fmt.Errorf("apply egress rules to cgroup %d: switch generation: %w", cgroupID, err)
	}
	e.inst[cgroupID] = &instance{gen: gen, meta: meta, c: c}
	if old != nil {
		if err := e.retire(cgroupID, old); err != nil {
			e.log.Warn("old egress entries left behind (deleted at the next Open)", "cgroup_id", cgroupID, "err", err)
		}
		e.dropMeta(metaKey{cgroupID, old.gen}, false)
	}
	e.log.Debug("egress rules applied", "cgroup_id", cgroupID, "generation", gen, "entries", len(c.entries),
		"revision", meta.Revision, "spiffe_id", meta.SPIFFEID)
	return nil
}

func nextGen(g uint32) uint32 {
	if g+1 == 0 {
		return 1
	}
	return g + 1
}

// retire waits until no program can still use old's generation, then
// deletes its entries.
func (e *Enforcer) retire(cgroupID uint64, old *instance) error {
	if err := e.rcu.Update(uint32(0), e.rcuVal, ebpf.UpdateAny); err != nil {
		return fmt.Errorf("wait for a grace period: %w", err)
	}
	return e.erase(cgroupID, old.gen, old.c)
}

// Remove deletes every entry of the instance in cgroup cgroupID. Call it
// once the instance's processes are gone: from then on the cgroup is
// unknown, which passes untouched unless Config.DenyUnknown is set.
// Removing an unknown instance succeeds.
func (e *Enforcer) Remove(cgroupID uint64) error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return ErrClosed
	}
	var errs []error
	if old := e.inst[cgroupID]; old != nil {
		// First to an empty generation, so nothing is allowed meanwhile.
		if err := e.objs.Enforced.Update(cgroupID, egressCgState{Gen: nextGen(old.gen)}, ebpf.UpdateExist); err != nil &&
			!errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, fmt.Errorf("switch to no rules: %w", err))
		}
		if err := e.retire(cgroupID, old); err != nil {
			errs = append(errs, err)
		}
		e.dropMeta(metaKey{cgroupID, old.gen}, true)
	}
	for _, m := range []*ebpf.Map{e.objs.Enforced, e.objs.Instances} {
		if err := m.Delete(cgroupID); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	delete(e.inst, cgroupID)
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove egress rules of cgroup %d: %w", cgroupID, err)
	}
	return nil
}

// Rules returns the rules in force for the instance in cgroup cgroupID, as
// the maps hold them (one rule per destination prefix, port and protocol,
// overlapping rules already added up), and its metadata. ok is false when
// the instance has no rules.
func (e *Enforcer) Rules(cgroupID uint64) (meta InstanceMeta, rules []Rule, ok bool) {
	e.mu.Lock()
	defer e.mu.Unlock()
	in := e.inst[cgroupID]
	if in == nil {
		return InstanceMeta{}, nil, false
	}
	return in.meta, in.c.rules(), true
}

// Instances returns the cgroup ids of the enforced instances.
func (e *Enforcer) Instances() []uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	ids := make([]uint64, 0, len(e.inst))
	for id := range e.inst {
		ids = append(ids, id)
	}
	slices.Sort(ids)
	return ids
}

// LostEvents returns how many deny events the kernel dropped because the
// ring buffer was full, since the maps were created.
func (e *Enforcer) LostEvents() (uint64, error) {
	var n uint64
	if err := e.objs.LostEvents.Lookup(uint32(0), &n); err != nil {
		return 0, fmt.Errorf("read lost events: %w", err)
	}
	return n, nil
}

// write adds generation gen's entries of c for cgid.
func (e *Enforcer) write(cgid uint64, gen uint32, c compiled) error {
	for i, names := range c.sets {
		for _, n := range names {
			k := sniKey(cgid, gen, uint32(i+1), n)
			if err := e.objs.SniNames.Update(&k, uint8(1), ebpf.UpdateAny); err != nil {
				return fmt.Errorf("add sni name %q: %w", n, err)
			}
		}
	}
	for i, en := range c.entries {
		k := allowKey(cgid, gen, en)
		if err := e.objs.Allow.Update(&k, egressAllowVal{SniSet: c.setOf[i]}, ebpf.UpdateAny); err != nil {
			return fmt.Errorf("add allow entry %v/%d: %w", en.prefix, en.port, err)
		}
	}
	return nil
}

// erase deletes generation gen's entries of c for cgid; missing entries
// are fine.
func (e *Enforcer) erase(cgid uint64, gen uint32, c compiled) error {
	var errs []error
	for _, en := range c.entries {
		k := allowKey(cgid, gen, en)
		if err := e.objs.Allow.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
			errs = append(errs, err)
		}
	}
	for i, names := range c.sets {
		for _, n := range names {
			k := sniKey(cgid, gen, uint32(i+1), n)
			if err := e.objs.SniNames.Delete(&k); err != nil && !errors.Is(err, ebpf.ErrKeyNotExist) {
				errs = append(errs, err)
			}
		}
	}
	return errors.Join(errs...)
}

func (e *Enforcer) setMeta(k metaKey, m InstanceMeta) {
	e.metaMu.Lock()
	e.metas[k] = m
	e.metaMu.Unlock()
}

// dropMeta forgets k's metadata: at once for a replaced generation (its
// events are already read or arrive within the same grace period), or
// after maxGoneMetas more removals for a removed instance.
func (e *Enforcer) dropMeta(k metaKey, removed bool) {
	e.metaMu.Lock()
	defer e.metaMu.Unlock()
	if !removed {
		// Keep one generation back for events still in the ring buffer.
		delete(e.metas, metaKey{k.cgid, k.gen - 1})
		return
	}
	e.gone = append(e.gone, k)
	if len(e.gone) > maxGoneMetas {
		old := e.gone[0]
		e.gone = e.gone[1:]
		for gk := range e.metas {
			if gk.cgid == old.cgid {
				delete(e.metas, gk)
			}
		}
	}
}

func (e *Enforcer) metaFor(cgid uint64, gen uint32) InstanceMeta {
	e.metaMu.RLock()
	defer e.metaMu.RUnlock()
	if m, ok := e.metas[metaKey{cgid, gen}]; ok {
		return m
	}
	// Events raised outside a generation (no rules, unverified payload):
	// the newest known.
	var best InstanceMeta
	var bestGen uint32
	found := false
	for k, m := range e.metas {
		if k.cgid == cgid && (!found || k.gen > bestGen) {
			best, bestGen, found = m, k.gen, true
		}
	}
	return best
}

// Events returns deny events as the kernel reports them, until ctx is done
// or the enforcer is closed; then the channel is closed. Each event goes
// to one reader: use one consumer per enforcer. Events that arrive while
// the consumer is slow wait in the kernel's ring buffer (256 KiB, about
// 2000 events); beyond that they are counted by LostEvents.
func (e *Enforcer) Events(ctx context.Context) <-chan DenyEvent {
	ch := make(chan DenyEvent, 64)
	e.mu.Lock()
	if e.closed {
		e.mu.Unlock()
		close(ch)
		return ch
	}
	rd, err := ringbuf.NewReader(e.objs.Events)
	if err != nil {
		e.mu.Unlock()
		e.log.Error("open deny event ring buffer", "err", err)
		close(ch)
		return ch
	}
	e.readers = append(e.readers, rd)
	e.mu.Unlock()

	stop := context.AfterFunc(ctx, func() { rd.Close() })
	go func() {
		defer close(ch)
		defer stop()
		var rec ringbuf.Record
		for {
			if err := rd.ReadInto(&rec); err != nil {
				if errors.Is(err, os.ErrClosed) || errors.Is(err, ringbuf.ErrClosed) {
					return
				}
				e.log.Warn("read deny event", "err", err)
				continue
			}
			ev, err := e.decodeEvent(rec.RawSample)
			if err != nil {
				e.log.Warn("decode deny event", "err", err)
				continue
			}
			select {
			case ch <- ev:
			case <-ctx.Done():
				return
			case <-e.done:
				return
			}
		}
	}()
	return ch
}

func (e *Enforcer) decodeEvent(raw []byte) (DenyEvent, error) {
	var r egressDenyEvent
	if _, err := binary.Decode(raw, binary.NativeEndian, &r); err != nil {
		return DenyEvent{}, err
	}
	ev := DenyEvent{
		Time:       e.now(),
		CgroupID:   r.Cgid,
		PID:        r.Pid,
		Meta:       e.metaFor(r.Cgid, r.Gen),
		Reason:     Reason(r.Reason),
		Generation: r.Gen,
	}
	if ev.Reason == ReasonSocket {
		ev.SocketFamily, ev.SocketType, ev.SocketProtocol = int(r.Family), int(r.Port), int(r.Proto)
		return ev, nil
	}
	ev.Protocol = Protocol(r.Proto)
	switch r.Family {
	case 4:
		ev.Dst = netip.AddrPortFrom(netip.AddrFrom4([4]byte(r.Addr[:4])), r.Port)
	case 6:
		ev.Dst = netip.AddrPortFrom(netip.AddrFrom16(r.Addr), r.Port)
	}
	n := min(int(r.SniLen), len(r.Sni))
	b := make([]byte, n)
	for i := range n {
		b[i] = byte(r.Sni[i])
	}
	ev.SNI = string(b)
	return ev, nil
}

// Close releases this process's handles. Enforcement stays in force: the
// programs stay attached and the maps pinned, for the next Open to adopt.
func (e *Enforcer) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil
	}
	e.closed = true
	close(e.done)
	for _, rd := range e.readers {
		rd.Close()
	}
	e.closeFDs()
	return nil
}

func (e *Enforcer) closeFDs() {
	for _, l := range e.links {
		l.Close()
	}
	for _, m := range []*ebpf.Map{e.rcu, e.rcuVal} {
		if m != nil {
			m.Close()
		}
	}
	if e.lsmProg != nil {
		e.lsmProg.Close()
	}
	e.objs.Close()
}

// Teardown detaches the programs, deletes the pins and closes the
// enforcer: from then on no egress is enforced. For an explicit shutdown
// of enforcement on the host, not for a worker restart.
func (e *Enforcer) Teardown() error {
	e.mu.Lock()
	var errs []error
	if !e.closed {
		for name, l := range e.links {
			if err := l.Unpin(); err != nil {
				errs = append(errs, fmt.Errorf("unpin link %s: %w", name, err))
			}
		}
		if e.skMsg {
			if err := link.RawDetachProgram(link.RawDetachProgramOptions{
				Target: e.objs.SniSocks.FD(), Program: e.objs.EgressSkMsg, Attach: ebpf.AttachSkMsgVerdict,
			}); err != nil {
				errs = append(errs, fmt.Errorf("detach sk_msg: %w", err))
			}
		}
		for _, m := range e.pinnedMaps() {
			if err := m.Unpin(); err != nil {
				errs = append(errs, err)
			}
		}
	} else {
		errs = append(errs, ErrClosed)
	}
	e.mu.Unlock()
	if err := e.Close(); err != nil {
		errs = append(errs, err)
	}
	if err := os.Remove(e.cfg.PinDir); err != nil && !errors.Is(err, fs.ErrNotExist) {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("tear down egress enforcement: %w", err)
	}
	return nil
}

func (e *Enforcer) pinnedMaps() []*ebpf.Map {
	o := &e.objs
	return []*ebpf.Map{o.Allow, o.Enforced, o.Events, o.Instances, o.LostEvents, o.SkStates, o.SniNames, o.SniSocks}
}

// Key encodings, as in c/egress.h.

func allowKey(cgid uint64, gen uint32, en entry) egressAllowKey {
	k := egressAllowKey{
		Prefixlen: 128 + uint32(en.prefix.Bits()),
		Gen:       gen,
		Cgid:      cgid,
		Proto:     uint8(en.proto),
	}
	var pb [2]byte
	binary.BigEndian.PutUint16(pb[:], en.port)
	k.Port = binary.NativeEndian.Uint16(pb[:])
	a := en.prefix.Addr()
	if a.Is4() {
		k.Family = 4
		a4 := a.As4()
		copy(k.Addr[:], a4[:])
	} else {
		k.Family = 6
		k.Addr = a.As16()
	}
	return k
}

func portBytes(p uint16) []byte {
	var b [2]byte
	binary.NativeEndian.PutUint16(b[:], p)
	return b[:]
}

func keyPrefix(k *egressAllowKey) netip.Prefix {
	bits := int(k.Prefixlen) - 128
	if k.Family == 4 {
		return netip.PrefixFrom(netip.AddrFrom4([4]byte(k.Addr[:4])), bits)
	}
	return netip.PrefixFrom(netip.AddrFrom16(k.Addr), bits)
}

func sniKey(cgid uint64, gen, set uint32, name string) egressSniKey {
	k := egressSniKey{Gen: gen, Set: set, Cgid: cgid}
	for i := 0; i < len(name) && i < len(k.Name)-1; i++ {
		k.Name[i] = int8(name[i])
	}
	return k
}

func cString(b []int8) string {
	var sb strings.Builder
	for _, c := range b {
		if c == 0 {
			break
		}
		sb.WriteByte(byte(c))
	}
	return sb.String()
}

func putCString(dst []int8, s, what string) error {
	if len(s) >= len(dst) {
		return fmt.Errorf("%s is %d bytes, at most %d fit", what, len(s), len(dst)-1)
	}
	if strings.IndexByte(s, 0) >= 0 {
		return fmt.Errorf("%s contains a NUL byte", what)
	}
	for i := 0; i < len(s); i++ {
		dst[i] = int8(s[i])
	}
	return nil
}

func encodeMeta(m InstanceMeta) (*egressInstMeta, error) {
	var v egressInstMeta
	if err := errors.Join(
		putCString(v.SpiffeId[:], m.SPIFFEID, "SPIFFE ID"),
		putCString(v.Revision[:], m.Revision, "revision"),
		putCString(v.Instance[:], m.Instance, "instance id"),
	); err != nil {
		return nil, err
	}
	return &v, nil
}

func decodeMeta(v *egressInstMeta) InstanceMeta {
	return InstanceMeta{SPIFFEID: cString(v.SpiffeId[:]), Revision: cString(v.Revision[:]), Instance: cString(v.Instance[:])}
}

// bpfLSMEnabled reports whether the BPF LSM is active. When securityfs
// cannot be read it says yes, and loading decides.
func bpfLSMEnabled() bool {
	b, err := os.ReadFile("/sys/kernel/security/lsm")
	if err != nil {
		return true
	}
	return slices.Contains(strings.Split(string(bytes.TrimSpace(b)), ","), "bpf")
}
