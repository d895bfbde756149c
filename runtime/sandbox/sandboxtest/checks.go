package sandboxtest

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/zfaas/zfaas/api"
	"github.com/zfaas/zfaas/identity"
	"github.com/zfaas/zfaas/runtime/sandbox"
	"github.com/zfaas/zfaas/runtime/worker"
)

// event and result mirror testdata/fn's.
type event struct {
	Action string   `json:"action"`
	Path   string   `json:"path,omitempty"`
	Data   string   `json:"data,omitempty"`
	Paths  []string `json:"paths,omitempty"`
	Millis int      `json:"millis,omitempty"`
	MiB    int      `json:"mib,omitempty"`
}

type result struct {
	Instance string   `json:"instance"`
	UID      int      `json:"uid"`
	Data     string   `json:"data,omitempty"`
	Exists   bool     `json:"exists,omitempty"`
	Visible  []string `json:"visible,omitempty"`
	Peers    []string `json:"peers,omitempty"`
	Procs    int      `json:"procs,omitempty"`
	Err      string   `json:"err,omitempty"`
	// Files are the SVID files the instance read (name → content).
	Files map[string]string `json:"files,omitempty"`
}

// invoke runs one invocation of v through the worker. A function error, a
// non-200 HTTP status or an unreadable result is an error.
func (s *suite) invoke(t *testing.T, v api.Version, ev event) (*api.InvocationResult, result, error) {
	t.Helper()
	return s.invokeOn(t, s.w, v, ev)
}

// invokeOn is invoke through the worker w.
func (s *suite) invokeOn(t *testing.T, w *worker.Worker, v api.Version, ev event) (*api.InvocationResult, result, error) {
	t.Helper()
	payload, err := json.Marshal(ev)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.tg.InitTimeout+s.tg.FunctionTimeout+30*time.Second)
	defer cancel()
	var idb [8]byte
	_, _ = rand.Read(idb[:])
	res, err := w.Invoke(ctx, api.Invocation{
		ID: "inv-" + hex.EncodeToString(idb[:]), Version: v, Payload: payload,
		MaxConcurrency: 1, WaitBudget: 30 * time.Second,
	})
	if err != nil {
		return nil, result{}, err
	}
	var r result
	switch {
	case res.FuncErr != nil:
		return res, r, fmt.Errorf("function error %s: %s", res.FuncErr.ErrorType, res.FuncErr.ErrorMessage)
	case v.Config.Mode == api.ModeHTTP && res.StatusCode != http.StatusOK:
		return res, r, fmt.Errorf("HTTP status %d: %q", res.StatusCode, res.Payload)
	}
	if err := json.Unmarshal(res.Payload, &r); err != nil {
		return res, r, fmt.Errorf("result %q: %w", res.Payload, err)
	}
	return res, r, nil
}

// mustInvoke is invoke that fails the test on any error.
func (s *suite) mustInvoke(t *testing.T, v api.Version, ev event) (*api.InvocationResult, result) {
	t.Helper()
	res, r, err := s.invoke(t, v, ev)
	if err != nil {
		var out string
		if res != nil {
			out = s.logs.of(res.InstanceID)
		}
		t.Fatalf("invoke %s %s: %v\ninstance output:\n%s", v.Function, ev.Action, err, out)
	}
	return res, r
}

// instance returns the recorded instance that served res.
func (s *suite) instance(t *testing.T, res *api.InvocationResult) *started {
	t.Helper()
	st := s.rec.get(res.InstanceID)
	if st == nil {
		t.Fatalf("instance %s served an invocation but the driver never started it", res.InstanceID)
	}
	return st
}

// checkServed checks what every successful invocation must show: the
// instance the worker names ran it, inside its cgroup.
func (s *suite) checkServed(t *testing.T, res *api.InvocationResult, r result) {
	t.Helper()
	if r.Instance != res.InstanceID {
		t.Errorf("function saw ZFAAS_INSTANCE_ID %q, worker says instance %q", r.Instance, res.InstanceID)
	}
	st := s.instance(t, res)
	if len(st.sample()) == 0 {
		t.Errorf("no process in the instance's cgroup %s while it serves", st.inst.CgroupV2Path())
	}
}

