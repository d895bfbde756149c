package workerapi_test

import (
	"bytes"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"net"
	"net/http"
	"reflect"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/zfaas/zfaas/api"
	"github.com/zfaas/zfaas/identity/ca"
	"github.com/zfaas/zfaas/runtime/archive"
	"github.com/zfaas/zfaas/runtime/pool"
	"github.com/zfaas/zfaas/runtime/worker"
	"github.com/zfaas/zfaas/runtime/workerapi"
	"github.com/zfaas/zfaas/store"
)

// workerLocal is the adapter a composition root needs to serve a
// *worker.Worker: it converts worker.Load to workerapi.Load.
type workerLocal struct{ *worker.Worker }

func (l workerLocal) Load() workerapi.Load { return workerapi.Load(l.Worker.Load()) }

var _ workerapi.Local = workerLocal{}

var td = spiffeid.RequireTrustDomainFromString("zfaas.test")

const (
	gatewayID = "spiffe://zfaas.test/gateway/gw1"
	workerID  = "spiffe://zfaas.test/worker/w1"
)

// pki is a real identity CA in a temp dir that mints SVIDs.
type pki struct {
	t  testing.TB
	ca *ca.CA
}

func newPKI(t testing.TB) *pki {
	t.Helper()
	authority, err := ca.New(context.Background(), ca.Config{TrustDomain: td, Dir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { authority.Close() })
	return &pki{t: t, ca: authority}
}

func (p *pki) mint(id string) *x509svid.SVID {
	p.t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		p.t.Fatal(err)
	}
	s, err := p.ca.MintX509SVID(context.Background(), ca.X509Params{ID: spiffeid.RequireFromString(id), PublicKey: key.Public()})
	if err != nil {
		p.t.Fatal(err)
	}
	return &x509svid.SVID{ID: s.ID, Certificates: s.Certificates, PrivateKey: key}
}

// fakeLocal is a Local whose Invoke runs fn and counts its calls.
type fakeLocal struct {
	fn      func(ctx context.Context, inv api.Invocation) (*api.InvocationResult, error)
	calls   atomic.Int64
	mu      sync.Mutex
	evicted []api.Version
	load    workerapi.Load
}

func (f *fakeLocal) Invoke(ctx context.Context, inv api.Invocation) (*api.InvocationResult, error) {
	f.calls.Add(1)
	f.mu.Lock()
	fn := f.fn
	f.mu.Unlock()
	return fn(ctx, inv)
}

func (f *fakeLocal) setFn(fn func(ctx context.Context, inv api.Invocation) (*api.InvocationResult, error)) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.fn = fn
}

func (f *fakeLocal) Evict(v api.Version) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.evicted = append(f.evicted, v)
}

func (f *fakeLocal) Load() workerapi.Load { return f.load }

func echo(_ context.Context, inv api.Invocation) (*api.InvocationResult, error) {
	return &api.InvocationResult{Payload: inv.Payload}, nil
}

// trackingListener remembers accepted connections so a test can abort them
// as a crashed machine would.
type trackingListener struct {
	net.Listener
	mu    sync.Mutex
	conns []net.Conn
}

func (l *trackingListener) Accept() (net.Conn, error) {
	c, err := l.Listener.Accept()
	if err == nil {
		l.mu.Lock()
		l.conns = append(l.conns, c)
		l.mu.Unlock()
	}
	return c, err
}

// reset aborts every connection with a TCP RST.
func (l *trackingListener) reset() {
	l.Listener.Close()
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range l.conns {
		if tc, ok := c.(*net.TCPConn); ok {
			tc.SetLinger(0)
		}
		c.Close()
	}
}

type testServer struct {
	addr string
	gs   *grpc.Server
	lis  *trackingListener
}

