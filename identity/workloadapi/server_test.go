package workloadapi_test

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	spiffewl "github.com/spiffe/go-spiffe/v2/workloadapi"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	"github.com/zfaas/zfaas/identity"
	"github.com/zfaas/zfaas/identity/ca"
	"github.com/zfaas/zfaas/identity/workloadapi"
)

var _ workloadapi.Issuer = (*ca.CA)(nil)

var td = spiffeid.RequireTrustDomainFromString("zfaas.local")

type fakeClock struct {
	mu sync.Mutex
	t  time.Time
}

func (c *fakeClock) Now() time.Time { c.mu.Lock(); defer c.mu.Unlock(); return c.t }
func (c *fakeClock) Add(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

type env struct {
	clk   *fakeClock
	ca    *ca.CA
	srv   *workloadapi.Server
	mount string
	self  string // this process's cgroup v2 directory
}

// newEnv starts a CA and a Workload API server whose attestor accepts this
// test process for instances placed in its own cgroup.
func newEnv(t *testing.T) *env {
	t.Helper()
	return newEnvSuite(t, ca.SuiteStandard)
}

// newEnvSuite is newEnv with a CA of the given suite; under the gm suite
// the server delivers GM double SVIDs on request.
func newEnvSuite(t *testing.T, suite ca.Suite) *env {
	t.Helper()
	mount, err := workloadapi.FindCgroup2Mount("/proc/self/mountinfo")
	if err != nil {
		t.Skipf("no usable cgroup v2 hierarchy: %v", err)
	}
	own, err := workloadapi.ProcessCgroup("/proc", os.Getpid())
	if err != nil {
		t.Skipf("no cgroup v2 entry for this process: %v", err)
	}
	clk := &fakeClock{t: time.Now()}
	c, err := ca.New(context.Background(), ca.Config{
		TrustDomain: td, Dir: t.TempDir(), Clock: clk.Now,
		X509TTL: 2 * time.Minute, CATTL: time.Hour, Suite: suite,
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	srv, err := workloadapi.New(workloadapi.Config{
		Issuer: c, Clock: clk.Now, GM: suite == ca.SuiteGM,
		// The test process may sit in the root cgroup (it does on a
		// plain host); production attestors never allow that.
		Attestor: &workloadapi.CgroupAttestor{Mount: mount, InsecureAllowRootCgroup: own == "/"},
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	return &env{clk: clk, ca: c, srv: srv, mount: mount, self: filepath.Join(mount, own)}
}

func fnID(t *testing.T, name string) spiffeid.ID {
	t.Helper()
	id, err := identity.FunctionID(td, "acme", name)
	if err != nil {
		t.Fatal(err)
	}
	return id
}

// serve opens an instance endpoint in a short temp dir and serves it.
func (e *env) serve(t *testing.T, inst workloadapi.Instance) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "zid")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, inst.Name+".sock")
	l, err := workloadapi.ListenInstance(path, inst)
	if err != nil {
		t.Fatal(err)
	}
	go e.srv.Serve(l)
	return path
}

func (e *env) instance(t *testing.T, name, cgroupDir string) workloadapi.Instance {
	return workloadapi.Instance{Name: name + "-i1", ID: fnID(t, name), CgroupDir: cgroupDir, UID: -1, GID: -1}
}

func client(t *testing.T, path string) *spiffewl.Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	c, err := spiffewl.New(ctx, spiffewl.WithAddr(workloadapi.EndpointAddr(path)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func TestFetchWithGoSpiffeClient(t *testing.T) {
	e := newEnv(t)
	inst := e.instance(t, "hello", e.self)
	path := e.serve(t, inst)
	fi, err := os.Stat(path)
	if err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("socket mode: got %v (%v), want 0600", fi.Mode().Perm(), err)
	}
	c := client(t, path)
	ctx := ctxT(t)

	xc, err := c.FetchX509Context(ctx)
	if err != nil {
		t.Fatalf("FetchX509Context: %v", err)
	}
	if len(xc.SVIDs) != 1 || xc.SVIDs[0].ID != inst.ID {
		t.Fatalf("svids: got %v, want one for %s", xc.SVIDs, inst.ID)
	}
	b, err := xc.Bundles.GetX509BundleForTrustDomain(td)
	if err != nil || !b.Equal(e.ca.X509Bundle()) {
		t.Errorf("x509 bundle: got %v (%v), want the CA's", b, err)
	}
	if _, _, err := x509svid.Verify(xc.SVIDs[0].Certificates, xc.Bundles, x509svid.WithTime(e.clk.Now())); err != nil {
		t.Errorf("verify svid against fetched bundle: %v", err)
	}

	xb, err := c.FetchX509Bundles(ctx)
	if err != nil || xb.Len() != 1 {
		t.Fatalf("FetchX509Bundles: got %v, %v", xb, err)
	}

	js, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "gateway", ExtraAudiences: []string{"policyd"}})
	if err != nil {
		t.Fatalf("FetchJWTSVID: %v", err)
	}
	if js.ID != inst.ID {
		t.Errorf("jwt sub: got %s, want %s", js.ID, inst.ID)
	}
	jb, err := c.FetchJWTBundles(ctx)
	if err != nil {
		t.Fatalf("FetchJWTBundles: %v", err)
	}
	parsed, err := jwtsvid.ParseAndValidate(js.Marshal(), jb, []string{"policyd"})
	if err != nil {
		t.Fatalf("ParseAndValidate against fetched bundle: %v", err)
	}
	if parsed.Claims[ca.InstanceClaim] != inst.Name {
		t.Errorf("instance claim: got %v, want %s", parsed.Claims[ca.InstanceClaim], inst.Name)
	}
	if _, err := jwtsvid.ParseAndValidate(js.Marshal(), jb, []string{"nobody"}); err == nil {
		t.Error("ParseAndValidate with wrong audience: got nil error")
	}

	v, err := c.ValidateJWTSVID(ctx, js.Marshal(), "gateway")
	if err != nil || v.ID != inst.ID {
		t.Fatalf("ValidateJWTSVID: got %v, %v", v, err)
	}
	if _, err := c.ValidateJWTSVID(ctx, js.Marshal(), "nobody"); status.Code(err) != codes.InvalidArgument {
		t.Errorf("ValidateJWTSVID wrong audience: got %v, want InvalidArgument", err)
	}
	other := fnID(t, "other")
	if _, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "gateway", Subject: other}); status.Code(err) != codes.PermissionDenied {
		t.Errorf("FetchJWTSVID for another id: got %v, want PermissionDenied", err)
	}
	// Expired by the server's clock.
	e.clk.Add(6 * time.Minute)
	if _, err := c.ValidateJWTSVID(ctx, js.Marshal(), "gateway"); status.Code(err) != codes.InvalidArgument {
		t.Errorf("ValidateJWTSVID expired: got %v, want InvalidArgument", err)
	}
}

