package lambdaapi

import (
	"context"
	"encoding/base64"
	"errors"
	"io"
	"net"
	"net/http"
	"reflect"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/zfaas/zfaas/api"
)

// deliver starts Invoke(ev) and takes the event with GET /next, as a
// runtime would.
func deliver(t *testing.T, s *Server, ev Event) (<-chan invokeResult, *http.Response, []byte) {
	t.Helper()
	ch := invokeAsync(testContext(t, 10*time.Second), s, ev)
	resp, body, err := next(testContext(t, 10*time.Second), s)
	if err != nil {
		t.Fatalf("GET next: %v", err)
	}
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET next: got status %d %s, want 200", resp.StatusCode, body)
	}
	return ch, resp, body
}

func TestNextDeliversEvent(t *testing.T) {
	s := newServer(t, Config{})
	deadline := time.UnixMilli(time.Now().Add(time.Minute).UnixMilli())
	ev := Event{
		RequestID:          "8476a536-e9f4-11e8-9739-2dfe598c3fcd",
		Payload:            []byte(`{"k":"v"}`),
		Deadline:           deadline,
		InvokedFunctionARN: "arn:aws:lambda:us-east-2:123456789012:function:custom-runtime",
		TraceID:            "Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700;Parent=9a9197af755a6419;Sampled=1",
		ClientContext:      `{ "custom": {"a": 1} }`,
	}
	ch, resp, body := deliver(t, s, ev)
	wantHdr := map[string]string{
		"Lambda-Runtime-Aws-Request-Id":       ev.RequestID,
		"Lambda-Runtime-Deadline-Ms":          strconv.FormatInt(deadline.UnixMilli(), 10),
		"Lambda-Runtime-Invoked-Function-Arn": ev.InvokedFunctionARN,
		"Lambda-Runtime-Trace-Id":             ev.TraceID,
		"Lambda-Runtime-Client-Context":       `{"custom":{"a":1}}`,
		"Content-Type":                        "application/json",
	}
	for k, want := range wantHdr {
		if got := resp.Header.Get(k); got != want {
			t.Errorf("header %s: got %q, want %q", k, got, want)
		}
	}
	if _, ok := resp.Header["Lambda-Runtime-Cognito-Identity"]; ok {
		t.Errorf("got a Cognito identity header, want none")
	}
	if string(body) != string(ev.Payload) {
		t.Errorf("got payload %q, want %q", body, ev.Payload)
	}
	code, ab := post(t, s, "invocation/"+ev.RequestID+"/response", `{"ok":true}`)
	if code != http.StatusAccepted || ab.Status != "OK" {
		t.Errorf("POST response: got %d %+v, want 202 status OK", code, ab)
	}
	r := await(t, ch)
	if r.err != nil || r.res.FuncErr != nil || string(r.res.Payload) != `{"ok":true}` {
		t.Errorf("Invoke: got %q %+v %v, want {\"ok\":true}", r.res.Payload, r.res.FuncErr, r.err)
	}
}

func TestOptionalHeadersOmitted(t *testing.T) {
	s := newServer(t, Config{})
	ch, resp, _ := deliver(t, s, Event{RequestID: "r", Payload: []byte(`{}`)})
	for _, h := range []string{headerFunctionARN, headerTraceID, headerClientContext} {
		if _, ok := resp.Header[h]; ok {
			t.Errorf("got header %s for an empty field, want none", h)
		}
	}
	if resp.Header.Get(headerDeadline) == "" {
		t.Errorf("got no %s header, want one always", headerDeadline)
	}
	post(t, s, "invocation/r/response", `null`)
	await(t, ch)
}

func TestAnswerOnlyOnce(t *testing.T) {
	tests := []struct{ first, second string }{
		{"response", "response"},
		{"response", "error"},
		{"error", "response"},
		{"error", "error"},
	}
	for _, tt := range tests {
		t.Run(tt.first+" then "+tt.second, func(t *testing.T) {
			s := newServer(t, Config{})
			ch, _, _ := deliver(t, s, Event{RequestID: "once", Payload: []byte(`{}`)})
			if code, ab := post(t, s, "invocation/once/"+tt.first, `{}`); code != http.StatusAccepted {
				t.Fatalf("first answer: got %d %+v, want 202", code, ab)
			}
			await(t, ch)
			code, ab := post(t, s, "invocation/once/"+tt.second, `{}`)
			if code != http.StatusForbidden || ab.ErrorType != apiErrInvalidState {
				t.Errorf("second answer: got %d %+v, want 403 %s", code, ab, apiErrInvalidState)
			}
		})
	}
}

