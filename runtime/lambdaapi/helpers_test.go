package lambdaapi

import (
	"bytes"
	"context"
	"encoding/json"
	"io"
	"log/slog"
	"net/http"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

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

// newServer starts a Server for the test and closes it at the end. The
// Server's logs are shown when the test fails.
func newServer(t *testing.T, cfg Config) *Server {
	t.Helper()
	logs := &syncBuffer{}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.NewTextHandler(logs, &slog.HandlerOptions{Level: slog.LevelDebug}))
	}
	s, err := New(cfg)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() {
		if err := s.Close(); err != nil {
			t.Errorf("Close: %v", err)
		}
		if t.Failed() {
			t.Logf("server logs:\n%s", logs)
		}
	})
	return s
}

func testContext(t *testing.T, d time.Duration) context.Context {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), d)
	t.Cleanup(cancel)
	return ctx
}

// buildHandler compiles testdata/handler, a function using the real
// aws-lambda-go client, into a temporary directory.
func buildHandler(t *testing.T) string {
	t.Helper()
	goBin, err := exec.LookPath("go")
	if err != nil {
		t.Skipf("the go command is not in PATH, cannot build the test function: %v", err)
	}
	out := filepath.Join(t.TempDir(), "bootstrap")
	cmd := exec.Command(goBin, "build", "-o", out, "./testdata/handler")
	cmd.Env = append(cmd.Environ(), "CGO_ENABLED=0")
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build test function: %v\n%s", err, b)
	}
	return out
}

// instance is a running function process.
type instance struct {
	cmd    *exec.Cmd
	done   chan struct{}
	err    error
	output *syncBuffer
}

func startInstance(t *testing.T, bin string, s *Server, env ...string) *instance {
	t.Helper()
	in := &instance{cmd: exec.Command(bin), done: make(chan struct{}), output: &syncBuffer{}}
	in.cmd.Env = append(s.Env(), env...)
	in.cmd.Stdout = in.output
	in.cmd.Stderr = in.output
	if err := in.cmd.Start(); err != nil {
		t.Fatalf("start function: %v", err)
	}
	go func() {
		in.err = in.cmd.Wait()
		close(in.done)
	}()
	t.Cleanup(func() {
		_ = in.cmd.Process.Kill()
		<-in.done
		if t.Failed() {
			t.Logf("function output:\n%s", in.output)
		}
	})
	return in
}

// waitExit waits for the process to exit and returns its exit error.
func (in *instance) waitExit(t *testing.T, d time.Duration) error {
	t.Helper()
	select {
	case <-in.done:
		return in.err
	case <-time.After(d):
		t.Fatalf("function still running after %v", d)
		return nil
	}
}

func apiURL(s *Server, path string) string {
	return "http://" + s.Addr() + "/2018-06-01/runtime/" + path
}

// apiBody is the union of the Runtime API's JSON answers.
type apiBody struct {
	Status       string `json:"status"`
	ErrorMessage string `json:"errorMessage"`
	ErrorType    string `json:"errorType"`
}

// do sends a request to the Runtime API and decodes its JSON answer.
func do(t *testing.T, method, url string, body io.Reader, hdr ...string) (int, apiBody) {
	t.Helper()
	req, err := http.NewRequestWithContext(t.Context(), method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	for i := 0; i+1 < len(hdr); i += 2 {
		req.Header.Set(hdr[i], hdr[i+1])
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatalf("%s %s: read body: %v", method, url, err)
	}
	var ab apiBody
	if err := json.Unmarshal(b, &ab); err != nil {
		t.Fatalf("%s %s: answer %d is not JSON: %q", method, url, resp.StatusCode, b)
	}
	return resp.StatusCode, ab
}

func post(t *testing.T, s *Server, path, body string, hdr ...string) (int, apiBody) {
	t.Helper()
	return do(t, http.MethodPost, apiURL(s, path), strings.NewReader(body), hdr...)
}

// next performs GET /next and returns the answer. It may run on any
// goroutine.
func next(ctx context.Context, s *Server) (*http.Response, []byte, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, apiURL(s, "invocation/next"), nil)
	if err != nil {
		return nil, nil, err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return nil, nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp, b, err
}

type invokeResult struct {
	res Result
	err error
}

// invokeAsync runs Invoke in a goroutine.
func invokeAsync(ctx context.Context, s *Server, ev Event) <-chan invokeResult {
	ch := make(chan invokeResult, 1)
	go func() {
		res, err := s.Invoke(ctx, ev)
		ch <- invokeResult{res, err}
	}()
	return ch
}

func await(t *testing.T, ch <-chan invokeResult) invokeResult {
	t.Helper()
	select {
	case r := <-ch:
		return r
	case <-time.After(10 * time.Second):
		t.Fatal("Invoke did not return")
		return invokeResult{}
	}
}
