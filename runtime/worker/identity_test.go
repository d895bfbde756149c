package worker

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zfaas/zfaas/api"
	"github.com/zfaas/zfaas/runtime/archive"
	"github.com/zfaas/zfaas/runtime/pool"
	"github.com/zfaas/zfaas/runtime/sandbox"
)

type bytesSource []byte

func (b bytesSource) OpenPackage(context.Context, string) (io.ReadCloser, error) {
	return io.NopCloser(bytes.NewReader(b)), nil
}

// fakeDriver records the spec and, in HTTP mode, listens on $PORT so the
// instance becomes ready.
type fakeDriver struct {
	fail error
	spec sandbox.Spec
	ln   net.Listener
}

func (d *fakeDriver) Start(ctx context.Context, spec sandbox.Spec) (sandbox.Instance, error) {
	d.spec = spec
	if spec.BeforeStart != nil {
		if err := spec.BeforeStart(ctx, "/sys/fs/cgroup/zfaas/"+spec.ID); err != nil {
			return nil, err
		}
	}
	if d.fail != nil {
		return nil, d.fail
	}
	for _, kv := range spec.Env {
		if p, ok := strings.CutPrefix(kv, "PORT="); ok {
			ln, err := net.Listen("tcp4", "127.0.0.1:"+p)
			if err != nil {
				return nil, err
			}
			d.ln = ln
		}
	}
	return &fakeInstance{id: spec.ID, done: make(chan struct{})}, nil
}

type fakeInstance struct {
	id   string
	done chan struct{}
	once sync.Once
}

func (i *fakeInstance) ID() string            { return i.id }
func (i *fakeInstance) Done() <-chan struct{} { return i.done }
func (i *fakeInstance) Err() error            { return nil }
func (i *fakeInstance) CgroupV2Path() string  { return "/sys/fs/cgroup/zfaas/" + i.id }
func (i *fakeInstance) Stop(context.Context) error {
	i.once.Do(func() { close(i.done) })
	return nil
}

type fakeIdentity struct {
	dir    string
	spec   EndpointSpec
	cgroup chan string
	closed int
}

func (f *fakeIdentity) Endpoint(_ context.Context, spec EndpointSpec) (string, func(), error) {
	f.spec = spec
	// The cgroup is asked for before the sandbox starts, as an early
	// client would; it must arrive once Start returned.
	go func() {
		dir, err := spec.CgroupDir()
		if err != nil {
			dir = "error: " + err.Error()
		}
		f.cgroup <- dir
	}()
	return f.dir, func() { f.closed++ }, nil
}