type watcher struct{ updates chan *spiffewl.X509Context }

func (w watcher) OnX509ContextUpdate(c *spiffewl.X509Context) { w.updates <- c }
func (w watcher) OnX509ContextWatchError(error)               {}

func TestRotationArrivesOnOpenStream(t *testing.T) {
	e := newEnv(t)
	inst := e.instance(t, "hello", e.self)
	c := client(t, e.serve(t, inst))
	ctx, cancel := context.WithCancel(ctxT(t))
	w := watcher{updates: make(chan *spiffewl.X509Context, 8)}
	done := make(chan error, 1)
	go func() { done <- c.WatchX509Context(ctx, w) }()
	defer func() { cancel(); <-done }()

	next := func(what string) *spiffewl.X509Context {
		t.Helper()
		select {
		case u := <-w.updates:
			return u
		case <-time.After(10 * time.Second):
			t.Fatalf("no update for %s", what)
			return nil
		}
	}
	first := next("first message")
	leaf0 := first.SVIDs[0].Certificates[0]

	// Before half life a refresh sends nothing.
	e.clk.Add(10 * time.Second)
	e.srv.Refresh()
	select {
	case u := <-w.updates:
		t.Fatalf("unexpected update before half life: serial %v", u.SVIDs[0].Certificates[0].SerialNumber)
	case <-time.After(200 * time.Millisecond):
	}

	// Past half life (TTL 2 min): a new SVID on the same stream.
	e.clk.Add(time.Minute)
	e.srv.Refresh()
	second := next("svid rotation")
	leaf1 := second.SVIDs[0].Certificates[0]
	if leaf1.SerialNumber.Cmp(leaf0.SerialNumber) == 0 {
		t.Fatal("rotation sent the same certificate")
	}
	if !leaf1.NotBefore.After(leaf0.NotBefore) || second.SVIDs[0].ID != inst.ID {
		t.Errorf("rotated svid: notBefore %v (was %v), id %s", leaf1.NotBefore, leaf0.NotBefore, second.SVIDs[0].ID)
	}

	// CA rotation: the published successor reaches the stream at once.
	e.clk.Add(30 * time.Minute)
	if err := e.ca.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	third := next("bundle change")
	b, err := third.Bundles.GetX509BundleForTrustDomain(td)
	if err != nil || len(b.X509Authorities()) != 2 {
		t.Fatalf("bundle after ca prepare: got %v (%v), want 2 authorities", b, err)
	}
}