// startServer serves local as worker w1 over real mTLS on loopback.
func startServer(t testing.TB, p *pki, local workerapi.Local, opts ...workerapi.Option) *testServer {
	t.Helper()
	srv, err := workerapi.NewServer(local, append([]workerapi.Option{workerapi.WithTrustDomain(td)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	creds := grpccredentials.MTLSServerCredentials(p.mint(workerID), p.ca.X509Bundle(), tlsconfig.AuthorizeMemberOf(td))
	gs := grpc.NewServer(append(srv.ServerOptions(), grpc.Creds(creds))...)
	srv.Register(gs)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	lis := &trackingListener{Listener: l}
	go gs.Serve(lis)
	t.Cleanup(gs.Stop)
	return &testServer{addr: l.Addr().String(), gs: gs, lis: lis}
}

// dial connects to addr as caller, expecting the worker to be want.
func dial(t testing.TB, p *pki, addr, caller, want string, opts ...workerapi.Option) *workerapi.Client {
	t.Helper()
	creds := grpccredentials.MTLSClientCredentials(p.mint(caller), p.ca.X509Bundle(), tlsconfig.AuthorizeID(spiffeid.RequireFromString(want)))
	c, err := workerapi.Dial(addr, creds, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func testVersion(mode api.Mode) api.Version {
	return api.Version{
		Tenant: "acme", Function: "hello", Version: 7,
		Config: api.FunctionConfig{
			Runtime: api.RuntimeProvided, Handler: "h", Mode: mode, MemoryMB: 256, TimeoutSeconds: 12,
			Env: map[string]string{"GREETING": "hi", "EMPTY": ""}, MaxConcurrency: 3,
		},
		PackageDigest: "sha256:" + strings.Repeat("ab", 32),
		PackageSize:   1234,
		Description:   "the hello function",
		CreatedAt:     time.Date(2026, 11, 22, 19, 15, 58, 123456789, time.UTC),
	}
}

func TestInvokeRoundTrip(t *testing.T) {
	p := newPKI(t)
	tests := []struct {
		name string
		inv  api.Invocation
		res  *api.InvocationResult
	}{
		{
			name: "lambda",
			inv: api.Invocation{
				ID: "inv-1", Version: testVersion(api.ModeLambda), Payload: []byte(`{"name":"zfaas"}`),
				MaxConcurrency: 3, WaitBudget: 1500 * time.Millisecond, TraceID: "Root=1-abc",
			},
			res: &api.InvocationResult{
				Payload:   []byte(`{"error":true}`),
				FuncErr:   &api.FunctionError{ErrorType: "Handled", ErrorMessage: "boom", StackTrace: []string{"a.go:1", "b.go:2"}},
				ColdStart: true, InitDuration: 42 * time.Millisecond, Duration: 7 * time.Millisecond, InstanceID: "i-123",
			},
		},
		{
			name: "lambda-warm-minimal",
			inv:  api.Invocation{ID: "inv-2", Version: api.Version{Tenant: "t", Function: "f", Version: 1}},
			res:  &api.InvocationResult{Duration: time.Microsecond},
		},
		{
			name: "http",
			inv: api.Invocation{
				ID: "inv-3", Version: testVersion(api.ModeHTTP), Payload: []byte("body bytes"),
				HTTP: &api.HTTPRequest{Method: "PUT", Path: "/items/9", RawQuery: "a=1&b=2",
					Header: http.Header{"Content-Type": {"text/plain"}, "X-Multi": {"1", "2"}}},
			},
			res: &api.InvocationResult{
				Payload: []byte("created"), StatusCode: 201,
				Header:   http.Header{"Location": {"/items/9"}, "Set-Cookie": {"a=1", "b=2"}},
				Duration: 3 * time.Millisecond, InstanceID: "i-9",
			},
		},
		{
			name: "http-empty-header",
			inv: api.Invocation{ID: "inv-4", Version: testVersion(api.ModeHTTP),
				HTTP: &api.HTTPRequest{Method: "GET", Path: "/", Header: http.Header{}}},
			res: &api.InvocationResult{StatusCode: 204, Header: http.Header{}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var got api.Invocation
			local := &fakeLocal{fn: func(_ context.Context, inv api.Invocation) (*api.InvocationResult, error) {
				got = inv
				return tt.res, nil
			}}
			ts := startServer(t, p, local)
			c := dial(t, p, ts.addr, gatewayID, workerID)
			res, err := c.Invoke(context.Background(), tt.inv)
			if err != nil {
				t.Fatalf("Invoke: %v", err)
			}
			if !reflect.DeepEqual(got, tt.inv) {
				t.Errorf("worker got %+v, want %+v", got, tt.inv)
			}
			if !reflect.DeepEqual(res, tt.res) {
				t.Errorf("got result %+v, want %+v", res, tt.res)
			}
		})
	}
}

func TestErrorsRoundTrip(t *testing.T) {
	p := newPKI(t)
	sentinels := map[string]error{
		"api.ErrNoCapacity": api.ErrNoCapacity, "api.ErrTimeout": api.ErrTimeout, "api.ErrCrashed": api.ErrCrashed,
		"api.ErrInit": api.ErrInit, "api.ErrResponseTooLarge": api.ErrResponseTooLarge, "store.ErrNotFound": store.ErrNotFound,
		"pool.ErrClosed": pool.ErrClosed, "context.Canceled": context.Canceled, "context.DeadlineExceeded": context.DeadlineExceeded,
		"ErrWorkerUnavailable": workerapi.ErrWorkerUnavailable, "ErrNotDelivered": workerapi.ErrNotDelivered,
		"ErrLost": workerapi.ErrLost, "ErrUnauthorized": workerapi.ErrUnauthorized, "ErrRequestTooLarge": workerapi.ErrRequestTooLarge,
	}
	initErr := &api.InitError{FuncErr: api.FunctionError{ErrorType: "Runtime.ExitError", ErrorMessage: "instance exited during init: exit status 3"}}
	pkgErr := &archive.Error{Code: archive.CodeUnsafePath, Msg: `entry "../x" climbs out of the package`}
	tests := []struct {
		name  string
		local error
		is    []string
		code  codes.Code
		check func(t *testing.T, err error)
	}{
		{name: "no capacity", local: fmt.Errorf("%w: %w", api.ErrNoCapacity, pool.ErrNoCapacity),
			is: []string{"api.ErrNoCapacity"}, code: codes.ResourceExhausted},
		{name: "timeout", local: fmt.Errorf("%w after %s", api.ErrTimeout, 3*time.Second),
			is: []string{"api.ErrTimeout"}, code: codes.DeadlineExceeded},
		{name: "crashed", local: fmt.Errorf("%w: %s", api.ErrCrashed, "killed by signal 9"),
			is: []string{"api.ErrCrashed"}, code: codes.Aborted},
		{name: "response too large", local: fmt.Errorf("%w: over 6291456 bytes", api.ErrResponseTooLarge),
			is: []string{"api.ErrResponseTooLarge"}, code: codes.ResourceExhausted},
		{name: "init error", local: initErr, is: []string{"api.ErrInit"},
			check: func(t *testing.T, err error) {
				var ie *api.InitError
				if !errors.As(err, &ie) {
					t.Fatalf("errors.As(%v, *api.InitError) = false, want true", err)
				}
				if !reflect.DeepEqual(ie.FuncErr, initErr.FuncErr) {
					t.Errorf("got FuncErr %+v, want %+v", ie.FuncErr, initErr.FuncErr)
				}
			}},
		{name: "init without report", local: fmt.Errorf("start: %w", api.ErrInit),
			is: []string{"api.ErrInit"}, code: codes.FailedPrecondition},
		{name: "package refused", local: fmt.Errorf("unpack package sha256:ab: %w", pkgErr),
			check: func(t *testing.T, err error) {
				var ae *archive.Error
				if !errors.As(err, &ae) {
					t.Fatalf("errors.As(%v, *archive.Error) = false, want true", err)
				}
				if *ae != *pkgErr {
					t.Errorf("got %+v, want %+v", *ae, *pkgErr)
				}
			}},
		{name: "package not found", local: fmt.Errorf("fetch package sha256:ab: %w", store.ErrNotFound),
			is: []string{"store.ErrNotFound"}, code: codes.NotFound},
		{name: "worker closing", local: pool.ErrClosed,
			is: []string{"pool.ErrClosed", "ErrWorkerUnavailable", "ErrNotDelivered"}, code: codes.Unavailable},
		{name: "canceled", local: context.Canceled, is: []string{"context.Canceled"}, code: codes.Canceled},
		{name: "deadline", local: context.DeadlineExceeded, is: []string{"context.DeadlineExceeded"}, code: codes.DeadlineExceeded},
		{name: "platform failure", local: errors.New("mkdir /var/lib/zfaas: no space left on device"), code: codes.Internal,
			check: func(t *testing.T, err error) {
				var re *workerapi.RemoteError
				if !errors.As(err, &re) {
					t.Fatalf("errors.As(%v, *RemoteError) = false, want true", err)
				}
			}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			local := &fakeLocal{fn: func(context.Context, api.Invocation) (*api.InvocationResult, error) { return nil, tt.local }}
			ts := startServer(t, p, local)
			c := dial(t, p, ts.addr, gatewayID, workerID)
			_, err := c.Invoke(context.Background(), api.Invocation{ID: "inv", Version: testVersion(api.ModeLambda)})
			if err == nil {
				t.Fatal("Invoke succeeded, want an error")
			}
			want := map[string]bool{}
			for _, n := range tt.is {
				want[n] = true
			}
			for n, s := range sentinels {
				if got := errors.Is(err, s); got != want[n] {
					t.Errorf("errors.Is(%q, %s) = %v, want %v", err, n, got, want[n])
				}
			}
			if !strings.Contains(err.Error(), tt.local.Error()) {
				t.Errorf("got message %q, want it to contain the worker's %q", err, tt.local)
			}
			if tt.code != codes.OK {
				if got := status.Code(err); got != tt.code {
					t.Errorf("got status code %v, want %v", got, tt.code)
				}
			}
			if tt.check != nil {
				tt.check(t, err)
			}
		})
	}
}

func TestCallerAuthorization(t *testing.T) {
	p := newPKI(t)
	tests := []struct {
		name   string
		caller string
		opts   []workerapi.Option
		ok     bool
	}{
		{name: "gateway", caller: gatewayID, ok: true},
		{name: "user", caller: "spiffe://zfaas.test/user/alice"},
		{name: "function", caller: "spiffe://zfaas.test/ns/acme/fn/hello"},
		{name: "other worker", caller: "spiffe://zfaas.test/worker/w2"},
		{name: "gateway-like path", caller: "spiffe://zfaas.test/gateway/gw1/extra"},
		{name: "custom authorizer", caller: "spiffe://zfaas.test/user/alice", ok: true,
			opts: []workerapi.Option{workerapi.WithAuthorizer(func(id spiffeid.ID) error {
				if id.Path() != "/user/alice" {
					return errors.New("not alice")
				}
				return nil
			})}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			local := &fakeLocal{fn: echo}
			ts := startServer(t, p, local, tt.opts...)
			c := dial(t, p, ts.addr, tt.caller, workerID)
			_, err := c.Invoke(context.Background(), api.Invocation{ID: "inv", Version: testVersion(api.ModeLambda)})
			_, lerr := c.Load(context.Background())
			eerr := c.Evict(context.Background(), testVersion(api.ModeLambda))
			if tt.ok {
				if err != nil || lerr != nil || eerr != nil {
					t.Fatalf("got errors %v, %v, %v, want none", err, lerr, eerr)
				}
				return
			}
			for _, err := range []error{err, lerr, eerr} {
				if !errors.Is(err, workerapi.ErrUnauthorized) {
					t.Errorf("got %v, want ErrUnauthorized", err)
				}
				if got := status.Code(err); got != codes.PermissionDenied {
					t.Errorf("got code %v, want PermissionDenied", got)
				}
			}
			if n := local.calls.Load(); n != 0 {
				t.Errorf("worker ran %d invocations for a refused caller, want 0", n)
			}
			local.mu.Lock()
			defer local.mu.Unlock()
			if len(local.evicted) != 0 {
				t.Errorf("worker evicted for a refused caller")
			}
		})
	}
}

func TestClientPinsWorkerID(t *testing.T) {
	p := newPKI(t)
	local := &fakeLocal{fn: echo}
	ts := startServer(t, p, local)
	c := dial(t, p, ts.addr, gatewayID, "spiffe://zfaas.test/worker/w2")
	_, err := c.Invoke(context.Background(), api.Invocation{ID: "inv", Version: testVersion(api.ModeLambda)})
	if !errors.Is(err, workerapi.ErrWorkerUnavailable) || !errors.Is(err, workerapi.ErrNotDelivered) {
		t.Fatalf("got %v, want ErrWorkerUnavailable and ErrNotDelivered", err)
	}
	if errors.Is(err, workerapi.ErrLost) {
		t.Errorf("got ErrLost for a refused handshake, want ErrNotDelivered only")
	}
	if n := local.calls.Load(); n != 0 {
		t.Errorf("worker ran %d invocations for a client that refused it, want 0", n)
	}
}

func TestNewServerNeedsCallers(t *testing.T) {
	if _, err := workerapi.NewServer(&fakeLocal{fn: echo}); err == nil {
		t.Fatal("NewServer without trust domain or authorizer succeeded, want an error")
	}
}

func TestUnreachableWorker(t *testing.T) {
	p := newPKI(t)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	c := dial(t, p, addr, gatewayID, workerID)
	_, err = c.Invoke(context.Background(), api.Invocation{ID: "inv", Version: testVersion(api.ModeLambda)})
	if !errors.Is(err, workerapi.ErrWorkerUnavailable) || !errors.Is(err, workerapi.ErrNotDelivered) || errors.Is(err, workerapi.ErrLost) {
		t.Fatalf("got %v, want ErrWorkerUnavailable and ErrNotDelivered", err)
	}
}

func TestWorkerDiesMidCall(t *testing.T) {
	p := newPKI(t)
	for _, kill := range []struct {
		name string
		fn   func(*testServer)
	}{
		{"stop", func(ts *testServer) { ts.gs.Stop() }},
		{"reset", func(ts *testServer) { ts.lis.reset() }},
	} {
		t.Run(kill.name, func(t *testing.T) {
			entered := make(chan struct{})
			local := &fakeLocal{fn: func(ctx context.Context, _ api.Invocation) (*api.InvocationResult, error) {
				close(entered)
				<-ctx.Done()
				return nil, ctx.Err()
			}}
			ts := startServer(t, p, local)
			c := dial(t, p, ts.addr, gatewayID, workerID)
			go func() {
				<-entered
				kill.fn(ts)
			}()
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			_, err := c.Invoke(ctx, api.Invocation{ID: "inv", Version: testVersion(api.ModeLambda)})
			if !errors.Is(err, workerapi.ErrWorkerUnavailable) || !errors.Is(err, workerapi.ErrLost) || errors.Is(err, workerapi.ErrNotDelivered) {
				t.Fatalf("got %v, want ErrWorkerUnavailable and ErrLost", err)
			}
			// The worker is gone: the next call is refused before it is sent.
			ts.gs.Stop()
			_, err = c.Invoke(ctx, api.Invocation{ID: "inv2", Version: testVersion(api.ModeLambda)})
			if !errors.Is(err, workerapi.ErrWorkerUnavailable) || !errors.Is(err, workerapi.ErrNotDelivered) {
				t.Fatalf("next call: got %v, want ErrWorkerUnavailable and ErrNotDelivered", err)
			}
			if n := local.calls.Load(); n != 1 {
				t.Errorf("worker saw %d invocations, want 1", n)
			}
		})
	}
}

func TestDeadlinePropagation(t *testing.T) {
	p := newPKI(t)
	t.Run("deadline reaches worker", func(t *testing.T) {
		var got time.Time
		var had bool
		local := &fakeLocal{fn: func(ctx context.Context, inv api.Invocation) (*api.InvocationResult, error) {
			got, had = ctx.Deadline()
			return &api.InvocationResult{}, nil
		}}
		ts := startServer(t, p, local)
		c := dial(t, p, ts.addr, gatewayID, workerID)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		want, _ := ctx.Deadline()
		if _, err := c.Invoke(ctx, api.Invocation{ID: "inv", Version: testVersion(api.ModeLambda)}); err != nil {
			t.Fatal(err)
		}
		if !had {
			t.Fatal("worker's context had no deadline, want the caller's")
		}
		if d := want.Sub(got); d < -50*time.Millisecond || d > 500*time.Millisecond {
			t.Errorf("worker's deadline is %v off the caller's, want within (-50ms, 500ms)", d)
		}
	})
	t.Run("deadline passes", func(t *testing.T) {
		done := make(chan error, 1)
		local := &fakeLocal{fn: func(ctx context.Context, inv api.Invocation) (*api.InvocationResult, error) {
			<-ctx.Done()
			done <- ctx.Err()
			return nil, ctx.Err()
		}}
		ts := startServer(t, p, local)
		c := dial(t, p, ts.addr, gatewayID, workerID)
		ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
		defer cancel()
		t0 := time.Now()
		_, err := c.Invoke(ctx, api.Invocation{ID: "inv", Version: testVersion(api.ModeLambda)})
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v, want context.DeadlineExceeded", err)
		}
		if errors.Is(err, workerapi.ErrWorkerUnavailable) || errors.Is(err, api.ErrTimeout) {
			t.Errorf("got %v, want only the caller's deadline", err)
		}
		if el := time.Since(t0); el > 3*time.Second {
			t.Errorf("call took %v, want about 300ms", el)
		}
		select {
		case <-done:
			// DeadlineExceeded, or Canceled when the caller's reset of the
			// stream arrives before the worker's own timer fires.
		case <-time.After(5 * time.Second):
			t.Error("worker's context did not end")
		}
	})
	t.Run("caller cancels", func(t *testing.T) {
		local := &fakeLocal{fn: func(ctx context.Context, inv api.Invocation) (*api.InvocationResult, error) {
			<-ctx.Done()
			return nil, ctx.Err()
		}}
		ts := startServer(t, p, local)
		c := dial(t, p, ts.addr, gatewayID, workerID)
		ctx, cancel := context.WithCancel(context.Background())
		time.AfterFunc(100*time.Millisecond, cancel)
		_, err := c.Invoke(ctx, api.Invocation{ID: "inv", Version: testVersion(api.ModeLambda)})
		if !errors.Is(err, context.Canceled) {
			t.Fatalf("got %v, want context.Canceled", err)
		}
	})
}

func TestMessageLimits(t *testing.T) {
	p := newPKI(t)
	const small = 64 << 10
	big := bytes.Repeat([]byte("x"), 100<<10)
	reply := func(payload []byte) func(context.Context, api.Invocation) (*api.InvocationResult, error) {
		return func(context.Context, api.Invocation) (*api.InvocationResult, error) {
			return &api.InvocationResult{Payload: payload}, nil
		}
	}
	tests := []struct {
		name             string
		server, client   int
		payload, resp    []byte
		wantIs           error
		wantNotDelivered bool
	}{
		{name: "request over client limit", server: small, client: small, payload: big, resp: nil,
			wantIs: workerapi.ErrRequestTooLarge, wantNotDelivered: true},
		{name: "request over server limit", server: small, client: 1 << 20, payload: big,
			wantIs: workerapi.ErrRequestTooLarge, wantNotDelivered: true},
		{name: "response over server limit", server: small, client: 1 << 20, resp: big, wantIs: api.ErrResponseTooLarge},
		{name: "response over client limit", server: 1 << 20, client: small, resp: big, wantIs: api.ErrResponseTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			local := &fakeLocal{fn: reply(tt.resp)}
			ts := startServer(t, p, local, workerapi.WithMaxMessageBytes(tt.server))
			c := dial(t, p, ts.addr, gatewayID, workerID, workerapi.WithMaxMessageBytes(tt.client))
			_, err := c.Invoke(context.Background(), api.Invocation{ID: "inv", Version: testVersion(api.ModeLambda), Payload: tt.payload})
			if !errors.Is(err, tt.wantIs) {
				t.Fatalf("got %v, want %v", err, tt.wantIs)
			}
			if tt.wantNotDelivered {
				var mbe *http.MaxBytesError
				if !errors.As(err, &mbe) {
					t.Errorf("errors.As(%v, *http.MaxBytesError) = false, want true", err)
				}
				if n := local.calls.Load(); n != 0 {
					t.Errorf("worker ran %d invocations of an oversized request, want 0", n)
				}
			}
			// The connection is still good.
			local.setFn(echo)
			if _, err := c.Invoke(context.Background(), api.Invocation{ID: "ok", Version: testVersion(api.ModeLambda), Payload: []byte("{}")}); err != nil {
				t.Errorf("next call: %v", err)
			}
		})
	}
	t.Run("default fits 6 MiB each way", func(t *testing.T) {
		payload := bytes.Repeat([]byte("y"), 6<<20)
		local := &fakeLocal{fn: echo}
		ts := startServer(t, p, local)
		c := dial(t, p, ts.addr, gatewayID, workerID)
		res, err := c.Invoke(context.Background(), api.Invocation{ID: "inv", Version: testVersion(api.ModeHTTP), Payload: payload,
			HTTP: &api.HTTPRequest{Method: "POST", Path: "/", Header: http.Header{"X-Big": {strings.Repeat("h", 512<<10)}}}})
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(res.Payload, payload) {
			t.Errorf("got %d bytes back, want the %d sent", len(res.Payload), len(payload))
		}
	})
}

func TestEvictAndLoad(t *testing.T) {
	p := newPKI(t)
	load := workerapi.Load{
		Versions:  map[string]pool.Stats{"acme/hello/7": {Idle: 2, Total: 5}, "acme/bye/1": {Idle: 0, Total: 1}},
		Instances: 6, MemoryMB: 768, Inflight: 4,
	}
	local := &fakeLocal{fn: echo, load: load}
	ts := startServer(t, p, local)
	c := dial(t, p, ts.addr, gatewayID, workerID)
	v := testVersion(api.ModeLambda)
	if err := c.Evict(context.Background(), v); err != nil {
		t.Fatalf("Evict: %v", err)
	}
	local.mu.Lock()
	if len(local.evicted) != 1 || !reflect.DeepEqual(local.evicted[0], v) {
		t.Errorf("worker evicted %+v, want [%+v]", local.evicted, v)
	}
	local.mu.Unlock()
	got, err := c.Load(context.Background())
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if !reflect.DeepEqual(got, load) {
		t.Errorf("got load %+v, want %+v", got, load)
	}
}

// TestDrainingWorker: a worker that stops gracefully finishes the call it
// runs, and a call made meanwhile is refused undelivered, so the gateway
// can place it elsewhere.
func TestDrainingWorker(t *testing.T) {
	p := newPKI(t)
	entered, release := make(chan struct{}), make(chan struct{})
	local := &fakeLocal{fn: func(_ context.Context, inv api.Invocation) (*api.InvocationResult, error) {
		if inv.ID == "first" {
			close(entered)
			<-release
		}
		return &api.InvocationResult{Payload: []byte(inv.ID)}, nil
	}}
	ts := startServer(t, p, local)
	c := dial(t, p, ts.addr, gatewayID, workerID)
	first := make(chan error, 1)
	go func() {
		_, err := c.Invoke(context.Background(), api.Invocation{ID: "first", Version: testVersion(api.ModeLambda)})
		first <- err
	}()
	<-entered
	stopped := make(chan struct{})
	go func() {
		ts.gs.GracefulStop()
		close(stopped)
	}()
	time.Sleep(100 * time.Millisecond)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	// The call is refused undelivered; on a slow machine it may instead
	// beat the drain and run. It must never come back lost.
	_, err := c.Invoke(ctx, api.Invocation{ID: "second", Version: testVersion(api.ModeLambda)})
	ran := int64(2)
	if err != nil {
		ran = 1
		if !errors.Is(err, workerapi.ErrWorkerUnavailable) || !errors.Is(err, workerapi.ErrNotDelivered) {
			t.Errorf("call during drain: got %v, want ErrWorkerUnavailable and ErrNotDelivered", err)
		}
	}
	close(release)
	if err := <-first; err != nil {
		t.Errorf("call in flight during drain: %v", err)
	}
	<-stopped
	if n := local.calls.Load(); n != ran {
		t.Errorf("worker ran %d invocations, want %d", n, ran)
	}
}