func (s *suite) testLambdaInvoke(t *testing.T) {
	res, r := s.mustInvoke(t, s.fn, event{Action: "whoami"})
	s.checkServed(t, res, r)
	if !res.ColdStart {
		t.Error("first invocation: ColdStart = false, want true")
	}
	t.Logf("Lambda mode cold start %v", res.InitDuration.Round(time.Millisecond))
	// The instance stays warm and serves the next invocation.
	res2, r2 := s.mustInvoke(t, s.fn, event{Action: "whoami"})
	s.checkServed(t, res2, r2)
	if res2.ColdStart || res2.InstanceID != res.InstanceID {
		t.Errorf("second invocation: cold %v on %s, want warm on %s", res2.ColdStart, res2.InstanceID, res.InstanceID)
	}
	// A function error is a result, not a broken instance.
	if _, _, err := s.invoke(t, s.fn, event{Action: "no-such-action"}); err == nil || !strings.Contains(err.Error(), "unknown action") {
		t.Errorf("function error: got %v, want the function's error", err)
	}
	res3, _ := s.mustInvoke(t, s.fn, event{Action: "whoami"})
	if res3.InstanceID != res.InstanceID {
		t.Errorf("after a function error: instance %s, want %s still serving", res3.InstanceID, res.InstanceID)
	}
}

func (s *suite) testHTTPInvoke(t *testing.T) {
	res, r, err := s.invoke(t, s.hfn, event{Action: "whoami"})
	if err != nil {
		s.httpBroken = true
		var out string
		if res != nil {
			out = s.logs.of(res.InstanceID)
		}
		t.Fatalf("invoke %s whoami: %v\ninstance output:\n%s", httpFn, err, out)
	}
	s.checkServed(t, res, r)
	if !res.ColdStart {
		t.Error("first invocation: ColdStart = false, want true")
	}
	t.Logf("HTTP mode cold start %v", res.InitDuration.Round(time.Millisecond))
	if ct := res.Header.Get("Content-Type"); ct != "application/json" {
		t.Errorf("Content-Type %q, want application/json", ct)
	}
	res2, r2 := s.mustInvoke(t, s.hfn, event{Action: "env", Path: "AWS_LAMBDA_FUNCTION_NAME"})
	if res2.ColdStart || res2.InstanceID != res.InstanceID {
		t.Errorf("second invocation: cold %v on %s, want warm on %s", res2.ColdStart, res2.InstanceID, res.InstanceID)
	}
	if r2.Data != httpFn {
		t.Errorf("AWS_LAMBDA_FUNCTION_NAME = %q, want %q", r2.Data, httpFn)
	}
}

func (s *suite) testUnprivileged(t *testing.T) {
	s.skipUnless(t, Unprivileged)
	for _, v := range []api.Version{s.fn, s.hfn} {
		if v.Config.Mode == api.ModeHTTP && s.httpBroken {
			t.Error("HTTP mode not checked: its instance failed (see HTTPInvoke)")
			continue
		}
		if _, r := s.mustInvoke(t, v, event{Action: "whoami"}); r.UID == 0 {
			t.Errorf("%s (%s mode) runs as root", v.Function, v.Config.Mode)
		}
	}
}

// skipUnless skips t when the driver declared c missing.
func (s *suite) skipUnless(t *testing.T, c Capability) {
	t.Helper()
	if why, ok := s.tg.Missing[c]; ok {
		t.Skipf("driver lacks capability %q: %s", c, why)
	}
}

func (s *suite) testIdentity(t *testing.T) {
	s.skipUnless(t, Identity)
	if s.noID != "" {
		t.Skip(s.noID)
	}
	for _, v := range []api.Version{s.fn, s.hfn} {
		if v.Config.Mode == api.ModeHTTP && s.httpBroken {
			t.Error("HTTP mode not checked: its instance failed (see HTTPInvoke)")
			continue
		}
		want, err := identity.FunctionID(s.td, v.Tenant, v.Function)
		if err != nil {
			t.Fatal(err)
		}
		res, r := s.mustInvoke(t, v, event{Action: "svid"})
		if r.Err != "" || r.Data != want.String() {
			t.Errorf("%s (%s mode) fetched X.509-SVID %q (err %q), want %q\ninstance output:\n%s",
				v.Function, v.Config.Mode, r.Data, r.Err, want, s.logs.of(res.InstanceID))
		}
	}
}

