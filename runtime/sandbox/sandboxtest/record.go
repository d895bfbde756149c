package sandboxtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/zfaas/zfaas/api"
	"github.com/zfaas/zfaas/runtime/sandbox"
)

// recorder is the driver under test with every instance it started
// recorded, so the suite can look at an instance's cgroup and processes
// while it runs and check that nothing of it remains after it stopped.
type recorder struct {
	sandbox.Driver
	mu    sync.Mutex
	byID  map[string]*started
	order []*started
}

// started is one instance the driver started.
type started struct {
	inst sandbox.Instance
	spec sandbox.Spec // what it was started with
	mu   sync.Mutex
	pids []int // every PID seen in its cgroup v2 directory
}

func (r *recorder) Start(ctx context.Context, spec sandbox.Spec) (sandbox.Instance, error) {
	inst, err := r.Driver.Start(ctx, spec)
	if err != nil {
		return nil, err
	}
	st := &started{inst: inst, spec: spec}
	st.sample()
	r.mu.Lock()
	if r.byID == nil {
		r.byID = map[string]*started{}
	}
	r.byID[spec.ID] = st
	r.order = append(r.order, st)
	r.mu.Unlock()
	return inst, nil
}

func (r *recorder) get(id string) *started {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.byID[id]
}

func (r *recorder) all() []*started {
	r.mu.Lock()
	defer r.mu.Unlock()
	return slices.Clone(r.order)
}

// sample adds the processes now in the instance's cgroup v2 directory and
// returns them.
func (st *started) sample() []int {
	b, _ := os.ReadFile(filepath.Join(st.inst.CgroupV2Path(), "cgroup.procs"))
	var now []int
	for f := range strings.FieldsSeq(string(b)) {
		if pid, err := strconv.Atoi(f); err == nil {
			now = append(now, pid)
		}
	}
	st.mu.Lock()
	defer st.mu.Unlock()
	for _, pid := range now {
		if !slices.Contains(st.pids, pid) {
			st.pids = append(st.pids, pid)
		}
	}
	return now
}

func (st *started) seen() []int {
	st.mu.Lock()
	defer st.mu.Unlock()
	return slices.Clone(st.pids)
}

// live reports whether the instance still runs.
func (st *started) live() bool {
	select {
	case <-st.inst.Done():
		return false
	default:
		return true
	}
}

// assertGone checks that nothing of a stopped instance remains: its
// processes, its cgroups in every hierarchy, its state and mounts, its
// Workload API endpoint.
func (s *suite) assertGone(t *testing.T, st *started) {
	t.Helper()
	id := st.inst.ID()
	select {
	case <-st.inst.Done():
	case <-time.After(10 * time.Second):
		t.Errorf("instance %s: Done not closed after it was stopped", id)
	}
	pids := st.seen()
	if len(pids) == 0 {
		t.Errorf("instance %s: no process was ever seen in its cgroup %s", id, st.inst.CgroupV2Path())
	}
	for _, pid := range pids {
		if alive(pid) {
			t.Errorf("instance %s: process %d (%s) still exists", id, pid, comm(pid))
		}
	}
	cgs := []string{st.inst.CgroupV2Path()}
	for _, mp := range cgroupMounts() {
		cgs = append(cgs, filepath.Join(mp, s.tg.CgroupParent, id))
	}
	for _, cg := range cgs {
		if _, err := os.Lstat(cg); !errors.Is(err, fs.ErrNotExist) {
			procs, _ := os.ReadFile(filepath.Join(cg, "cgroup.procs"))
			t.Errorf("instance %s: cgroup %s left (stat err %v, procs %q)", id, cg, err, bytes.TrimSpace(procs))
		}
	}
	if left := stateEntries(s.tg.StateDir, id); len(left) > 0 {
		t.Errorf("instance %s: state left in %s: %v", id, s.tg.StateDir, left)
	}
	if left := mountsOf(s.tg.StateDir, id); len(left) > 0 {
		t.Errorf("instance %s: mounts left: %v", id, left)
	}
	if s.idDir != "" {
		ep := filepath.Join(s.idDir, "ep", id)
		if _, err := os.Lstat(ep); !errors.Is(err, fs.ErrNotExist) {
			t.Errorf("instance %s: Workload API endpoint %s left (stat err %v)", id, ep, err)
		}
	}
}

// alive reports whether pid exists (also as a zombie nobody reaped).
func alive(pid int) bool {
	return !errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
}

func comm(pid int) string {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/comm", pid))
	return strings.TrimSpace(string(b))
}

// mountinfo returns the mount points of the test's mount namespace.
func mountinfo() []mountEntry {
	b, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return nil
	}
	var ms []mountEntry
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		sep := slices.Index(f, "-")
		if len(f) < 5 || sep < 0 || sep+1 >= len(f) {
			continue
		}
		ms = append(ms, mountEntry{point: unescapeMount(f[4]), fsType: f[sep+1]})
	}
	return ms
}

type mountEntry struct{ point, fsType string }

func unescapeMount(s string) string {
	r := strings.NewReplacer(`\040`, " ", `\011`, "\t", `\012`, "\n", `\134`, `\`)
	return r.Replace(s)
}

// cgroupMounts returns the mount points of every cgroup hierarchy (v1 and
// v2).
func cgroupMounts() []string {
	var mps []string
	for _, m := range mountinfo() {
		if (m.fsType == "cgroup" || m.fsType == "cgroup2") && !slices.Contains(mps, m.point) {
			mps = append(mps, m.point)
		}
	}
	return mps
}

// mountsOf returns mount points under stateDir, or naming instance id
// (all instances when id is empty).
func mountsOf(stateDir, id string) []string {
	var left []string
	for _, m := range mountinfo() {
		under := m.point == stateDir || strings.HasPrefix(m.point, stateDir+"/")
		if id == "" && !under || id != "" && !strings.Contains(m.point, id) {
			continue
		}
		left = append(left, m.point)
	}
	return left
}

// stateEntries returns the entries of stateDir naming instance id (all
// entries when id is empty).
func stateEntries(stateDir, id string) []string {
	ents, err := os.ReadDir(stateDir)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			return nil
		}
		return []string{err.Error()}
	}
	var left []string
	for _, e := range ents {
		if id == "" || strings.Contains(e.Name(), id) {
			left = append(left, e.Name())
		}
	}
	return left
}

// logSink keeps the functions' output for failure messages.
type logSink struct {
	mu   sync.Mutex
	recs []api.LogRecord
}

func (l *logSink) Log(rec api.LogRecord) {
	l.mu.Lock()
	l.recs = append(l.recs, rec)
	l.mu.Unlock()
}

// of returns the output of instance id, one line per record.
func (l *logSink) of(id string) string {
	l.mu.Lock()
	defer l.mu.Unlock()
	var b strings.Builder
	for _, r := range l.recs {
		if r.InstanceID == id {
			fmt.Fprintf(&b, "%s: %s\n", r.Stream, r.Line)
		}
	}
	return b.String()
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}