func TestMissingHeaderIsInvalidArgument(t *testing.T) {
	e := newEnv(t)
	path := e.serve(t, e.instance(t, "hello", e.self))
	conn, err := grpc.NewClient("unix://"+path, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	wc := workload.NewSpiffeWorkloadAPIClient(conn)
	ctx := ctxT(t)

	if _, err := wc.FetchJWTSVID(ctx, &workload.JWTSVIDRequest{Audience: []string{"a"}}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("FetchJWTSVID: got %v, want InvalidArgument", err)
	}
	stream, err := wc.FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err == nil {
		_, err = stream.Recv()
	}
	if status.Code(err) != codes.InvalidArgument {
		t.Errorf("FetchX509SVID: got %v, want InvalidArgument", err)
	}
	bad := metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "false")
	if _, err := wc.FetchJWTSVID(bad, &workload.JWTSVIDRequest{Audience: []string{"a"}}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("header false: got %v, want InvalidArgument", err)
	}
	good := metadata.AppendToOutgoingContext(ctx, "workload.spiffe.io", "true")
	if _, err := wc.FetchJWTSVID(good, &workload.JWTSVIDRequest{}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("no audience: got %v, want InvalidArgument", err)
	}
	if _, err := wc.FetchJWTSVID(good, &workload.JWTSVIDRequest{Audience: []string{"a"}}); err != nil {
		t.Errorf("with header: got %v, want success", err)
	}
	if _, err := wc.ValidateJWTSVID(good, &workload.ValidateJWTSVIDRequest{Audience: "a", Svid: "x.y.z"}); status.Code(err) != codes.InvalidArgument {
		t.Errorf("garbage token: got %v, want InvalidArgument", err)
	}
}

func TestUnattestedCallersArePermissionDenied(t *testing.T) {
	e := newEnv(t)
	ctx := ctxT(t)

	t.Run("other cgroup", func(t *testing.T) {
		inst := e.instance(t, "b", filepath.Join(e.mount, "zfaas-idtest-not-this-process"))
		c := client(t, e.serve(t, inst))
		if _, err := c.FetchX509SVID(ctx); status.Code(err) != codes.PermissionDenied {
			t.Errorf("FetchX509SVID: got %v, want PermissionDenied", err)
		}
		if _, err := c.FetchJWTSVID(ctx, jwtsvid.Params{Audience: "a"}); status.Code(err) != codes.PermissionDenied {
			t.Errorf("FetchJWTSVID: got %v, want PermissionDenied", err)
		}
		if _, err := c.FetchJWTBundles(ctx); status.Code(err) != codes.PermissionDenied {
			t.Errorf("FetchJWTBundles: got %v, want PermissionDenied", err)
		}
	})

	t.Run("root cgroup refused without opt-in", func(t *testing.T) {
		srv, err := workloadapi.New(workloadapi.Config{Issuer: e.ca, Clock: e.clk.Now, Attestor: &workloadapi.CgroupAttestor{Mount: e.mount}})
		if err != nil {
			t.Fatal(err)
		}
		defer srv.Stop()
		dir, _ := os.MkdirTemp("", "zid")
		defer os.RemoveAll(dir)
		l, err := workloadapi.ListenInstance(filepath.Join(dir, "r.sock"), e.instance(t, "r", e.mount))
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(l)
		c := client(t, filepath.Join(dir, "r.sock"))
		if _, err := c.FetchX509SVID(ctx); status.Code(err) != codes.PermissionDenied {
			t.Errorf("got %v, want PermissionDenied", err)
		}
	})

	t.Run("plain listener", func(t *testing.T) {
		dir, _ := os.MkdirTemp("", "zid")
		defer os.RemoveAll(dir)
		path := filepath.Join(dir, "p.sock")
		l, err := (&netListenConfig{}).listen(path)
		if err != nil {
			t.Fatal(err)
		}
		go e.srv.Serve(l)
		c := client(t, path)
		if _, err := c.FetchX509SVID(ctx); status.Code(err) != codes.PermissionDenied {
			t.Errorf("got %v, want PermissionDenied", err)
		}
	})
}

