package bootstrap

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/zfaas/zfaas/runtime/lambdaapi"
)

func TestWriteTo(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "runtime")
	for range 2 { // a second write replaces the files
		if err := WriteTo(dir); err != nil {
			t.Fatalf("WriteTo: %v", err)
		}
	}
	for _, name := range []string{PythonPath, NodejsPath} {
		want, err := File(name)
		if err != nil {
			t.Fatalf("File(%s): %v", name, err)
		}
		p := filepath.Join(dir, filepath.FromSlash(name))
		got, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Equal(got, want) || len(got) == 0 {
			t.Errorf("%s: written content differs from the embedded one", name)
		}
		st, _ := os.Stat(p)
		if st.Mode().Perm() != 0o755 {
			t.Errorf("%s: got mode %v, want 0755", name, st.Mode().Perm())
		}
		st, _ = os.Stat(filepath.Dir(p))
		if st.Mode().Perm() != 0o755 {
			t.Errorf("%s: got mode %v, want 0755", filepath.Dir(p), st.Mode().Perm())
		}
	}
	var names []string
	filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			rel, _ := filepath.Rel(dir, p)
			names = append(names, filepath.ToSlash(rel))
		}
		return nil
	})
	if want := []string{NodejsPath, PythonPath}; strings.Join(names, ",") != strings.Join(want, ",") {
		t.Errorf("got files %q, want %q (no leftovers)", names, want)
	}
	if _, err := File("nope"); err == nil {
		t.Errorf("File(nope): got nil error, want one")
	}
}

// lang is a runtime under test.
type lang struct {
	name   string
	interp string // interpreter path
	script string // bootstrap path
	root   string // testdata task root
}

// interpreter finds the interpreter the worker uses by default, else the
// one in PATH, and skips the test when there is none.
func interpreter(t *testing.T, preferred, name string) string {
	t.Helper()
	if _, err := os.Stat(preferred); err == nil {
		return preferred
	}
	p, err := exec.LookPath(name)
	if err != nil {
		t.Skipf("%s is not installed (neither %s nor in PATH): cannot run its bootstrap", name, preferred)
	}
	return p
}

var (
	writeOnce sync.Once
	writeDir  string
	writeErr  error
)

// bootstraps writes the bootstraps once for the whole test binary.
func bootstraps(t *testing.T) string {
	t.Helper()
	writeOnce.Do(func() {
		writeDir, writeErr = os.MkdirTemp("", "zfaas-bootstrap-test-")
		if writeErr == nil {
			writeErr = WriteTo(writeDir)
		}
	})
	if writeErr != nil {
		t.Fatalf("WriteTo: %v", writeErr)
	}
	return writeDir
}

func TestMain(m *testing.M) {
	code := m.Run()
	if writeDir != "" {
		os.RemoveAll(writeDir)
	}
	os.Exit(code)
}

func python(t *testing.T) lang {
	t.Helper()
	root, _ := filepath.Abs("testdata/python")
	return lang{"python", interpreter(t, "/usr/bin/python3", "python3"), filepath.Join(bootstraps(t), PythonPath), root}
}

// byName returns python(t) or node(t).
func byName(t *testing.T, name string) lang {
	t.Helper()
	if name == "python" {
		return python(t)
	}
	return node(t)
}

func node(t *testing.T) lang {
	t.Helper()
	root, _ := filepath.Abs("testdata/nodejs")
	return lang{"nodejs", interpreter(t, "/usr/bin/node", "node"), filepath.Join(bootstraps(t), NodejsPath), root}
}

// syncBuffer is a bytes.Buffer safe for concurrent writers.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}

// instance is a bootstrap process with its Runtime API server.
type instance struct {
	srv    *lambdaapi.Server
	done   chan struct{}
	err    error
	output *syncBuffer
}