// testIsolation: an instance of another function probes for the Lambda instance's files,
// processes, host state and Runtime API while both run.
func (s *suite) testIsolation(t *testing.T) {
	const secret = "a's secret"
	resA, rA := s.mustInvoke(t, s.fn, event{Action: "write", Path: secretPath, Data: secret})
	if rA.Err != "" {
		t.Fatalf("instance a cannot write its own /tmp: %s", rA.Err)
	}
	a := s.instance(t, resA)
	if _, r := s.mustInvoke(t, s.fn, event{Action: "read", Path: secretPath}); r.Data != secret {
		t.Fatalf("instance a reads back %q (err %q), want %q", r.Data, r.Err, secret)
	}
	_, rAPI := s.mustInvoke(t, s.fn, event{Action: "env", Path: "AWS_LAMBDA_RUNTIME_API"})
	runtimeAPI := "http://" + rAPI.Data + "/2018-06-01/runtime/invocation/next"
	// Control: the probe reaches a's own Runtime API (405: POST on /next).
	if _, r := s.mustInvoke(t, s.fn, event{Action: "post", Path: runtimeAPI}); !strings.HasPrefix(r.Data, "405") {
		t.Errorf("control: a's POST to its own Runtime API got status %q (err %q), want 405", r.Data, r.Err)
	}
	probe := []string{secretPath, s.dataDir, s.tg.StateDir, filepath.Join(s.tg.StateDir, a.inst.ID())}
	if s.idDir != "" {
		probe = append(probe, s.idDir)
	}
	pidsA := a.sample()
	if len(pidsA) == 0 {
		t.Fatalf("no process in a's cgroup %s", a.inst.CgroupV2Path())
	}
	for _, pid := range pidsA {
		probe = append(probe, fmt.Sprintf("/proc/%d/root%s", pid, secretPath), fmt.Sprintf("/proc/%d/environ", pid))
	}

	// Control: b sees its own package.
	own := path.Join(sandbox.TaskRoot, handler)
	resB, rB := s.mustInvoke(t, s.probe, event{Action: "stat", Paths: append(probe, own)})
	if resB.InstanceID == a.inst.ID() {
		t.Fatal("both functions ran on the same instance")
	}
	if !slices.Contains(rB.Visible, own) {
		t.Errorf("control: instance b does not see its own %s", own)
	}
	if seen := slices.DeleteFunc(rB.Visible, func(p string) bool { return p == own }); len(seen) > 0 {
		t.Errorf("instance b sees %v (a's files, host or driver state)", seen)
	}
	if _, r := s.mustInvoke(t, s.probe, event{Action: "read", Path: secretPath}); r.Exists {
		t.Errorf("instance b reads a's /tmp secret: %q", r.Data)
	}
	_, r := s.mustInvoke(t, s.probe, event{Action: "peers"})
	if len(r.Peers) > 0 {
		t.Errorf("instance b sees processes of instances %v", r.Peers)
	}
	t.Logf("instance b sees %d processes", r.Procs)
	if _, r := s.mustInvoke(t, s.probe, event{Action: "post", Path: runtimeAPI}); r.Err == "" {
		t.Errorf("instance b reached a's Runtime API: status %q", r.Data)
	} else {
		t.Logf("instance b refused by a's Runtime API: %s", r.Err)
	}
	if !a.live() {
		t.Errorf("instance a died during the probe: %v", a.inst.Err())
	}
}

// testTimeout: an invocation past its timeout gets api.ErrTimeout, its
// instance is killed and removed, and the next invocation cold-starts.
func (s *suite) testTimeout(t *testing.T) {
	res, _ := s.mustInvoke(t, s.fn, event{Action: "whoami"})
	st := s.instance(t, res)
	st.sample()
	t0 := time.Now()
	_, _, err := s.invoke(t, s.fn, event{Action: "sleep", Millis: int(s.tg.FunctionTimeout/time.Millisecond) + 60_000})
	took := time.Since(t0)
	if !errors.Is(err, api.ErrTimeout) {
		t.Fatalf("sleep past the timeout: got %v, want api.ErrTimeout", err)
	}
	if took > s.tg.FunctionTimeout+10*time.Second {
		t.Errorf("timeout took %v, want about %v", took, s.tg.FunctionTimeout)
	}
	s.assertGone(t, st)
	s.checkReplaced(t, s.fn, st)
}

// testCrash: a crash mid-invocation gets api.ErrCrashed, the instance is
// removed, and the next invocation gets a fresh one.
func (s *suite) testCrash(t *testing.T) {
	res, _ := s.mustInvoke(t, s.fn, event{Action: "whoami"})
	st := s.instance(t, res)
	st.sample()
	_, _, err := s.invoke(t, s.fn, event{Action: "crash"})
	if !errors.Is(err, api.ErrCrashed) {
		t.Fatalf("crash: got %v, want api.ErrCrashed", err)
	}
	if st.inst.Err() == nil {
		t.Error("crashed instance: Err() = nil, want the exit status")
	}
	t.Logf("crashed instance: %v", st.inst.Err())
	if out := s.logs.of(st.inst.ID()); !strings.Contains(out, "crashing on purpose") {
		t.Errorf("crashed instance's output %q lacks its last line", out)
	}
	s.assertGone(t, st)
	s.checkReplaced(t, s.fn, st)
}