func TestUnknownRequestID(t *testing.T) {
	s := newServer(t, Config{})
	ch := invokeAsync(testContext(t, 10*time.Second), s, Event{RequestID: "real", Payload: []byte(`{}`)})
	tests := []struct{ name, path string }{
		{"response", "invocation/bogus/response"},
		{"error", "invocation/bogus/error"},
		{"not yet delivered", "invocation/real/response"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			code, ab := post(t, s, tt.path, `{}`)
			if code != http.StatusBadRequest || ab.ErrorType != apiErrInvalidRequestID {
				t.Errorf("got %d %+v, want 400 %s", code, ab, apiErrInvalidRequestID)
			}
			if !strings.Contains(ab.ErrorMessage, "unknown request ID") {
				t.Errorf("got message %q, want it to name the unknown request ID", ab.ErrorMessage)
			}
		})
	}
	s.Close()
	if r := await(t, ch); !errors.Is(r.err, ErrClosed) {
		t.Errorf("Invoke: got %v, want ErrClosed", r.err)
	}
}

func TestErrorReports(t *testing.T) {
	tests := []struct {
		name string
		body string
		hdr  string
		want api.FunctionError
	}{{
		name: "python style",
		body: `{"errorMessage":"bad input","errorType":"ValueError","stackTrace":["  File \"h.py\", line 3, in handle\n"]}`,
		hdr:  "Runtime.Unhandled",
		want: api.FunctionError{ErrorType: "ValueError", ErrorMessage: "bad input", StackTrace: []string{"  File \"h.py\", line 3, in handle\n"}},
	}, {
		name: "go frames",
		body: `{"errorMessage":"boom","errorType":"string","stackTrace":[{"path":"main.go","line":12,"label":"handle"}]}`,
		want: api.FunctionError{ErrorType: "string", ErrorMessage: "boom", StackTrace: []string{"handle (main.go:12)"}},
	}, {
		name: "stack as one string",
		body: `{"errorMessage":"x","errorType":"Error","stackTrace":"Error: x\n    at a (/var/task/i.js:1:1)\n"}`,
		want: api.FunctionError{ErrorType: "Error", ErrorMessage: "x", StackTrace: []string{"Error: x", "    at a (/var/task/i.js:1:1)"}},
	}, {
		name: "type from header",
		body: `{"errorMessage":"no type"}`,
		hdr:  "Custom.Type",
		want: api.FunctionError{ErrorType: "Custom.Type", ErrorMessage: "no type"},
	}, {
		name: "non-string message",
		body: `{"errorMessage":{"code":7},"errorType":"Obj"}`,
		want: api.FunctionError{ErrorType: "Obj", ErrorMessage: `{"code":7}`},
	}, {
		name: "plain text",
		body: "something broke",
		want: api.FunctionError{ErrorType: ErrorTypeUnknown, ErrorMessage: "something broke"},
	}, {
		name: "empty",
		want: api.FunctionError{ErrorType: ErrorTypeUnknown},
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newServer(t, Config{})
			ch, _, _ := deliver(t, s, Event{RequestID: "e", Payload: []byte(`{}`)})
			var hdr []string
			if tt.hdr != "" {
				hdr = []string{headerErrorType, tt.hdr}
			}
			if code, ab := post(t, s, "invocation/e/error", tt.body, hdr...); code != http.StatusAccepted {
				t.Fatalf("POST error: got %d %+v, want 202", code, ab)
			}
			r := await(t, ch)
			if r.err != nil || r.res.FuncErr == nil {
				t.Fatalf("Invoke: got %+v, %v, want a function error", r.res, r.err)
			}
			if !reflect.DeepEqual(*r.res.FuncErr, tt.want) {
				t.Errorf("got %#v, want %#v", *r.res.FuncErr, tt.want)
			}
		})
	}
}

