package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/http"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"time"

	"github.com/zfaas/zfaas/runtime/bootstrap"
	"github.com/zfaas/zfaas/runtime/lambdaapi"
)

// example is one of the example functions the benchmark deploys.
type example struct {
	name    string
	http    bool   // HTTP mode (serves $PORT); else Lambda Runtime API
	handler string // _HANDLER, as in the example's zfaas.yaml
	// bareArgv is how the same code is started without zfaas: dir is the
	// built example, rtDir the bootstraps written by bootstrap.WriteTo.
	bareArgv func(dir, rtDir string) []string
	// floor, if set, is the bare interpreter start ("python3 -c pass").
	floor []string
}

const (
	python3 = "/usr/bin/python3" // what the worker runs (worker.Config.Python3)
	node    = "/usr/bin/node"    // worker.Config.Node
)

var examples = []example{
	{name: "http-echo", http: true, handler: "bootstrap",
		bareArgv: func(dir, _ string) []string { return []string{filepath.Join(dir, "bootstrap")} }},
	{name: "hello", handler: "bootstrap",
		bareArgv: func(dir, _ string) []string { return []string{filepath.Join(dir, "bootstrap")} }},
	{name: "python-hello", handler: "handler.handle",
		bareArgv: func(_, rt string) []string { return []string{python3, filepath.Join(rt, bootstrap.PythonPath)} },
		floor:    []string{python3, "-c", "pass"}},
	{name: "node-hello", handler: "index.handler",
		bareArgv: func(_, rt string) []string { return []string{node, filepath.Join(rt, bootstrap.NodejsPath)} },
		floor:    []string{node, "-e", "0"}},
}

// invokeURL is where the gateway invokes function name of this example's mode.
func (e example) invokeURL(gw, name string) string {
	if e.http {
		return gw + "/function/" + name + "/"
	}
	return gw + "/v1/functions/" + name + "/invoke"
}

// coldResult holds one example's cold-start samples.
type coldResult struct {
	first    time.Duration   // first instance of a never-run package: fetch + unpack + cold start
	platform []time.Duration // cold starts with the package already unpacked (sorted)
	bare     []time.Duration // bare fork/exec to first answer (sorted)
	floor    []time.Duration // bare interpreter start (sorted), if any
}

// invokeCold invokes name once and returns the client-side latency; the
// gateway must report a cold start.
func (b *bench) invokeCold(ctx context.Context, e example, name string) (time.Duration, error) {
	t0 := time.Now()
	status, cold, body, err := post(ctx, b.gwClient, e.invokeURL(b.gateway, name), "application/json", payload)
	d := time.Since(t0)
	if err != nil {
		return 0, fmt.Errorf("invoke %s: %w", name, err)
	}
	if status != http.StatusOK {
		return 0, fmt.Errorf("invoke %s: status %d: %s", name, status, bytes.TrimSpace(body))
	}
	if !cold {
		return 0, fmt.Errorf("invoke %s: the gateway did not report a cold start", name)
	}
	return d, nil
}

// ensureDeployed deploys the example under its own name, if not done yet,
// and invokes it once: that first call starts the first instance of a
// package the worker has never seen, so it includes fetching and unpacking
// it (res.first).
func (b *bench) ensureDeployed(ctx context.Context, e example, res *coldResult) error {
	if b.deployed[e.name] {
		return nil
	}
	if err := b.deploy(ctx, e.name, filepath.Join(b.examples, e.name)); err != nil {
		return err
	}
	b.deployed[e.name] = true
	d, err := b.invokeCold(ctx, e, e.name)
	if err != nil {
		return err
	}
	res.first = d
	return nil
}

// platformCold measures cold starts through the gateway: k functions with
// distinct names are deployed from the same package (so the worker unpacks
// it once), then each is invoked once, one after the other; every such
// invocation has to start a new sandboxed instance. They are deleted after.
func (b *bench) platformCold(ctx context.Context, e example, k int, res *coldResult) error {
	if err := b.ensureDeployed(ctx, e, res); err != nil {
		return err
	}
	dir := filepath.Join(b.examples, e.name)
	names := make([]string, k)
	for i := range names {
		names[i] = fmt.Sprintf("bench-cold-%s-%02d", e.name, i+1)
		if err := b.deploy(ctx, names[i], dir); err != nil {
			return err
		}
	}
	defer func() {
		for _, n := range names {
			if err := b.cli(ctx, "fn", "rm", n); err != nil {
				b.logf("cleanup: %v", err)
			}
		}
	}()
	for _, n := range names {
		// A short gap, so a start does not overlap the previous call's
		// asynchronous bookkeeping (log records, metrics).
		time.Sleep(20 * time.Millisecond)
		d, err := b.invokeCold(ctx, e, n)
		if err != nil {
			return err
		}
		res.platform = append(res.platform, d)
	}
	slices.Sort(res.platform)
	return nil
}