// checkReplaced checks that v's next invocation runs on a fresh instance.
func (s *suite) checkReplaced(t *testing.T, v api.Version, old *started) {
	t.Helper()
	res, r := s.mustInvoke(t, v, event{Action: "whoami"})
	s.checkServed(t, res, r)
	if !res.ColdStart || res.InstanceID == old.inst.ID() {
		t.Errorf("next invocation: cold %v on %s, want a fresh instance (old %s)", res.ColdStart, res.InstanceID, old.inst.ID())
	}
}

// testMemory: the function's memory size is a limit; allocating past it
// kills the instance (an error, never a success).
func (s *suite) testMemory(t *testing.T) {
	const below, past = 16, 4 * memoryMB
	res, r := s.mustInvoke(t, s.fn, event{Action: "alloc", MiB: below})
	if want := fmt.Sprintf("allocated %d MiB", below); r.Data != want {
		t.Fatalf("below the limit: %q, want %q", r.Data, want)
	}
	st := s.instance(t, res)
	st.sample()
	_, r, err := s.invoke(t, s.fn, event{Action: "alloc", MiB: past})
	if err == nil {
		t.Fatalf("allocating %d MiB with a %d MB limit succeeded: %q", past, memoryMB, r.Data)
	}
	if !errors.Is(err, api.ErrCrashed) {
		t.Errorf("allocating past the limit: got %v, want api.ErrCrashed", err)
	}
	t.Logf("instance killed: %v", st.inst.Err())
	s.assertGone(t, st)
}

// testCleanStop: closing the worker stops every instance and leaves no
// process, cgroup, state, mount or socket of any instance behind.
func (s *suite) testCleanStop(t *testing.T) {
	// Make sure both modes have a live instance to stop, and note the
	// host sockets the worker and the driver made for them.
	addrs := map[string]string{}
	// (The probe's instance: the Lambda function's last one was killed.)
	resL, rL := s.mustInvoke(t, s.probe, event{Action: "env", Path: "AWS_LAMBDA_RUNTIME_API"})
	addrs["Runtime API of "+resL.InstanceID] = rL.Data
	if s.httpBroken {
		t.Error("HTTP mode not checked: its instance failed (see HTTPInvoke)")
	} else if resH, rH, err := s.invoke(t, s.hfn, event{Action: "env", Path: "PORT"}); err != nil {
		t.Errorf("invoke %s env: %v", httpFn, err)
	} else {
		addrs["HTTP port of "+resH.InstanceID] = net.JoinHostPort("127.0.0.1", rH.Data)
	}
	var live []*started
	for _, st := range s.rec.all() {
		if st.live() {
			st.sample()
			live = append(live, st)
		}
	}
	if len(live) < len(addrs) {
		t.Errorf("%d live instances before Close, want at least %d", len(live), len(addrs))
	}
	// A second Start with the ID of a running instance is refused and
	// leaves that instance alone.
	if len(live) > 0 {
		st := live[0]
		_, err := s.tg.Driver.Start(context.Background(), st.spec)
		if !errors.Is(err, sandbox.ErrInstanceExists) {
			t.Errorf("Start with the ID of running %s: %v, want sandbox.ErrInstanceExists", st.inst.ID(), err)
		}
		if !st.live() {
			t.Errorf("instance %s stopped after a refused Start with its ID", st.inst.ID())
		}
		s.mustInvoke(t, s.probe, event{Action: "env", Path: "AWS_LAMBDA_RUNTIME_API"})
	}
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	if err := s.w.Close(ctx); err != nil {
		t.Errorf("worker Close: %v", err)
	}
	for _, st := range s.rec.all() {
		s.assertGone(t, st)
	}
	if left := stateEntries(s.tg.StateDir, ""); len(left) > 0 {
		t.Errorf("state dir %s not empty: %v", s.tg.StateDir, left)
	}
	if left := mountsOf(s.tg.StateDir, ""); len(left) > 0 {
		t.Errorf("mounts left under %s: %v", s.tg.StateDir, left)
	}
	if s.idDir != "" {
		if ents, err := os.ReadDir(filepath.Join(s.idDir, "ep")); err != nil || len(ents) > 0 {
			t.Errorf("Workload API endpoints left: %v (err %v)", ents, err)
		}
	}
	if s.tg.Leftovers != nil {
		if left := s.tg.Leftovers(); len(left) > 0 {
			t.Errorf("driver leftovers: %v", left)
		}
	}
	for what, addr := range addrs {
		if _, err := strconv.Atoi(addr[strings.LastIndexByte(addr, ':')+1:]); err != nil {
			t.Errorf("%s: bad address %q", what, addr)
			continue
		}
		if c, err := net.DialTimeout("tcp", addr, time.Second); err == nil {
			c.Close()
			t.Errorf("%s (%s) still accepts connections", what, addr)
		}
	}
}
