package bpf

import (
	"errors"
	"net/netip"
	"slices"
	"testing"
)

func TestCompileAddsUpOverlappingRules(t *testing.T) {
	p := netip.MustParsePrefix
	rules := []Rule{
		{Prefix: p("10.0.0.0/8"), Port: 443, Protocol: TCP, SNI: []string{"a.test"}},
		{Prefix: p("10.1.0.0/16"), Port: 443, Protocol: TCP, SNI: []string{"b.test"}},
		{Prefix: p("10.1.2.3/32"), Port: 443, Protocol: TCP},
		{Prefix: p("10.1.2.3/32"), Port: 443, Protocol: TCP, SNI: []string{"c.test"}},
		{Prefix: p("10.1.0.0/16"), Port: 443, Protocol: TCP, SNI: []string{"a.test", "b.test"}},
		{Prefix: p("::ffff:192.0.2.0/120"), Port: 53, Protocol: UDP},
		{Prefix: p("10.1.9.9/32"), Port: 80, Protocol: TCP, SNI: []string{"z.test"}},
	}
	c, err := compile(rules)
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, r := range c.rules() {
		got = append(got, r.String())
	}
	want := []string{
		"tcp 10.0.0.0/8/443 sni=a.test",
		"tcp 10.1.0.0/16/443 sni=a.test,b.test",
		"udp 192.0.2.0/24/53",
		"tcp 10.1.2.3/32/443",
		"tcp 10.1.9.9/32/80 sni=z.test",
	}
	if !slices.Equal(got, want) {
		t.Errorf("got  %q\nwant %q", got, want)
	}
	if len(c.sets) != 3 {
		t.Errorf("SNI sets: got %d, want 3 (shared when equal)", len(c.sets))
	}
}

func TestCompileRejectsInvalid(t *testing.T) {
	p := netip.MustParsePrefix("10.0.0.0/8")
	for name, r := range map[string]Rule{
		"no prefix":       {Port: 1, Protocol: TCP},
		"port 0":          {Prefix: p, Protocol: TCP},
		"icmp":            {Prefix: p, Port: 1, Protocol: 1},
		"sni on udp":      {Prefix: p, Port: 1, Protocol: UDP, SNI: []string{"a.test"}},
		"upper-case sni":  {Prefix: p, Port: 1, Protocol: TCP, SNI: []string{"A.test"}},
		"two wildcards":   {Prefix: p, Port: 1, Protocol: TCP, SNI: []string{"*.*.test"}},
		"empty label":     {Prefix: p, Port: 1, Protocol: TCP, SNI: []string{"a..test"}},
		"short v4-mapped": {Prefix: netip.MustParsePrefix("::ffff:0:0/80"), Port: 1, Protocol: TCP},
	} {
		if _, err := compile([]Rule{r}); !errors.Is(err, ErrInvalidRule) {
			t.Errorf("%s: got %v, want ErrInvalidRule", name, err)
		}
	}
}