// bareCold measures k bare starts of the example's code: no sandbox, no
// gateway, no worker. HTTP mode: fork/exec the binary with $PORT set and
// poll POST / every 250 µs until it answers 200. Lambda mode: serve the
// Runtime API with the platform's own package (runtime/lambdaapi), fork/exec
// the runtime, wait for its first "next" and for the answer to one event.
// The process is stopped after each sample, outside the timed part.
func (b *bench) bareCold(ctx context.Context, e example, k int, res *coldResult) error {
	dir, err := filepath.Abs(filepath.Join(b.examples, e.name))
	if err != nil {
		return err
	}
	for i := range k {
		var d time.Duration
		if e.http {
			d, err = b.bareHTTP(ctx, e.bareArgv(dir, b.rtDir), dir)
		} else {
			d, err = b.bareLambda(ctx, e, e.bareArgv(dir, b.rtDir), dir, i)
		}
		if err != nil {
			return fmt.Errorf("bare %s: %w", e.name, err)
		}
		res.bare = append(res.bare, d)
	}
	slices.Sort(res.bare)
	if e.floor != nil {
		for range k {
			cmd := command(e.floor, b.baseEnv(dir), dir, b.procLog)
			t0 := time.Now()
			if err := cmd.Run(); err != nil {
				return fmt.Errorf("%v: %w", e.floor, err)
			}
			res.floor = append(res.floor, time.Since(t0))
		}
		slices.Sort(res.floor)
	}
	return nil
}

// baseEnv is the environment the worker gives every instance, minus what
// only makes sense inside the sandbox.
func (b *bench) baseEnv(taskRoot string) []string {
	return []string{
		"PATH=/usr/local/bin:/usr/bin:/bin",
		"HOME=" + b.work,
		"TMPDIR=" + b.work,
		"LANG=C.UTF-8",
		"TZ=UTC",
		"LAMBDA_TASK_ROOT=" + taskRoot,
		"LAMBDA_RUNTIME_DIR=" + b.rtDir,
		"PYTHONUNBUFFERED=1",
		"PYTHONDONTWRITEBYTECODE=1",
	}
}

func (b *bench) bareHTTP(ctx context.Context, argv []string, dir string) (time.Duration, error) {
	port, err := freePort()
	if err != nil {
		return 0, err
	}
	url := "http://127.0.0.1:" + strconv.Itoa(port) + "/"
	c := newClient(1)
	defer c.CloseIdleConnections()
	cmd := command(argv, append(b.baseEnv(dir), "PORT="+strconv.Itoa(port)), dir, b.procLog)
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	t0 := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer stop(cmd, 2*time.Second)
	for {
		status, _, _, err := post(ctx, c, url, "application/json", payload)
		if err == nil && status == http.StatusOK {
			return time.Since(t0), nil
		}
		if ctx.Err() != nil {
			return 0, fmt.Errorf("no answer on port %d within 10s (last: status %d, %v)", port, status, err)
		}
		time.Sleep(250 * time.Microsecond)
	}
}

func (b *bench) bareLambda(ctx context.Context, e example, argv []string, dir string, i int) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	t0 := time.Now()
	rt, err := lambdaapi.New(lambdaapi.Config{Addr: "127.0.0.1:0", FunctionName: e.name, FunctionVersion: "1", MemoryMB: 128})
	if err != nil {
		return 0, err
	}
	defer rt.Close()
	env := append(b.baseEnv(dir), rt.Env()...)
	env = append(env, "_HANDLER="+e.handler)
	cmd := command(argv, env, dir, b.procLog)
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer stop(cmd, 2*time.Second)
	if err := rt.WaitReady(ctx); err != nil {
		return 0, fmt.Errorf("wait ready: %w", err)
	}
	r, err := rt.Invoke(ctx, lambdaapi.Event{RequestID: "bench-" + strconv.Itoa(i), Payload: payload})
	d := time.Since(t0)
	if err != nil {
		return 0, fmt.Errorf("invoke: %w", err)
	}
	if r.FuncErr != nil {
		return 0, errors.New("function error: " + r.FuncErr.ErrorType + ": " + r.FuncErr.ErrorMessage)
	}
	if !bytes.Contains(r.Payload, []byte("Hello")) {
		return 0, fmt.Errorf("unexpected answer %q", r.Payload)
	}
	return d, nil
}

// needExec returns an error unless path is an executable file.
func needExec(path string) error {
	if _, err := exec.LookPath(path); err != nil {
		return fmt.Errorf("%s is needed for this benchmark: %w", path, err)
	}
	return nil
}
