package attest_test

import (
	"context"
	"fmt"
	"strings"
	"testing"

	"github.com/open-policy-agent/opa/v1/rego"

	"github.com/zfaas/zfaas/identity/attest"
	rattest "github.com/zfaas/zfaas/runtime/attest"
)

// regoAdmitter evaluates the shipped zfaas.admission policy with real OPA,
// as the lead's binding will, to prove Claims.PolicyInput fits it.
type regoAdmitter struct {
	query rego.PreparedEvalQuery
}

func newRegoAdmitter(t *testing.T) *regoAdmitter {
	t.Helper()
	opts := []func(*rego.Rego){
		rego.Query("data.zfaas.admission.decision"),
		rego.Load([]string{"../../policies"}, nil),
	}
	q, err := rego.New(opts...).PrepareForEval(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	return &regoAdmitter{query: q}
}

func (r *regoAdmitter) Admit(ctx context.Context, c attest.Claims) (bool, []string, error) {
	rs, err := r.query.Eval(ctx, rego.EvalInput(c.PolicyInput()))
	if err != nil {
		return false, nil, err
	}
	if len(rs) != 1 || len(rs[0].Expressions) != 1 {
		return false, nil, fmt.Errorf("admission policy gave %d results", len(rs))
	}
	d, ok := rs[0].Expressions[0].Value.(map[string]any)
	if !ok {
		return false, nil, fmt.Errorf("admission decision is %T", rs[0].Expressions[0].Value)
	}
	allow, _ := d["allow"].(bool)
	var reasons []string
	list, _ := d["reasons"].([]any)
	for _, x := range list {
		s, _ := x.(string)
		reasons = append(reasons, s)
	}
	return allow, reasons, nil
}

func TestAttestAdmissionPolicy(t *testing.T) {
	n := newNode(t, "w1", rattest.EKRSA)
	adm := newRegoAdmitter(t)
	v := newVerifier(t, adm, n.sim.Root)
	_, ev := roundTrip(t, v, n, withChain(n))
	res, err := v.Verify(context.Background(), ev)
	if err != nil {
		t.Fatalf("verify: %v", err)
	}
	want := []string{"TPM attestation verified", "no golden PCR values configured", "no EK allow-list configured"}
	for _, w := range want {
		found := false
		for _, r := range res.Reasons {
			found = found || strings.Contains(r, w)
		}
		if !found {
			t.Errorf("got reasons %q, want one containing %q", res.Reasons, w)
		}
	}
}