// start runs l's bootstrap for handler against a new lambdaapi.Server.
func start(t *testing.T, l lang, root, handler string, cfg lambdaapi.Config) *instance {
	t.Helper()
	srv, err := lambdaapi.New(cfg)
	if err != nil {
		t.Fatalf("lambdaapi.New: %v", err)
	}
	in := &instance{srv: srv, done: make(chan struct{}), output: &syncBuffer{}}
	cmd := exec.Command(l.interp, l.script)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), srv.Env()...)
	cmd.Env = append(cmd.Env, "_HANDLER="+handler, "LAMBDA_TASK_ROOT="+root, "PYTHONDONTWRITEBYTECODE=1")
	cmd.Stdout = in.output
	cmd.Stderr = in.output
	if err := cmd.Start(); err != nil {
		srv.Close()
		t.Fatalf("start %s: %v", l.interp, err)
	}
	go func() {
		in.err = cmd.Wait()
		close(in.done)
	}()
	t.Cleanup(func() {
		_ = cmd.Process.Kill()
		<-in.done
		srv.Close()
		if t.Failed() {
			t.Logf("%s output:\n%s", l.name, in.output)
		}
	})
	return in
}

func (in *instance) waitReady(t *testing.T) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	if err := in.srv.WaitReady(ctx); err != nil {
		t.Fatalf("WaitReady: got %v, want nil", err)
	}
}

func (in *instance) invoke(t *testing.T, id, payload string) lambdaapi.Result {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
	defer cancel()
	res, err := in.srv.Invoke(ctx, lambdaapi.Event{
		RequestID:          id,
		Payload:            []byte(payload),
		Deadline:           time.Now().Add(30 * time.Second),
		InvokedFunctionARN: "spiffe://zfaas.test/ns/t/fn/f",
		TraceID:            "Root=1-abc",
		ClientContext:      `{"custom":{"k":"v"}}`,
	})
	if err != nil {
		t.Fatalf("Invoke %s: %v", id, err)
	}
	return res
}

func (in *instance) waitExit(t *testing.T) error {
	t.Helper()
	select {
	case <-in.done:
		return in.err
	case <-time.After(20 * time.Second):
		t.Fatal("bootstrap still running, want it to exit")
		return nil
	}
}

// hello is the answer of the testdata "hello" handlers.
type hello struct {
	Message         string            `json:"message"`
	RequestID       string            `json:"requestId"`
	FunctionName    string            `json:"functionName"`
	FunctionVersion string            `json:"functionVersion"`
	MemoryMB        int               `json:"memoryMB"`
	ARN             string            `json:"arn"`
	RemainingMS     int64             `json:"remainingMs"`
	Custom          map[string]string `json:"custom"`
	Trace           string            `json:"trace"`
}

func decodeHello(t *testing.T, res lambdaapi.Result) hello {
	t.Helper()
	if res.FuncErr != nil {
		t.Fatalf("got function error %+v, want success", res.FuncErr)
	}
	var h hello
	if err := json.Unmarshal(res.Payload, &h); err != nil {
		t.Fatalf("response %q: %v", res.Payload, err)
	}
	return h
}

var fnConfig = lambdaapi.Config{FunctionName: "greeter", FunctionVersion: "4", MemoryMB: 192}

