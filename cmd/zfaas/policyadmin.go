package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/zfaas/zfaas/gateway"
	"github.com/zfaas/zfaas/policyd"
)

// engineAuthorizer lets the gateway ask the policy engine.
type engineAuthorizer struct{ e *policyd.Engine }

func (a engineAuthorizer) Decide(ctx context.Context, entry string, input map[string]any) (gateway.Decision, error) {
	d, err := a.e.Decide(ctx, entry, input)
	if err != nil {
		return gateway.Decision{ID: d.ID, Revision: d.Revision}, err
	}
	return gateway.Decision{ID: d.ID, Revision: d.Revision, Allow: d.Allow, Reasons: d.Reasons}, nil
}

// enginePolicyAdmin serves the gateway's /v1/policy API from the engine.
type enginePolicyAdmin struct {
	e   *policyd.Engine
	now func() time.Time
}

func policyErr(err error) error {
	var re *policyd.RefusedError
	switch {
	case errors.As(err, &re):
		return fmt.Errorf("%w: %s", gateway.ErrPolicyRejected, re.Error())
	case errors.Is(err, policyd.ErrRevisionNotFound):
		return fmt.Errorf("%w: %w", gateway.ErrPolicyRevisionNotFound, err)
	case errors.Is(err, policyd.ErrContention):
		return fmt.Errorf("%w: %w", gateway.ErrContention, err)
	}
	return err
}

func (a enginePolicyAdmin) Push(ctx context.Context, bundle []byte, by string) (any, error) {
	info, err := a.e.Push(ctx, bundle, by)
	return info, policyErr(err)
}

func (a enginePolicyAdmin) Status(ctx context.Context) (any, error) {
	st, err := a.e.Status(ctx)
	return st, policyErr(err)
}

func (a enginePolicyAdmin) Rollback(ctx context.Context, rev int64, by string) (any, error) {
	info, err := a.e.Rollback(ctx, rev, by)
	return info, policyErr(err)
}

func (a enginePolicyAdmin) Decisions(ctx context.Context, q gateway.DecisionQuery, fn func(json.RawMessage) error) error {
	var ferr error
	err := a.e.Decisions(ctx, policyd.DecisionFilter{Since: a.now().Add(-q.Since), DenyOnly: q.DenyOnly, Entry: q.Entry, Limit: q.Limit}, func(rec policyd.DecisionRecord) {
		if ferr != nil {
			return
		}
		raw, err := json.Marshal(rec)
		if err != nil {
			ferr = err
			return
		}
		ferr = fn(raw)
	})
	if err != nil {
		return policyErr(err)
	}
	return ferr
}
