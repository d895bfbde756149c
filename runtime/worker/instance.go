package worker

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/zfaas/zfaas/api"
	"github.com/zfaas/zfaas/runtime/bootstrap"
	"github.com/zfaas/zfaas/runtime/lambdaapi"
	"github.com/zfaas/zfaas/runtime/sandbox"
)

// instance is one started function instance with its control channel.
type instance struct {
	id      string
	version api.Version
	sb      sandbox.Instance
	rt      *lambdaapi.Server // Lambda mode
	port    int               // HTTP mode
	httpc   *http.Client      // HTTP mode
	cur     atomic.Pointer[string]
	logs    []*lineWriter
	onStop  func()
	stopped sync.Once
	stopErr error
}

func (i *instance) Done() <-chan struct{} { return i.sb.Done() }

func (i *instance) Stop(ctx context.Context) error {
	i.stopped.Do(func() {
		if i.rt != nil {
			i.rt.Close()
		}
		if i.httpc != nil {
			i.httpc.CloseIdleConnections()
		}
		i.stopErr = i.sb.Stop(ctx)
		if i.onStop != nil {
			i.onStop()
		}
		for _, l := range i.logs {
			l.flush()
		}
	})
	return i.stopErr
}

func newInstanceID() string {
	var b [8]byte
	_, _ = rand.Read(b[:])
	return "i-" + hex.EncodeToString(b[:])
}

// command returns argv for a version's runtime and mode.
func (w *Worker) command(v api.Version) ([]string, error) {
	c := v.Config
	task := func(rel string) string { return path.Join(sandbox.TaskRoot, path.Clean("/"+rel)) }
	switch c.Runtime {
	case api.RuntimeProvided:
		return []string{task(api.ProvidedExecutable)}, nil
	case api.RuntimeGo:
		return []string{task(c.Handler)}, nil
	case api.RuntimePython3:
		if c.Mode == api.ModeHTTP {
			return []string{w.cfg.Python3, task(c.Handler)}, nil
		}
		return []string{w.cfg.Python3, path.Join(sandbox.RuntimeRoot, bootstrap.PythonPath)}, nil
	case api.RuntimeNodejs:
		if c.Mode == api.ModeHTTP {
			return []string{w.cfg.Node, task(c.Handler)}, nil
		}
		return []string{w.cfg.Node, path.Join(sandbox.RuntimeRoot, bootstrap.NodejsPath)}, nil
	}
	return nil, fmt.Errorf("unknown runtime %q", c.Runtime)
}