func TestBodyLimits(t *testing.T) {
	const limit = 64
	tests := []struct {
		name     string
		action   string
		size     int64
		chunked  bool
		wantCode int
		wantType string // of the function error; "" = success
	}{
		{"response at limit", "response", limit, false, http.StatusAccepted, ""},
		{"response over limit", "response", limit + 1, false, http.StatusRequestEntityTooLarge, ErrorTypeResponseTooLarge},
		{"chunked response over limit", "response", 10 * limit, true, http.StatusRequestEntityTooLarge, ErrorTypeResponseTooLarge},
		{"error over limit", "error", MaxErrorBytes + 1, true, http.StatusRequestEntityTooLarge, ErrorTypeErrorTooLarge},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			s := newServer(t, Config{MaxResponseBytes: limit})
			ch, _, _ := deliver(t, s, Event{RequestID: "b", Payload: []byte(`{}`)})
			body := io.LimitReader(zeros{}, tt.size)
			if tt.chunked {
				body = struct{ io.Reader }{body} // hide the length
			}
			code, ab := do(t, http.MethodPost, apiURL(s, "invocation/b/"+tt.action), body)
			if code != tt.wantCode {
				t.Errorf("got %d %+v, want %d", code, ab, tt.wantCode)
			}
			if tt.wantCode == http.StatusRequestEntityTooLarge && ab.ErrorType != apiErrTooLarge {
				t.Errorf("got error type %q, want %q", ab.ErrorType, apiErrTooLarge)
			}
			r := await(t, ch)
			if r.err != nil {
				t.Fatalf("Invoke: %v", r.err)
			}
			switch {
			case tt.wantType == "" && (r.res.FuncErr != nil || int64(len(r.res.Payload)) != tt.size):
				t.Errorf("got %d bytes, %+v, want %d bytes", len(r.res.Payload), r.res.FuncErr, tt.size)
			case tt.wantType != "" && (r.res.FuncErr == nil || r.res.FuncErr.ErrorType != tt.wantType):
				t.Errorf("got function error %+v, want type %s", r.res.FuncErr, tt.wantType)
			}
		})
	}
}

type zeros struct{}

func (zeros) Read(p []byte) (int, error) {
	for i := range p {
		p[i] = '0'
	}
	return len(p), nil
}

// TestStreamedErrorTrailer covers a runtime that reports a failure in
// trailers after it started streaming its response, as aws-lambda-go does
// when a handler's io.Reader fails.
func TestStreamedErrorTrailer(t *testing.T) {
	s := newServer(t, Config{})
	ch, _, _ := deliver(t, s, Event{RequestID: "st", Payload: []byte(`{}`)})
	pr, pw := io.Pipe()
	req, err := http.NewRequestWithContext(t.Context(), http.MethodPost, apiURL(s, "invocation/st/response"), pr)
	if err != nil {
		t.Fatal(err)
	}
	req.Trailer = http.Header{headerErrorType: nil, trailerErrorBody: nil}
	go func() {
		pw.Write([]byte("partial"))
		req.Trailer.Set(headerErrorType, "ReadError")
		req.Trailer.Set(trailerErrorBody, base64.StdEncoding.EncodeToString([]byte(`{"errorMessage":"disk gone","errorType":"ReadError"}`)))
		pw.Close()
	}()
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("POST: %v", err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Errorf("got %d, want 202", resp.StatusCode)
	}
	r := await(t, ch)
	want := &api.FunctionError{ErrorType: "ReadError", ErrorMessage: "disk gone"}
	if r.err != nil || !reflect.DeepEqual(r.res.FuncErr, want) {
		t.Errorf("got %+v, %v, want %+v", r.res.FuncErr, r.err, want)
	}
}

