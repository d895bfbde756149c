package policyd

import (
	"errors"
	"fmt"
	"strings"
)

// Errors of the engine. Match them with errors.Is.
var (
	// ErrNoPolicy: no revision is loaded on this node (none was pushed and
	// there is no Config.Default). Decide still returns a denial with it.
	ErrNoPolicy = errors.New("policyd: no policy revision is loaded")
	// ErrUnknownEntry: Decide was asked for an entry point it does not have.
	ErrUnknownEntry = errors.New("policyd: unknown entry point")
	// ErrMalformed: a policy result does not have the documented shape
	// (EgressRules). Decide turns malformed results into denials instead.
	ErrMalformed = errors.New("policyd: malformed policy result")
	// ErrRevisionNotFound: Rollback was given a revision that was never
	// stored.
	ErrRevisionNotFound = errors.New("policyd: revision not found")
	// ErrContention: too many concurrent writers of the active revision;
	// retry.
	ErrContention = errors.New("policyd: too many concurrent policy updates")

	// The reasons a policy is refused; a *RefusedError wraps one of them.

	// ErrBundle: the bundle is not a readable OPA snapshot bundle.
	ErrBundle = errors.New("malformed policy bundle")
	// ErrTooLarge: the bundle or its unpacked files are over the limits.
	ErrTooLarge = errors.New("policy bundle too large")
	// ErrSignature: a signature is required and missing, invalid, or does
	// not cover every file of the bundle.
	ErrSignature = errors.New("policy bundle signature refused")
	// ErrCompile: the policy does not parse or compile.
	ErrCompile = errors.New("policy does not compile")
	// ErrTestsFailed: a policy test failed or raised an error.
	ErrTestsFailed = errors.New("policy tests failed")
)

// RefusedError reports a policy that was refused (by Push, PushFS, Test or
// Rollback). Its message is about the submitted policy only — compile
// errors, failed test names, signature problems — so it is safe to show to
// whoever submitted it. It unwraps to one of ErrBundle, ErrTooLarge,
// ErrSignature, ErrCompile or ErrTestsFailed.
type RefusedError struct {
	// Reason is the sentinel error.
	Reason error
	// Detail says what is wrong, for people.
	Detail string
	// Tests is the test report when Reason is ErrTestsFailed.
	Tests *TestReport
}

func (e *RefusedError) Error() string {
	if e.Detail == "" {
		return e.Reason.Error()
	}
	return e.Reason.Error() + ": " + e.Detail
}

func (e *RefusedError) Unwrap() error { return e.Reason }

func refused(reason error, format string, args ...any) *RefusedError {
	return &RefusedError{Reason: reason, Detail: fmt.Sprintf(format, args...)}
}

// testsRefused builds the refusal of a failed test run, naming up to ten
// failing tests.
func testsRefused(r *TestReport) *RefusedError {
	var names []string
	for _, t := range r.Results {
		if t.Outcome == OutcomeFail || t.Outcome == OutcomeError {
			if len(names) == 10 {
				names = append(names, "…")
				break
			}
			s := t.Package + "." + t.Name
			if t.Error != "" {
				s += " (" + t.Error + ")"
			}
			names = append(names, s)
		}
	}
	return &RefusedError{
		Reason: ErrTestsFailed,
		Detail: fmt.Sprintf("%d failed, %d errored, %d passed: %s", r.Failed, r.Errored, r.Passed, strings.Join(names, "; ")),
		Tests:  r,
	}
}