func TestSuccess(t *testing.T) {
	cases := []struct {
		lang    string
		handler string
		full    bool // the handler reports every context field
	}{
		{"python", "handlers.ok", true},
		{"nodejs", "index.ok", true},
		{"nodejs", "index.promise", true},
		{"nodejs", "index.callback", true},
		{"nodejs", "index.sync", true},
		{"nodejs", "index.nested.handler", true},
		{"nodejs", "esm.handler", false},
		{"nodejs", "common.handler", false},
		{"nodejs", "esmpkg/app.handler", false},
		{"python", "pkg.mod.handle", false},
		{"python", "pkg/mod.handle", false},
	}
	for _, c := range cases {
		t.Run(c.lang+"/"+c.handler, func(t *testing.T) {
			l := byName(t, c.lang)
			in := start(t, l, l.root, c.handler, fnConfig)
			in.waitReady(t)
			for i := range 3 {
				id := fmt.Sprintf("req-%d", i)
				h := decodeHello(t, in.invoke(t, id, `{"name":"zfaas"}`))
				if h.Message != "Hello, zfaas!" || h.RequestID != id {
					t.Errorf("got message %q id %q, want %q %q", h.Message, h.RequestID, "Hello, zfaas!", id)
				}
				if h.RemainingMS <= 0 || h.RemainingMS > 30000 {
					t.Errorf("got remaining time %d ms, want in (0, 30000]", h.RemainingMS)
				}
				if !c.full {
					continue
				}
				want := hello{
					Message: "Hello, zfaas!", RequestID: id, FunctionName: "greeter", FunctionVersion: "4",
					MemoryMB: 192, ARN: "spiffe://zfaas.test/ns/t/fn/f", RemainingMS: h.RemainingMS,
					Custom: map[string]string{"k": "v"}, Trace: "Root=1-abc",
				}
				if fmt.Sprint(h) != fmt.Sprint(want) {
					t.Errorf("got %+v, want %+v", h, want)
				}
			}
		})
	}
}