func TestInitError(t *testing.T) {
	s := newServer(t, Config{})
	code, ab := post(t, s, "init/error", `{"errorMessage":"no module named x","errorType":"Runtime.ImportModuleError","stackTrace":["a","b"]}`)
	if code != http.StatusAccepted {
		t.Fatalf("POST init/error: got %d %+v, want 202", code, ab)
	}
	want := &InitError{ErrorType: "Runtime.ImportModuleError", ErrorMessage: "no module named x", StackTrace: []string{"a", "b"}}
	var ie *InitError
	if err := s.WaitReady(t.Context()); !errors.As(err, &ie) || !reflect.DeepEqual(ie, want) {
		t.Fatalf("WaitReady: got %#v, want %#v", err, want)
	}
	if got := ie.FunctionError(); got.ErrorType != want.ErrorType || got.ErrorMessage != want.ErrorMessage || !slices.Equal(got.StackTrace, want.StackTrace) {
		t.Errorf("FunctionError: got %+v", got)
	}
	if _, err := s.Invoke(t.Context(), Event{RequestID: "x"}); !errors.As(err, &ie) {
		t.Errorf("Invoke: got %v, want *InitError", err)
	}
	if code, ab := post(t, s, "init/error", `{}`); code != http.StatusForbidden || ab.ErrorType != apiErrInvalidState {
		t.Errorf("second init/error: got %d %+v, want 403", code, ab)
	}
	resp, _, err := next(t.Context(), s)
	if err != nil || resp.StatusCode != http.StatusForbidden {
		t.Errorf("GET next after init error: got %v %v, want 403", resp, err)
	}
}

func TestInitErrorWhileInvokeWaits(t *testing.T) {
	s := newServer(t, Config{})
	ch := invokeAsync(testContext(t, 10*time.Second), s, Event{RequestID: "w"})
	post(t, s, "init/error", `{"errorType":"Boot"}`)
	var ie *InitError
	if r := await(t, ch); !errors.As(r.err, &ie) || ie.ErrorType != "Boot" {
		t.Errorf("Invoke: got %v, want *InitError Boot", r.err)
	}
}

func TestInitErrorAfterReady(t *testing.T) {
	s := newServer(t, Config{})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go next(ctx, s)
	if err := s.WaitReady(testContext(t, 10*time.Second)); err != nil {
		t.Fatalf("WaitReady: %v", err)
	}
	if code, ab := post(t, s, "init/error", `{}`); code != http.StatusForbidden || ab.ErrorType != apiErrInvalidState {
		t.Errorf("got %d %+v, want 403 %s", code, ab, apiErrInvalidState)
	}
}

func TestNextWithoutAnswer(t *testing.T) {
	s := newServer(t, Config{})
	ch, _, _ := deliver(t, s, Event{RequestID: "forgotten", Payload: []byte(`{}`)})
	ctx, cancel := context.WithCancel(t.Context())
	defer cancel()
	go next(ctx, s)
	r := await(t, ch)
	if r.err != nil || r.res.FuncErr == nil || r.res.FuncErr.ErrorType != ErrorTypeNoResponse {
		t.Errorf("got %+v, %v, want function error %s", r.res.FuncErr, r.err, ErrorTypeNoResponse)
	}
}

func TestInvokeContextDone(t *testing.T) {
	s := newServer(t, Config{})

	// Nobody takes the event.
	ctx, cancel := context.WithTimeout(t.Context(), 50*time.Millisecond)
	defer cancel()
	if _, err := s.Invoke(ctx, Event{RequestID: "lost"}); !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Invoke: got %v, want context.DeadlineExceeded", err)
	}
	// The abandoned event is not handed out later.
	nctx, ncancel := context.WithTimeout(t.Context(), 100*time.Millisecond)
	defer ncancel()
	if resp, body, err := next(nctx, s); err == nil {
		t.Fatalf("GET next: got %d %q, want no event", resp.StatusCode, body)
	}
	waitFor(t, "the abandoned GET next to end", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.waiting == 0
	})

	// The runtime takes the event but answers too late.
	ictx, icancel := context.WithCancel(t.Context())
	ch := invokeAsync(ictx, s, Event{RequestID: "late", Payload: []byte(`{}`)})
	if resp, _, err := next(testContext(t, 10*time.Second), s); err != nil || resp.StatusCode != http.StatusOK {
		t.Fatalf("GET next: %v %v", resp, err)
	}
	icancel()
	if r := await(t, ch); !errors.Is(r.err, context.Canceled) {
		t.Fatalf("Invoke: got %v, want context.Canceled", r.err)
	}
	code, ab := post(t, s, "invocation/late/response", `{}`)
	if code != http.StatusForbidden || ab.ErrorType != apiErrInvalidState {
		t.Errorf("late answer: got %d %+v, want 403 %s", code, ab, apiErrInvalidState)
	}
	if _, err := s.Invoke(t.Context(), Event{RequestID: "late"}); !errors.Is(err, ErrInvalidEvent) {
		t.Errorf("reusing a request ID: got %v, want ErrInvalidEvent", err)
	}
}