func newIdentityTestWorker(t *testing.T, d *fakeDriver, id *fakeIdentity) (*Worker, api.Version) {
	t.Helper()
	fn := t.TempDir()
	if err := os.WriteFile(filepath.Join(fn, "bootstrap"), []byte("x"), 0o755); err != nil {
		t.Fatal(err)
	}
	var pkg bytes.Buffer
	if err := archive.ZipDir(context.Background(), fn, &pkg); err != nil {
		t.Fatal(err)
	}
	w, err := New(Config{DataDir: t.TempDir(), Driver: d, Packages: bytesSource(pkg.Bytes()), Identity: id, InitTimeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	v := api.Version{Tenant: "default", Function: "fn-a", Version: 1, PackageDigest: "sha256:" + strings.Repeat("ab", 32),
		Config: api.FunctionConfig{Runtime: api.RuntimeGo, Handler: "bootstrap", Mode: api.ModeHTTP, MemoryMB: 128, TimeoutSeconds: 3}}
	return w, v
}

func TestIdentityEndpoint(t *testing.T) {
	d := &fakeDriver{}
	id := &fakeIdentity{dir: t.TempDir(), cgroup: make(chan string, 1)}
	w, v := newIdentityTestWorker(t, d, id)
	inst, err := w.start(context.Background(), v)
	if err != nil {
		t.Fatal(err)
	}
	defer d.ln.Close()
	if id.spec.InstanceID != inst.id || id.spec.Tenant != "default" || id.spec.Function != "fn-a" {
		t.Fatalf("endpoint spec %+v for instance %s", id.spec, inst.id)
	}
	if got, want := <-id.cgroup, "/sys/fs/cgroup/zfaas/"+inst.id; got != want {
		t.Fatalf("cgroup dir %q, want %q", got, want)
	}
	if !slices.Contains(d.spec.Mounts, sandbox.Mount{Source: id.dir, Target: "/run/spiffe"}) {
		t.Fatalf("mounts %v lack the endpoint dir", d.spec.Mounts)
	}
	if !slices.Contains(d.spec.Env, "SPIFFE_ENDPOINT_SOCKET=unix:///run/spiffe/workload.sock") {
		t.Fatalf("env %v lacks SPIFFE_ENDPOINT_SOCKET", d.spec.Env)
	}
	if id.closed != 0 {
		t.Fatal("endpoint closed while the instance runs")
	}
	inst.Stop(context.Background())
	inst.Stop(context.Background())
	if id.closed != 1 {
		t.Fatalf("endpoint closed %d times after stop, want 1", id.closed)
	}
}

func TestIdentityEndpointClosedWhenStartFails(t *testing.T) {
	d := &fakeDriver{fail: errors.New("no sandbox")}
	id := &fakeIdentity{dir: t.TempDir(), cgroup: make(chan string, 1)}
	w, v := newIdentityTestWorker(t, d, id)
	if _, err := w.start(context.Background(), v); err == nil {
		t.Fatal("start succeeded")
	}
	if id.closed != 1 {
		t.Fatalf("endpoint closed %d times, want 1", id.closed)
	}
	if got := <-id.cgroup; !strings.HasPrefix(got, "error: ") {
		t.Fatalf("cgroup of a failed instance: %q, want an error", got)
	}
}

type fakeEgress struct {
	fail     error
	spec     EgressSpec
	detached int
}

func (f *fakeEgress) Attach(_ context.Context, spec EgressSpec) (func(), error) {
	f.spec = spec
	if f.fail != nil {
		return nil, f.fail
	}
	return func() { f.detached++ }, nil
}

// TestEgressAttach: the rules are attached to the instance's cgroup before
// it runs and detached once when it stops, or when its start fails after
// they were attached; a failing attach fails the start.
func TestEgressAttach(t *testing.T) {
	d := &fakeDriver{}
	id := &fakeIdentity{dir: t.TempDir(), cgroup: make(chan string, 1)}
	w, v := newIdentityTestWorker(t, d, id)
	eg := &fakeEgress{}
	w.cfg.Egress = eg
	inst, err := w.start(context.Background(), v)
	if err != nil {
		t.Fatal(err)
	}
	d.ln.Close()
	if eg.spec.InstanceID != inst.id || eg.spec.Tenant != "default" || eg.spec.Function != "fn-a" || eg.spec.CgroupDir != "/sys/fs/cgroup/zfaas/"+inst.id || len(eg.spec.Platform) != 0 {
		t.Fatalf("egress spec %+v", eg.spec)
	}
	if eg.detached != 0 {
		t.Fatal("detached while the instance runs")
	}
	inst.Stop(context.Background())
	inst.Stop(context.Background())
	if eg.detached != 1 {
		t.Fatalf("detached %d times after stop, want 1", eg.detached)
	}

	d.fail = errors.New("no sandbox")
	eg.detached = 0
	if _, err := w.start(context.Background(), v); err == nil {
		t.Fatal("start succeeded")
	}
	if eg.detached != 1 {
		t.Fatalf("detached %d times after a failed start, want 1", eg.detached)
	}
	d.fail = nil
	eg.fail = errors.New("policy unavailable")
	if _, err := w.start(context.Background(), v); err == nil || !strings.Contains(err.Error(), "egress") {
		t.Fatalf("start with a failing attach: %v", err)
	}
}

// TestLoad: the worker reports its instances, their memory and state per
// version.
func TestLoad(t *testing.T) {
	d := &fakeDriver{}
	id := &fakeIdentity{dir: t.TempDir(), cgroup: make(chan string, 1)}
	w, v := newIdentityTestWorker(t, d, id)
	if l := w.Load(); l.Instances != 0 || l.Inflight != 0 || l.MemoryMB != 0 {
		t.Fatalf("idle worker: %+v", l)
	}
	// As Invoke does: note the version's memory, lease an instance.
	w.memory.Store(poolKey(v), v.Config.MemoryMB)
	lease, err := w.pool.Acquire(context.Background(), poolKey(v), 2, func(ctx context.Context) (pool.Instance, error) { return w.start(ctx, v) })
	if err != nil {
		t.Fatal(err)
	}
	defer d.ln.Close()
	l := w.Load()
	if st := l.Versions["default/fn-a/1"]; l.Instances != 1 || l.MemoryMB != 128 || st.Idle != 0 || st.Total != 1 {
		t.Fatalf("one busy instance: %+v", l)
	}
	lease.Release()
	if st := w.Load().Versions["default/fn-a/1"]; st.Idle != 1 || st.Total != 1 {
		t.Fatalf("one idle instance: %+v", st)
	}
}

// fakeFileIdentity delivers files; a call of Endpoint is a mistake it
// counts.
type fakeFileIdentity struct {
	fakeIdentity
	files     EndpointSpec
	endpoints int
	fail      error
}

func (f *fakeFileIdentity) Endpoint(context.Context, EndpointSpec) (string, func(), error) {
	f.endpoints++
	return "", nil, errors.New("socket asked for under file delivery")
}

func (f *fakeFileIdentity) Files(_ context.Context, spec EndpointSpec) (string, func(), error) {
	f.files = spec
	if f.fail != nil {
		return "", nil, f.fail
	}
	return f.dir, func() { f.closed++ }, nil
}

// TestIdentityFiles: under DeliverFiles the instance gets its SVID
// directory read-only at /run/zfaas/svid and ZFAAS_SVID_DIR, no Workload
// API socket, and the directory is closed once when the instance stops or
// its start fails.
func TestIdentityFiles(t *testing.T) {
	d := &fakeDriver{}
	id := &fakeFileIdentity{fakeIdentity: fakeIdentity{dir: t.TempDir()}}
	w, v := newIdentityTestWorker(t, d, &id.fakeIdentity)
	w.cfg.Identity, w.cfg.IdentityDelivery = id, DeliverFiles
	inst, err := w.start(context.Background(), v)
	if err != nil {
		t.Fatal(err)
	}
	d.ln.Close()
	if id.files.InstanceID != inst.id || id.files.Tenant != "default" || id.files.Function != "fn-a" {
		t.Fatalf("files spec %+v for instance %s", id.files, inst.id)
	}
	if id.endpoints != 0 {
		t.Errorf("Endpoint called %d times under file delivery", id.endpoints)
	}
	if !slices.Contains(d.spec.Mounts, sandbox.Mount{Source: id.dir, Target: "/run/zfaas/svid"}) {
		t.Errorf("mounts %v lack the svid dir at /run/zfaas/svid", d.spec.Mounts)
	}
	for _, m := range d.spec.Mounts {
		if m.Target == EndpointMountDir {
			t.Errorf("mount %v under file delivery", m)
		}
	}
	if !slices.Contains(d.spec.Env, "ZFAAS_SVID_DIR=/run/zfaas/svid") {
		t.Errorf("env %v lacks ZFAAS_SVID_DIR", d.spec.Env)
	}
	if slices.ContainsFunc(d.spec.Env, func(kv string) bool { return strings.HasPrefix(kv, "SPIFFE_ENDPOINT_SOCKET=") }) {
		t.Errorf("env %v has SPIFFE_ENDPOINT_SOCKET under file delivery", d.spec.Env)
	}
	if id.closed != 0 {
		t.Fatal("svid files closed while the instance runs")
	}
	inst.Stop(context.Background())
	inst.Stop(context.Background())
	if id.closed != 1 {
		t.Fatalf("svid files closed %d times after stop, want 1", id.closed)
	}

	// A failed sandbox start closes them; a failing writer fails the start.
	d.fail, id.closed = errors.New("no sandbox"), 0
	if _, err := w.start(context.Background(), v); err == nil {
		t.Fatal("start succeeded")
	}
	if id.closed != 1 {
		t.Fatalf("svid files closed %d times after a failed start, want 1", id.closed)
	}
	d.fail, id.fail = nil, errors.New("issuer down")
	if _, err := w.start(context.Background(), v); err == nil || !strings.Contains(err.Error(), "svid files") {
		t.Fatalf("start with a failing writer: %v", err)
	}
}

// TestIdentityDeliveryConfig: New refuses file delivery without an
// identity that writes files, and unknown deliveries.
func TestIdentityDeliveryConfig(t *testing.T) {
	base := func() Config {
		return Config{DataDir: t.TempDir(), Driver: &fakeDriver{}, Packages: bytesSource(nil)}
	}
	for _, c := range []struct {
		name    string
		mod     func(*Config)
		wantErr string
	}{
		{"socket by default", func(c *Config) { c.Identity = &fakeIdentity{} }, ""},
		{"files", func(c *Config) { c.Identity, c.IdentityDelivery = &fakeFileIdentity{}, DeliverFiles }, ""},
		{"files without identity", func(c *Config) { c.IdentityDelivery = DeliverFiles }, "needs an Identity"},
		{"files without a writer", func(c *Config) { c.Identity, c.IdentityDelivery = &fakeIdentity{}, DeliverFiles }, "writes SVID files"},
		{"unknown", func(c *Config) { c.Identity, c.IdentityDelivery = &fakeIdentity{}, "env" }, "want socket or files"},
	} {
		t.Run(c.name, func(t *testing.T) {
			cfg := base()
			c.mod(&cfg)
			_, err := New(cfg)
			if c.wantErr == "" && err != nil || c.wantErr != "" && (err == nil || !strings.Contains(err.Error(), c.wantErr)) {
				t.Fatalf("got %v, want error containing %q", err, c.wantErr)
			}
		})
	}
}