func TestLogsReachOutput(t *testing.T) {
	for _, name := range []string{"python", "nodejs"} {
		t.Run(name, func(t *testing.T) {
			l := byName(t, name)
			handler := map[string]string{"python": "handlers.ok", "nodejs": "index.ok"}[l.name]
			in := start(t, l, l.root, handler, fnConfig)
			in.waitReady(t)
			decodeHello(t, in.invoke(t, "logged-1", `{}`))
			for deadline := time.Now().Add(10 * time.Second); !strings.Contains(in.output.String(), "handling logged-1"); {
				if time.Now().After(deadline) {
					t.Fatalf("handler's log line not in the output %q", in.output)
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
}

func TestFunctionErrors(t *testing.T) {
	cases := []struct {
		lang      string
		handler   string
		wantType  string
		wantMsg   string
		wantStack bool
	}{
		{"python", "handlers.fail", "BadInput", "bad input: zfaas", true},
		{"python", "handlers.unserializable", "Runtime.MarshalError", "", false},
		{"nodejs", "index.fail", "ValidationError", "bad input: zfaas", true},
		{"nodejs", "index.callbackError", "TypeError", "wrong type", true},
		{"nodejs", "index.throwString", "string", "plain string", false},
	}
	for _, c := range cases {
		t.Run(c.lang+"/"+c.handler, func(t *testing.T) {
			l := byName(t, c.lang)
			in := start(t, l, l.root, c.handler, fnConfig)
			in.waitReady(t)
			fe := in.invoke(t, "e1", `{"name":"zfaas"}`).FuncErr
			if fe == nil || fe.ErrorType != c.wantType || c.wantMsg != "" && fe.ErrorMessage != c.wantMsg {
				t.Fatalf("got %+v, want %s: %s", fe, c.wantType, c.wantMsg)
			}
			if c.wantStack && len(fe.StackTrace) == 0 {
				t.Errorf("got no stack trace, want one")
			}
			// The instance keeps serving after a function error.
			if fe := in.invoke(t, "e2", `{"name":"zfaas"}`).FuncErr; fe == nil || fe.ErrorType != c.wantType {
				t.Errorf("second invoke: got %+v, want %s again", fe, c.wantType)
			}
		})
	}
}

func TestNodeUncaughtException(t *testing.T) {
	l := node(t)
	in := start(t, l, l.root, "index.uncaught", fnConfig)
	in.waitReady(t)
	fe := in.invoke(t, "u1", `{}`).FuncErr
	if fe == nil || fe.ErrorType != "RangeError" || fe.ErrorMessage != "escaped the handler" {
		t.Fatalf("got %+v, want RangeError: escaped the handler", fe)
	}
	if err := in.waitExit(t); err == nil {
		t.Errorf("bootstrap exited cleanly after an uncaught exception, want an exit error")
	}
}

func TestInitErrors(t *testing.T) {
	cases := []struct {
		lang     string
		handler  string
		wantType string
	}{
		{"python", "missing.handle", "Runtime.ImportModuleError"},
		{"python", "handlers.nope", "Runtime.HandlerNotFound"},
		{"python", "handlers.not_callable", "Runtime.HandlerNotFound"},
		{"python", "broken.handle", "Runtime.UserCodeSyntaxError"},
		{"python", "raising.handle", "Runtime.ImportModuleError"},
		{"python", "nodot", "Runtime.MalformedHandlerName"},
		{"nodejs", "missing.handler", "Runtime.ImportModuleError"},
		{"nodejs", "index.nope", "Runtime.HandlerNotFound"},
		{"nodejs", "index.notAFunction", "Runtime.HandlerNotFound"},
		{"nodejs", "broken.handler", "Runtime.UserCodeSyntaxError"},
		{"nodejs", "raising.handler", "Error"},
		{"nodejs", "nodot", "Runtime.MalformedHandlerName"},
		{"nodejs", "../escape.handler", "Runtime.MalformedHandlerName"},
	}
	for _, c := range cases {
		t.Run(c.lang+"/"+c.handler, func(t *testing.T) {
			l := byName(t, c.lang)
			in := start(t, l, l.root, c.handler, fnConfig)
			ctx, cancel := context.WithTimeout(t.Context(), 20*time.Second)
			defer cancel()
			var ie *lambdaapi.InitError
			if err := in.srv.WaitReady(ctx); !errors.As(err, &ie) {
				t.Fatalf("WaitReady: got %v, want *lambdaapi.InitError", err)
			}
			if ie.ErrorType != c.wantType || ie.ErrorMessage == "" {
				t.Errorf("got %s: %q, want type %s and a message", ie.ErrorType, ie.ErrorMessage, c.wantType)
			}
			if err := in.waitExit(t); err == nil {
				t.Errorf("bootstrap exited cleanly after an init error, want an exit error")
			}
		})
	}
}

// TestOversizeResponse: a refused response fails the invocation, and the
// bootstrap carries on with the next event.
func TestOversizeResponse(t *testing.T) {
	for _, name := range []string{"python", "nodejs"} {
		t.Run(name, func(t *testing.T) {
			l := byName(t, name)
			handler := map[string]string{"python": "handlers.big", "nodejs": "index.big"}[l.name]
			cfg := fnConfig
			cfg.MaxResponseBytes = 1 << 16
			in := start(t, l, l.root, handler, cfg)
			in.waitReady(t)
			fe := in.invoke(t, "big", `{"size":10000000}`).FuncErr
			if fe == nil || fe.ErrorType != lambdaapi.ErrorTypeResponseTooLarge {
				t.Fatalf("got %+v, want %s", fe, lambdaapi.ErrorTypeResponseTooLarge)
			}
			res := in.invoke(t, "small", `{"size":10}`)
			if res.FuncErr != nil || string(res.Payload) != `"xxxxxxxxxx"` {
				t.Errorf("after the refused response: got %q %+v, want \"xxxxxxxxxx\"", res.Payload, res.FuncErr)
			}
		})
	}
}

// TestExamples runs the Python and Node.js examples through their bootstraps.
func TestExamples(t *testing.T) {
	cases := []struct {
		lang    string
		dir     string
		handler string
		want    string
	}{
		{"python", "python-hello", "handler.handle", `{"message": "Hello, x from Python!"}`},
		{"nodejs", "node-hello", "index.handler", `{"message":"Hello, x from Node.js!"}`},
	}
	for _, c := range cases {
		t.Run(c.dir, func(t *testing.T) {
			l := byName(t, c.lang)
			root, _ := filepath.Abs(filepath.Join("..", "..", "examples", c.dir))
			in := start(t, l, root, c.handler, fnConfig)
			in.waitReady(t)
			res := in.invoke(t, "ex", `{"name":"x"}`)
			if res.FuncErr != nil || string(res.Payload) != c.want {
				t.Errorf("got %s %+v, want %s", res.Payload, res.FuncErr, c.want)
			}
		})
	}
}