const helperEnv = "ZFAAS_IDTEST_HELPER"

// TestHelperProcess is not a test: the cross-instance test runs this binary
// inside an instance's cgroup to act as a sandboxed function. It finds the
// endpoint through SPIFFE_ENDPOINT_SOCKET like any SPIFFE workload.
func TestHelperProcess(t *testing.T) {
	if os.Getenv(helperEnv) != "1" {
		t.Skip("helper process only")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	svid, err := spiffewl.FetchX509SVID(ctx)
	if err != nil {
		fmt.Printf("RESULT ERR %s\n", status.Code(err))
		return
	}
	fmt.Printf("RESULT OK %s\n", svid.ID)
}

func TestCrossInstanceIsPermissionDenied(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create cgroups and place a process in one")
	}
	e := newEnv(t)
	mk := func(name string) string {
		dir := filepath.Join(e.mount, fmt.Sprintf("zfaas-idtest-%d-%s", os.Getpid(), name))
		if err := os.Mkdir(dir, 0o755); err != nil {
			t.Skipf("cgroup v2 not writable: %v", err)
		}
		t.Cleanup(func() {
			for range 50 {
				if err := os.Remove(dir); err == nil || errors.Is(err, os.ErrNotExist) {
					return
				}
				time.Sleep(100 * time.Millisecond)
			}
			t.Errorf("could not remove cgroup %s", dir)
		})
		return dir
	}
	cgA, cgB := mk("a"), mk("b")
	// A production attestor: no root-cgroup opt-in.
	srv, err := workloadapi.New(workloadapi.Config{Issuer: e.ca, Clock: e.clk.Now, Attestor: &workloadapi.CgroupAttestor{Mount: e.mount}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(srv.Stop)
	instA, instB := e.instance(t, "fa", cgA), e.instance(t, "fb", cgB)
	dir, err := os.MkdirTemp("", "zid")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	sockA, sockB := filepath.Join(dir, "a.sock"), filepath.Join(dir, "b.sock")
	for path, inst := range map[string]workloadapi.Instance{sockA: instA, sockB: instB} {
		l, err := workloadapi.ListenInstance(path, inst)
		if err != nil {
			t.Fatal(err)
		}
		go srv.Serve(l)
	}

	runInA := func(t *testing.T, sock string) string {
		t.Helper()
		fd, err := syscall.Open(cgA, syscall.O_DIRECTORY|syscall.O_RDONLY|syscall.O_CLOEXEC, 0)
		if err != nil {
			t.Fatal(err)
		}
		defer syscall.Close(fd)
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1", "-test.v")
		cmd.Env = append(os.Environ(), helperEnv+"=1", workloadapi.EndpointEnv+"="+workloadapi.EndpointAddr(sock))
		cmd.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true, CgroupFD: fd}
		out, err := cmd.CombinedOutput()
		if err != nil {
			t.Fatalf("helper: %v\n%s", err, out)
		}
		sc := bufio.NewScanner(strings.NewReader(string(out)))
		for sc.Scan() {
			if r, ok := strings.CutPrefix(sc.Text(), "RESULT "); ok {
				return r
			}
		}
		t.Fatalf("helper printed no result:\n%s", out)
		return ""
	}

	t.Run("own endpoint", func(t *testing.T) {
		if got, want := runInA(t, sockA), "OK "+instA.ID.String(); got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	})
	t.Run("other instance's endpoint", func(t *testing.T) {
		if got, want := runInA(t, sockB), "ERR PermissionDenied"; got != want {
			t.Errorf("got %q, want %q", got, want)
		}
	})
}