// start performs a cold start: unpack, sandbox, wait until ready.
func (w *Worker) start(ctx context.Context, v api.Version) (*instance, error) {
	ctx, cancel := context.WithTimeout(ctx, w.cfg.InitTimeout)
	defer cancel()
	codeDir, err := w.ensurePackage(ctx, v.PackageDigest)
	if err != nil {
		return nil, err
	}
	argv, err := w.command(v)
	if err != nil {
		return nil, err
	}
	inst := &instance{id: newInstanceID(), version: v}
	env := []string{
		"PATH=/usr/local/bin:/usr/bin:/bin",
		"HOME=/tmp",
		"TMPDIR=/tmp",
		"LANG=C.UTF-8",
		"TZ=UTC",
		"LAMBDA_TASK_ROOT=" + sandbox.TaskRoot,
		"LAMBDA_RUNTIME_DIR=" + sandbox.RuntimeRoot,
		"AWS_LAMBDA_FUNCTION_NAME=" + v.Function,
		"AWS_LAMBDA_FUNCTION_VERSION=" + strconv.FormatInt(v.Version, 10),
		"AWS_LAMBDA_FUNCTION_MEMORY_SIZE=" + strconv.Itoa(v.Config.MemoryMB),
		// Runtime clients such as Rust's lambda_runtime refuse to start
		// without the log names, so they are set as Lambda sets them.
		"AWS_LAMBDA_LOG_GROUP_NAME=/zfaas/" + v.Tenant + "/" + v.Function,
		"AWS_LAMBDA_LOG_STREAM_NAME=" + time.Now().UTC().Format("2006/01/02") + "/[" + strconv.FormatInt(v.Version, 10) + "]" + inst.id,
		"AWS_LAMBDA_INITIALIZATION_TYPE=on-demand",
		"ZFAAS_TENANT=" + v.Tenant,
		"ZFAAS_INSTANCE_ID=" + inst.id,
		"_HANDLER=" + v.Config.Handler,
	}
	env = append(env, w.cfg.Env...)
	if v.Config.Runtime == api.RuntimePython3 {
		env = append(env, "PYTHONUNBUFFERED=1", "PYTHONDONTWRITEBYTECODE=1")
	}
	// The function's own variables win over zfaas's defaults (LANG, TZ, …);
	// reserved names were refused at deploy.
	env = slices.DeleteFunc(env, func(kv string) bool {
		k, _, _ := strings.Cut(kv, "=")
		_, own := v.Config.Env[k]
		return own
	})
	for k, val := range v.Config.Env {
		env = append(env, k+"="+val)
	}
	// The instance's cgroup is known only after Start; the peer check reads
	// it through this pointer.
	// A fast runtime may connect before Start has returned; the check
	// waits for the cgroup (bounded by the init timeout).
	var cgroupDir string
	cgroupKnown := make(chan struct{})
	cgroupOf := func() (string, error) {
		select {
		case <-cgroupKnown:
		case <-time.After(w.cfg.InitTimeout):
			return "", errors.New("instance not started")
		}
		if cgroupDir == "" {
			return "", errors.New("instance not started")
		}
		return cgroupDir, nil
	}
	authorize := func(c net.Conn) error {
		dir, err := cgroupOf()
		if err != nil {
			return err
		}
		return checkLoopbackPeer(c, dir)
	}
	switch v.Config.Mode {
	case api.ModeHTTP:
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		inst.port = port
		env = append(env, "PORT="+strconv.Itoa(port))
		inst.httpc = &http.Client{Transport: &http.Transport{
			DialContext: func(ctx context.Context, network, addr string) (net.Conn, error) {
				var d net.Dialer
				c, err := d.DialContext(ctx, "tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(port)))
				if err != nil {
					return nil, err
				}
				if err := authorize(c); err != nil {
					c.Close()
					return nil, err
				}
				return c, nil
			},
			MaxIdleConnsPerHost:   4,
			IdleConnTimeout:       90 * time.Second,
			ResponseHeaderTimeout: 0,
			DisableCompression:    true,
		}}
	default:
		rt, err := lambdaapi.New(lambdaapi.Config{
			Addr:             "127.0.0.1:0",
			Logger:           w.log,
			FunctionName:     v.Function,
			FunctionVersion:  strconv.FormatInt(v.Version, 10),
			MemoryMB:         v.Config.MemoryMB,
			MaxResponseBytes: w.cfg.MaxResponseBytes,
			Authorize:        authorize,
		})
		if err != nil {
			return nil, fmt.Errorf("runtime api: %w", err)
		}
		inst.rt = rt
		env = append(env, "AWS_LAMBDA_RUNTIME_API="+rt.Addr())
	}
	mounts := []sandbox.Mount{{Source: w.rtDir, Target: sandbox.RuntimeRoot}}
	closeEndpoint := func() {}
	if w.cfg.Identity != nil {
		// The endpoint (or the first SVID files) exists before the sandbox
		// starts, so the function may use its SVID during init;
		// attestation waits for the cgroup.
		spec := EndpointSpec{InstanceID: inst.id, Tenant: v.Tenant, Function: v.Function, CgroupDir: cgroupOf}
		files := w.cfg.IdentityDelivery == DeliverFiles
		var dir string
		var closeFn func()
		var err error
		if files {
			dir, closeFn, err = w.cfg.Identity.(FileIdentity).Files(ctx, spec)
		} else {
			dir, closeFn, err = w.cfg.Identity.Endpoint(ctx, spec)
		}
		if err != nil {
			close(cgroupKnown)
			if inst.rt != nil {
				inst.rt.Close()
			}
			if files {
				return nil, fmt.Errorf("svid files: %w", err)
			}
			return nil, fmt.Errorf("workload api endpoint: %w", err)
		}
		closeEndpoint = closeFn
		if files {
			mounts = append(mounts, sandbox.Mount{Source: dir, Target: SVIDMountDir})
			env = append(env, SVIDDirEnv+"="+SVIDMountDir)
		} else {
			mounts = append(mounts, sandbox.Mount{Source: dir, Target: EndpointMountDir})
			env = append(env, "SPIFFE_ENDPOINT_SOCKET=unix://"+path.Join(EndpointMountDir, EndpointSocket))
		}
	}
	stdout := w.newLineWriter(inst, "stdout")
	stderr := w.newLineWriter(inst, "stderr")
	inst.logs = []*lineWriter{stdout, stderr}
	mem := int64(v.Config.MemoryMB) << 20
	detachEgress := func() {}
	var beforeStart func(context.Context, string) error
	if w.cfg.Egress != nil {
		beforeStart = func(ctx context.Context, cg string) error {
			spec := EgressSpec{InstanceID: inst.id, Tenant: v.Tenant, Function: v.Function, CgroupDir: cg}
			if inst.rt != nil {
				if ap, err := netip.ParseAddrPort(inst.rt.Addr()); err == nil {
					spec.Platform = append(spec.Platform, ap)
				}
			}
			detach, err := w.cfg.Egress.Attach(ctx, spec)
			if err != nil {
				return fmt.Errorf("egress: %w", err)
			}
			var once sync.Once
			detachEgress = func() { once.Do(detach) }
			return nil
		}
	}
	sb, err := w.cfg.Driver.Start(ctx, sandbox.Spec{
		ID:      inst.id,
		CodeDir: codeDir,
		Mounts:  mounts,
		Args:    argv,
		Env:     env,
		WorkDir: sandbox.TaskRoot,
		Limits: sandbox.Limits{
			MemoryBytes: mem,
			// CPU share grows with memory as on Lambda (1 vCPU at 1769 MB),
			// with a floor of half a core so small functions start quickly.
			CPUs: max(0.5, float64(v.Config.MemoryMB)/1769),
		},
		Stdout:      stdout,
		Stderr:      stderr,
		BeforeStart: beforeStart,
	})
	if err != nil {
		close(cgroupKnown)
		if inst.rt != nil {
			inst.rt.Close()
		}
		closeEndpoint()
		detachEgress()
		return nil, fmt.Errorf("start sandbox: %w", err)
	}
	inst.sb = sb
	cg := sb.CgroupV2Path()
	cgroupDir = cg
	close(cgroupKnown)
	w.live.Store(inst.id, cg)
	inst.onStop = func() {
		w.live.Delete(inst.id)
		closeEndpoint()
		detachEgress()
	}
	if err := inst.waitReady(ctx); err != nil {
		stopCtx, c := context.WithTimeout(context.Background(), 5*time.Second)
		defer c()
		inst.Stop(stopCtx)
		return nil, err
	}
	return inst, nil
}

func freePort() (int, error) {
	l, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pick port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// exitReason describes why an instance's process ended.
func exitReason(sb sandbox.Instance) string {
	if err := sb.Err(); err != nil {
		return err.Error()
	}
	return "exit status 0"
}

func (i *instance) waitReady(ctx context.Context) error {
	if i.rt != nil {
		readyCtx, cancel := context.WithCancel(ctx)
		defer cancel()
		go func() {
			select {
			case <-i.sb.Done():
				cancel()
			case <-readyCtx.Done():
			}
		}()
		err := i.rt.WaitReady(readyCtx)
		if err == nil {
			return nil
		}
		var ie *lambdaapi.InitError
		if errors.As(err, &ie) {
			return &api.InitError{FuncErr: api.FunctionError{ErrorType: ie.ErrorType, ErrorMessage: ie.ErrorMessage}}
		}
		select {
		case <-i.sb.Done():
			return &api.InitError{FuncErr: api.FunctionError{ErrorType: "Runtime.ExitError", ErrorMessage: "instance exited during init: " + exitReason(i.sb)}}
		default:
		}
		if ctx.Err() != nil {
			return &api.InitError{FuncErr: api.FunctionError{ErrorType: "Runtime.InitTimeout", ErrorMessage: "instance did not become ready in time"}}
		}
		return fmt.Errorf("wait ready: %w", err)
	}
	// HTTP mode: ready when the port accepts connections.
	for {
		c, err := net.DialTimeout("tcp4", net.JoinHostPort("127.0.0.1", strconv.Itoa(i.port)), time.Second)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-i.sb.Done():
			return &api.InitError{FuncErr: api.FunctionError{ErrorType: "Runtime.ExitError", ErrorMessage: "instance exited during init: " + exitReason(i.sb)}}
		case <-ctx.Done():
			return &api.InitError{FuncErr: api.FunctionError{ErrorType: "Runtime.InitTimeout", ErrorMessage: "instance did not listen on $PORT in time"}}
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// invoke runs one invocation on the instance, classifying failures.
func (i *instance) invoke(ctx context.Context, req api.Invocation, maxResp int64) (*api.InvocationResult, error) {
	timeout := time.Duration(req.Version.Config.TimeoutSeconds) * time.Second
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	// A crash ends the invocation at once.
	crashCtx, crashCancel := context.WithCancel(ctx)
	defer crashCancel()
	go func() {
		select {
		case <-i.sb.Done():
			crashCancel()
		case <-crashCtx.Done():
		}
	}()
	id := req.ID
	// Output is attributed to this invocation until the next one starts, so
	// lines still in the pipe when the response arrives are not orphaned.
	i.cur.Store(&id)
	t0 := time.Now()
	resp := &api.InvocationResult{}
	var err error
	if i.rt != nil {
		var res lambdaapi.Result
		res, err = i.rt.Invoke(crashCtx, lambdaapi.Event{
			RequestID:          req.ID,
			Payload:            req.Payload,
			Deadline:           t0.Add(timeout),
			InvokedFunctionARN: fmt.Sprintf("arn:zfaas:lambda:local:%s:function:%s:%d", req.Version.Tenant, req.Version.Function, req.Version.Version),
			TraceID:            req.TraceID,
		})
		resp.Payload, resp.FuncErr = res.Payload, res.FuncErr
	} else {
		err = i.invokeHTTP(crashCtx, req, resp, maxResp)
	}
	resp.Duration = time.Since(t0)
	if err != nil {
		select {
		case <-i.sb.Done():
			return nil, fmt.Errorf("%w: %s", api.ErrCrashed, exitReason(i.sb))
		default:
		}
		if errors.Is(ctx.Err(), context.DeadlineExceeded) {
			return nil, fmt.Errorf("%w after %s", api.ErrTimeout, timeout)
		}
		if ctx.Err() != nil {
			return nil, ctx.Err()
		}
		return nil, err
	}
	return resp, nil
}

// hopHeaders are not forwarded (RFC 9110 section 7.6.1).
var hopHeaders = []string{"Connection", "Keep-Alive", "Proxy-Connection", "Te", "Trailer", "Transfer-Encoding", "Upgrade"}

func (i *instance) invokeHTTP(ctx context.Context, req api.Invocation, resp *api.InvocationResult, maxResp int64) error {
	hr := req.HTTP
	if hr == nil {
		hr = &api.HTTPRequest{Method: http.MethodPost, Path: "/", Header: http.Header{"Content-Type": {"application/json"}}}
	}
	u := "http://function" + hr.Path
	if hr.RawQuery != "" {
		u += "?" + hr.RawQuery
	}
	r, err := http.NewRequestWithContext(ctx, hr.Method, u, bytes.NewReader(req.Payload))
	if err != nil {
		return fmt.Errorf("build request: %w", err)
	}
	for k, vs := range hr.Header {
		r.Header[k] = append([]string(nil), vs...)
	}
	for _, h := range hopHeaders {
		r.Header.Del(h)
	}
	r.Header.Set("X-Zfaas-Invocation-Id", req.ID)
	r.Header.Set("X-Zfaas-Deadline-Ms", strconv.FormatInt(time.Now().Add(time.Duration(req.Version.Config.TimeoutSeconds)*time.Second).UnixMilli(), 10))
	hresp, err := i.httpc.Do(r)
	if err != nil {
		return err
	}
	defer hresp.Body.Close()
	body, err := io.ReadAll(io.LimitReader(hresp.Body, maxResp+1))
	if err != nil {
		return err
	}
	if int64(len(body)) > maxResp {
		return fmt.Errorf("%w: over %d bytes", api.ErrResponseTooLarge, maxResp)
	}
	resp.Payload = body
	resp.StatusCode = hresp.StatusCode
	resp.Header = hresp.Header.Clone()
	for _, h := range hopHeaders {
		resp.Header.Del(h)
	}
	return nil
}

// lineWriter splits instance output into log records tagged with the
// invocation running at the time.
type lineWriter struct {
	w      *Worker
	inst   *instance
	stream string
	mu     sync.Mutex
	buf    []byte
}

const maxLogLine = 16 << 10

func (w *Worker) newLineWriter(inst *instance, stream string) *lineWriter {
	return &lineWriter{w: w, inst: inst, stream: stream}
}

func (l *lineWriter) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	n := len(p)
	for len(p) > 0 {
		i := bytes.IndexByte(p, '\n')
		if i < 0 {
			room := maxLogLine - len(l.buf)
			if len(p) > room {
				l.buf = append(l.buf, p[:room]...)
				l.emit()
				p = p[room:]
				continue
			}
			l.buf = append(l.buf, p...)
			break
		}
		l.buf = append(l.buf, p[:i]...)
		if len(l.buf) > maxLogLine {
			l.buf = l.buf[:maxLogLine]
		}
		l.emit()
		p = p[i+1:]
	}
	return n, nil
}

func (l *lineWriter) flush() {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.buf) > 0 {
		l.emit()
	}
}

func (l *lineWriter) emit() {
	line := strings.TrimRight(string(l.buf), "\r")
	l.buf = l.buf[:0]
	if l.w.cfg.Logs == nil {
		return
	}
	var inv string
	if p := l.inst.cur.Load(); p != nil {
		inv = *p
	}
	v := l.inst.version
	l.w.cfg.Logs.Log(api.LogRecord{
		Time: time.Now().UTC(), Tenant: v.Tenant, Function: v.Function, Version: v.Version,
		InstanceID: l.inst.id, InvocationID: inv, Stream: l.stream, Line: line,
	})
}