func TestInvalidEvents(t *testing.T) {
	s := newServer(t, Config{})
	tests := []struct {
		name string
		ev   Event
	}{
		{"empty id", Event{}},
		{"id with slash", Event{RequestID: "a/b"}},
		{"id with space", Event{RequestID: "a b"}},
		{"id too long", Event{RequestID: strings.Repeat("a", MaxRequestIDBytes+1)}},
		{"client context not JSON", Event{RequestID: "a", ClientContext: "{"}},
		{"trace id with newline", Event{RequestID: "a", TraceID: "x\r\nEvil: 1"}},
		{"arn too long", Event{RequestID: "a", InvokedFunctionARN: strings.Repeat("a", MaxHeaderValueBytes+1)}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := s.Invoke(t.Context(), tt.ev); !errors.Is(err, ErrInvalidEvent) {
				t.Errorf("got %v, want ErrInvalidEvent", err)
			}
		})
	}
}

func TestClose(t *testing.T) {
	s := newServer(t, Config{})
	waitErr := make(chan error, 1)
	go func() { waitErr <- s.WaitReady(t.Context()) }()
	ch := invokeAsync(t.Context(), s, Event{RequestID: "c"})
	for !s.invoking.Load() {
		time.Sleep(time.Millisecond)
	}
	if err := s.Close(); err != nil {
		t.Fatalf("Close: %v", err)
	}
	if err := <-waitErr; !errors.Is(err, ErrClosed) {
		t.Errorf("WaitReady: got %v, want ErrClosed", err)
	}
	if r := await(t, ch); !errors.Is(r.err, ErrClosed) {
		t.Errorf("Invoke: got %v, want ErrClosed", r.err)
	}
	if _, err := s.Invoke(t.Context(), Event{RequestID: "d"}); !errors.Is(err, ErrClosed) {
		t.Errorf("Invoke after Close: got %v, want ErrClosed", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if _, err := net.Dial("tcp", s.Addr()); err == nil {
		t.Errorf("dial after Close succeeded, want refused")
	}
}

func TestWaitReadyContext(t *testing.T) {
	s := newServer(t, Config{})
	ctx, cancel := context.WithTimeout(t.Context(), 20*time.Millisecond)
	defer cancel()
	if err := s.WaitReady(ctx); !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("got %v, want context.DeadlineExceeded", err)
	}
}

func TestAuthorize(t *testing.T) {
	var calls atomic.Int32
	allow := atomic.Bool{}
	s := newServer(t, Config{Authorize: func(c net.Conn) error {
		calls.Add(1)
		if c.RemoteAddr() == nil || !allow.Load() {
			return errors.New("peer is not the instance")
		}
		return nil
	}})

	client := &http.Client{Transport: &http.Transport{}}
	defer client.CloseIdleConnections()
	url := apiURL(s, "invocation/x/response")
	if resp, err := client.Post(url, "application/json", strings.NewReader("{}")); err == nil {
		resp.Body.Close()
		t.Fatalf("refused peer: got status %d, want the connection closed", resp.StatusCode)
	}
	allow.Store(true)
	before := calls.Load()
	for range 3 {
		resp, err := client.Post(url, "application/json", strings.NewReader("{}"))
		if err != nil {
			t.Fatalf("allowed peer: %v", err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadRequest {
			t.Errorf("got %d, want 400 for the unknown id", resp.StatusCode)
		}
	}
	if got := calls.Load() - before; got != 1 {
		t.Errorf("Authorize called %d times for one kept-alive connection, want 1", got)
	}
}

func TestRouting(t *testing.T) {
	s := newServer(t, Config{})
	base := "http://" + s.Addr()
	tests := []struct {
		method, path string
		want         int
		wantType     string
	}{
		{http.MethodGet, "/", http.StatusNotFound, apiErrNotFound},
		{http.MethodGet, "/2018-06-01/runtime/invocation/", http.StatusNotFound, apiErrNotFound},
		{http.MethodPost, "/2018-06-01/runtime/invocation/x/other", http.StatusNotFound, apiErrNotFound},
		{http.MethodPost, "/2018-06-01/runtime/invocation/x/response/more", http.StatusNotFound, apiErrNotFound},
		{http.MethodPost, "/2020-01-01/extension/register", http.StatusNotFound, apiErrNotFound},
		{http.MethodPost, "/2018-06-01/runtime/invocation/next", http.StatusMethodNotAllowed, apiErrMethod},
		{http.MethodGet, "/2018-06-01/runtime/invocation/x/response", http.StatusMethodNotAllowed, apiErrMethod},
		{http.MethodGet, "/2018-06-01/runtime/init/error", http.StatusMethodNotAllowed, apiErrMethod},
	}
	for _, tt := range tests {
		t.Run(tt.method+" "+tt.path, func(t *testing.T) {
			code, ab := do(t, tt.method, base+tt.path, nil)
			if code != tt.want || ab.ErrorType != tt.wantType {
				t.Errorf("got %d %+v, want %d %s", code, ab, tt.want, tt.wantType)
			}
		})
	}
}

func TestEnv(t *testing.T) {
	s := newServer(t, Config{FunctionName: "f", FunctionVersion: "7", MemoryMB: 512})
	want := []string{
		"AWS_LAMBDA_RUNTIME_API=" + s.Addr(),
		"AWS_LAMBDA_FUNCTION_NAME=f",
		"AWS_LAMBDA_FUNCTION_VERSION=7",
		"AWS_LAMBDA_FUNCTION_MEMORY_SIZE=512",
	}
	if got := s.Env(); !slices.Equal(got, want) {
		t.Errorf("got %q, want %q", got, want)
	}
	if got := newServer(t, Config{}).Env(); len(got) != 1 {
		t.Errorf("got %q, want only AWS_LAMBDA_RUNTIME_API", got)
	}
}

func TestNewRejectsBadConfig(t *testing.T) {
	for _, cfg := range []Config{{MaxResponseBytes: -1}, {MemoryMB: -1}, {Addr: "not an address"}} {
		if s, err := New(cfg); err == nil {
			s.Close()
			t.Errorf("New(%+v): got nil error, want one", cfg)
		}
	}
}

// TestNewerNextSupersedes: a GET /next the runtime gave up on must not take
// the event meant for its newer request.
func TestNewerNextSupersedes(t *testing.T) {
	s := newServer(t, Config{})
	type answer struct {
		code int
		id   string
		err  error
	}
	getNext := func() <-chan answer {
		ch := make(chan answer, 1)
		go func() {
			resp, _, err := next(testContext(t, 10*time.Second), s)
			if err != nil {
				ch <- answer{err: err}
				return
			}
			ch <- answer{code: resp.StatusCode, id: resp.Header.Get(headerRequestID)}
		}()
		return ch
	}
	stale := getNext()
	waitFor(t, "the first GET next to block", func() bool {
		s.mu.Lock()
		defer s.mu.Unlock()
		return s.waiting == 1
	})
	fresh := getNext()
	if a := <-stale; a.err != nil || a.code != http.StatusForbidden {
		t.Errorf("superseded GET next: got %d, %v, want 403", a.code, a.err)
	}
	ch := invokeAsync(testContext(t, 10*time.Second), s, Event{RequestID: "fresh", Payload: []byte(`{}`)})
	if a := <-fresh; a.err != nil || a.code != http.StatusOK || a.id != "fresh" {
		t.Fatalf("newer GET next: got %d %q, %v, want 200 fresh", a.code, a.id, a.err)
	}
	post(t, s, "invocation/fresh/response", `1`)
	if r := await(t, ch); r.err != nil || string(r.res.Payload) != "1" {
		t.Errorf("Invoke: got %q, %v, want 1", r.res.Payload, r.err)
	}
}

func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); !cond(); time.Sleep(time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
	}
}
