package bpf

import (
	"cmp"
	"fmt"
	"net/netip"
	"slices"
	"strings"
)

// maxSNIName is the longest server name a rule may allow (RFC 1035).
const maxSNIName = 253

// entry is one allow-map entry of a compiled rule set.
type entry struct {
	prefix netip.Prefix // masked; IPv4 never as IPv4-mapped IPv6
	port   uint16
	proto  Protocol
	open   bool     // no SNI check
	sni    []string // sorted, unique; used when !open
}

// compiled is a rule set as the maps hold it: entries, each with the id
// (1-based, 0 when open) of its SNI set in sets.
type compiled struct {
	entries []entry
	setOf   []uint32   // per entry
	sets    [][]string // sets[id-1]
}

// validSNI reports whether name is a lower-case DNS name of at most 253
// bytes, optionally "*." + such a name.
func validSNI(name string) bool {
	host := strings.TrimPrefix(name, "*.")
	if host == "" || len(name) > maxSNIName {
		return false
	}
	for label := range strings.SplitSeq(host, ".") {
		if label == "" || len(label) > 63 {
			return false
		}
		for i := 0; i < len(label); i++ {
			c := label[i]
			if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return false
			}
		}
	}
	return true
}

// normalize checks r and returns it in canonical form.
func normalize(r Rule) (entry, error) {
	if !r.Prefix.IsValid() {
		return entry{}, fmt.Errorf("%w: invalid prefix %v", ErrInvalidRule, r.Prefix)
	}
	p := r.Prefix
	if p.Addr().Is4In6() {
		if p.Bits() < 96 {
			return entry{}, fmt.Errorf("%w: IPv4-mapped prefix %v shorter than /96", ErrInvalidRule, p)
		}
		p = netip.PrefixFrom(p.Addr().Unmap(), p.Bits()-96)
	}
	p = p.Masked()
	if p.Addr().Zone() != "" {
		return entry{}, fmt.Errorf("%w: prefix %v has a zone", ErrInvalidRule, r.Prefix)
	}
	if r.Port == 0 {
		return entry{}, fmt.Errorf("%w: port 0", ErrInvalidRule)
	}
	if r.Protocol != TCP && r.Protocol != UDP {
		return entry{}, fmt.Errorf("%w: protocol %v", ErrInvalidRule, r.Protocol)
	}
	e := entry{prefix: p, port: r.Port, proto: r.Protocol, open: len(r.SNI) == 0}
	if len(r.SNI) > 0 {
		if r.Protocol != TCP {
			return entry{}, fmt.Errorf("%w: SNI names need protocol tcp", ErrInvalidRule)
		}
		for _, n := range r.SNI {
			if !validSNI(n) {
				return entry{}, fmt.Errorf("%w: SNI name %q", ErrInvalidRule, n)
			}
		}
		e.sni = slices.Clone(r.SNI)
		slices.Sort(e.sni)
		e.sni = slices.Compact(e.sni)
	}
	return e, nil
}

// merge adds what other allows to e: no SNI check if other has none,
// else the union of both name sets.
func (e *entry) merge(other entry) {
	if e.open {
		return
	}
	if other.open {
		e.open, e.sni = true, nil
		return
	}
	e.sni = append(e.sni, other.sni...)
	slices.Sort(e.sni)
	e.sni = slices.Compact(e.sni)
}

// compile turns rules into map entries. The kernel looks up the longest
// matching prefix only, so every entry also carries what the shorter
// prefixes covering it allow: rules add up, as documented on Rule.
func compile(rules []Rule) (compiled, error) {
	byKey := map[entryKey]*entry{}
	var order []entryKey
	for i, r := range rules {
		e, err := normalize(r)
		if err != nil {
			return compiled{}, fmt.Errorf("rule %d (%v): %w", i, r, err)
		}
		k := entryKey{e.prefix, e.port, e.proto}
		if have, ok := byKey[k]; ok {
			have.merge(e)
			continue
		}
		byKey[k] = &e
		order = append(order, k)
	}
	// Shorter prefixes first, so one pass pushes each into the longer ones.
	slices.SortFunc(order, func(a, b entryKey) int {
		return cmp.Or(cmp.Compare(a.prefix.Bits(), b.prefix.Bits()), a.prefix.Addr().Compare(b.prefix.Addr()),
			cmp.Compare(a.port, b.port), cmp.Compare(a.proto, b.proto))
	})
	groups := map[groupKey][]entryKey{}
	for _, k := range order {
		g := groupKey{k.port, k.proto, k.prefix.Addr().Is4()}
		groups[g] = append(groups[g], k)
	}
	for _, ks := range groups {
		for j, k := range ks {
			e := byKey[k]
			for _, shorter := range ks[:j] {
				if shorter.prefix.Bits() < k.prefix.Bits() && shorter.prefix.Contains(k.prefix.Addr()) {
					e.merge(*byKey[shorter])
				}
			}
		}
	}

	var c compiled
	setIDs := map[string]uint32{}
	for _, k := range order {
		e := *byKey[k]
		var id uint32
		if !e.open {
			name := strings.Join(e.sni, "\x00")
			var ok bool
			if id, ok = setIDs[name]; !ok {
				c.sets = append(c.sets, e.sni)
				id = uint32(len(c.sets))
				setIDs[name] = id
			}
		}
		c.entries = append(c.entries, e)
		c.setOf = append(c.setOf, id)
	}
	return c, nil
}

type entryKey struct {
	prefix netip.Prefix
	port   uint16
	proto  Protocol
}

type groupKey struct {
	port uint16
	tcp  Protocol
	v4   bool
}

// rules turns compiled entries back into rules, one per entry.
func (c compiled) rules() []Rule {
	out := make([]Rule, 0, len(c.entries))
	for _, e := range c.entries {
		r := Rule{Prefix: e.prefix, Port: e.port, Protocol: e.proto}
		if !e.open {
			r.SNI = slices.Clone(e.sni)
		}
		out = append(out, r)
	}
	return out
}
