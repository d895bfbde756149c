package lambdaapi

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"testing"
	"time"
)

// handlerResponse mirrors testdata/handler's response.
type handlerResponse struct {
	Message      string `json:"message"`
	RequestID    string `json:"requestId"`
	FunctionName string `json:"functionName"`
	MemoryMB     int    `json:"memoryMB"`
	ARN          string `json:"arn"`
	ClientApp    string `json:"clientApp"`
	Custom       string `json:"custom"`
	DeadlineMS   int64  `json:"deadlineMs"`
	RemainingMS  int64  `json:"remainingMs"`
	Data         string `json:"data"`
}

func decodeHandlerResponse(t *testing.T, res Result) handlerResponse {
	t.Helper()
	if res.FuncErr != nil {
		t.Fatalf("got function error %+v, want success", res.FuncErr)
	}
	var hr handlerResponse
	if err := json.Unmarshal(res.Payload, &hr); err != nil {
		t.Fatalf("response %q is not the handler's JSON: %v", res.Payload, err)
	}
	return hr
}

// TestRealClient runs a function built with the real aws-lambda-go client
// against the Server.
func TestRealClient(t *testing.T) {
	bin := buildHandler(t)

	// ready starts a Server and the function, and waits for its init.
	ready := func(t *testing.T, cfg Config, env ...string) (*Server, *instance) {
		t.Helper()
		s := newServer(t, cfg)
		in := startInstance(t, bin, s, env...)
		if err := s.WaitReady(testContext(t, 20*time.Second)); err != nil {
			t.Fatalf("WaitReady: got %v, want nil", err)
		}
		return s, in
	}

	t.Run("success", func(t *testing.T) {
		s, _ := ready(t, Config{FunctionName: "hello", FunctionVersion: "3", MemoryMB: 256})
		deadline := time.Now().Add(5 * time.Second)
		ev := Event{
			RequestID:          "req-1",
			Payload:            []byte(`{"name":"zfaas"}`),
			Deadline:           deadline,
			InvokedFunctionARN: "spiffe://zfaas.test/ns/t/fn/hello",
			TraceID:            "Root=1-5bef4de7-ad49b0e87f6ef6c87fc2e700",
			ClientContext:      "{\n \"Client\": {\"app_title\": \"demo\"}, \"custom\": {\"k\": \"v\"}\n}",
		}
		res, err := s.Invoke(testContext(t, 10*time.Second), ev)
		if err != nil {
			t.Fatalf("Invoke: %v", err)
		}
		hr := decodeHandlerResponse(t, res)
		want := handlerResponse{
			Message: "Hello, zfaas!", RequestID: "req-1", FunctionName: "hello", MemoryMB: 256,
			ARN: ev.InvokedFunctionARN, ClientApp: "demo", Custom: "v",
			DeadlineMS: deadline.UnixMilli(), RemainingMS: hr.RemainingMS,
		}
		if hr != want {
			t.Errorf("got %+v, want %+v", hr, want)
		}
		if hr.RemainingMS <= 0 || hr.RemainingMS > 5000 {
			t.Errorf("got remaining time %d ms in the handler, want in (0, 5000]", hr.RemainingMS)
		}
	})

	t.Run("returned error", func(t *testing.T) {
		s, _ := ready(t, Config{})
		ctx := testContext(t, 10*time.Second)
		res, err := s.Invoke(ctx, Event{RequestID: "e1", Payload: []byte(`{"action":"error"}`)})
		if err != nil {
			t.Fatalf("Invoke: %v", err)
		}
		if res.FuncErr == nil || res.FuncErr.ErrorType != "validationError" || res.FuncErr.ErrorMessage != "name is required" {
			t.Fatalf("got %+v, want function error validationError: name is required", res.FuncErr)
		}
		if res.Payload != nil {
			t.Errorf("got payload %q with a function error, want nil", res.Payload)
		}
		// The instance keeps serving after a returned error.
		res, err = s.Invoke(ctx, Event{RequestID: "e2", Payload: []byte(`{"name":"again"}`)})
		if err != nil {
			t.Fatalf("Invoke after error: %v", err)
		}
		if got := decodeHandlerResponse(t, res).Message; got != "Hello, again!" {
			t.Errorf("got message %q, want %q", got, "Hello, again!")
		}
	})

	t.Run("panic", func(t *testing.T) {
		s, in := ready(t, Config{})
		res, err := s.Invoke(testContext(t, 10*time.Second), Event{RequestID: "p1", Payload: []byte(`{"action":"panic"}`)})
		if err != nil {
			t.Fatalf("Invoke: %v", err)
		}
		fe := res.FuncErr
		if fe == nil || fe.ErrorType != "string" || fe.ErrorMessage != "boom" {
			t.Fatalf("got %+v, want function error string: boom", fe)
		}
		if len(fe.StackTrace) == 0 {
			t.Errorf("got no stack trace for a panic, want frames")
		}
		// aws-lambda-go exits after reporting a panic.
		if err := in.waitExit(t, 10*time.Second); err == nil {
			t.Errorf("function exited cleanly after a panic, want an exit error")
		}
	})

	t.Run("deadline", func(t *testing.T) {
		s, _ := ready(t, Config{})
		for _, d := range []time.Duration{time.Second, 90 * time.Second} {
			deadline := time.Now().Add(d)
			res, err := s.Invoke(testContext(t, 10*time.Second), Event{RequestID: fmt.Sprint("d", d), Payload: []byte(`{}`), Deadline: deadline})
			if err != nil {
				t.Fatalf("Invoke: %v", err)
			}
			hr := decodeHandlerResponse(t, res)
			if hr.DeadlineMS != deadline.UnixMilli() {
				t.Errorf("got handler deadline %d, want %d", hr.DeadlineMS, deadline.UnixMilli())
			}
			if hr.RemainingMS <= 0 || hr.RemainingMS > d.Milliseconds() {
				t.Errorf("got remaining %d ms, want in (0, %d]", hr.RemainingMS, d.Milliseconds())
			}
		}
		// Without an explicit deadline, Invoke's ctx deadline is used.
		ctx, cancel := context.WithTimeout(t.Context(), 4*time.Second)
		defer cancel()
		want, _ := ctx.Deadline()
		res, err := s.Invoke(ctx, Event{RequestID: "d-ctx", Payload: []byte(`{}`)})
		if err != nil {
			t.Fatalf("Invoke: %v", err)
		}
		if got := decodeHandlerResponse(t, res).DeadlineMS; got != want.UnixMilli() {
			t.Errorf("got handler deadline %d, want ctx deadline %d", got, want.UnixMilli())
		}
	})

	t.Run("handler timeout", func(t *testing.T) {
		s, _ := ready(t, Config{})
		ctx, cancel := context.WithTimeout(t.Context(), 300*time.Millisecond)
		defer cancel()
		_, err := s.Invoke(ctx, Event{
			RequestID: "slow", Payload: []byte(`{"action":"sleep","sleepMs":10000}`),
			Deadline: time.Now().Add(time.Minute),
		})
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("got %v, want context.DeadlineExceeded", err)
		}
	})

	t.Run("init error posted", func(t *testing.T) {
		s := newServer(t, Config{})
		in := startInstance(t, bin, s, "HANDLER_INIT=post")
		err := s.WaitReady(testContext(t, 20*time.Second))
		var ie *InitError
		if !errors.As(err, &ie) {
			t.Fatalf("WaitReady: got %v, want *InitError", err)
		}
		if ie.ErrorType != "ConfigError" || ie.ErrorMessage != "cannot load configuration" {
			t.Errorf("got %s: %s, want ConfigError: cannot load configuration", ie.ErrorType, ie.ErrorMessage)
		}
		if _, err := s.Invoke(t.Context(), Event{RequestID: "i1"}); !errors.As(err, &ie) {
			t.Errorf("Invoke after init error: got %v, want *InitError", err)
		}
		if err := in.waitExit(t, 10*time.Second); err == nil {
			t.Errorf("function exited cleanly, want an exit error")
		}
	})

	t.Run("init exit", func(t *testing.T) {
		// A runtime that dies before asking for an event: the worker sees
		// the exit and closes the Server, which ends WaitReady.
		s := newServer(t, Config{})
		in := startInstance(t, bin, s, "HANDLER_INIT=exit")
		waitErr := make(chan error, 1)
		go func() { waitErr <- s.WaitReady(t.Context()) }()
		if err := in.waitExit(t, 10*time.Second); err == nil {
			t.Errorf("function exited cleanly, want an exit error")
		}
		s.Close()
		if err := <-waitErr; !errors.Is(err, ErrClosed) {
			t.Errorf("WaitReady: got %v, want ErrClosed", err)
		}
	})

	t.Run("sequential invokes", func(t *testing.T) {
		s, _ := ready(t, Config{})
		ctx := testContext(t, 60*time.Second)
		for i := range 200 {
			id := fmt.Sprintf("seq-%03d", i)
			name := fmt.Sprint("n", i)
			res, err := s.Invoke(ctx, Event{RequestID: id, Payload: fmt.Appendf(nil, `{"name":%q}`, name)})
			if err != nil {
				t.Fatalf("Invoke %d: %v", i, err)
			}
			hr := decodeHandlerResponse(t, res)
			if hr.RequestID != id || hr.Message != "Hello, "+name+"!" {
				t.Fatalf("invoke %d: got %s %q, want %s %q", i, hr.RequestID, hr.Message, id, "Hello, "+name+"!")
			}
		}
	})

	t.Run("concurrent invoke refused", func(t *testing.T) {
		s, _ := ready(t, Config{})
		ctx := testContext(t, 10*time.Second)
		first := invokeAsync(ctx, s, Event{RequestID: "c1", Payload: []byte(`{"action":"sleep","sleepMs":500,"name":"c1"}`)})
		for !s.invoking.Load() {
			time.Sleep(time.Millisecond)
		}
		if _, err := s.Invoke(ctx, Event{RequestID: "c2", Payload: []byte(`{}`)}); !errors.Is(err, ErrInvokeInProgress) {
			t.Errorf("second Invoke: got %v, want ErrInvokeInProgress", err)
		}
		r := await(t, first)
		if r.err != nil {
			t.Fatalf("first Invoke: %v", r.err)
		}
		if got := decodeHandlerResponse(t, r.res).Message; got != "Hello, c1!" {
			t.Errorf("got %q, want %q", got, "Hello, c1!")
		}
	})

	t.Run("oversize response", func(t *testing.T) {
		s, in := ready(t, Config{MaxResponseBytes: 4096})
		ctx := testContext(t, 10*time.Second)
		res, err := s.Invoke(ctx, Event{RequestID: "fits", Payload: []byte(`{"action":"big","size":3000}`)})
		if err != nil {
			t.Fatalf("Invoke: %v", err)
		}
		if got := len(decodeHandlerResponse(t, res).Data); got != 3000 {
			t.Fatalf("got %d bytes of data, want 3000", got)
		}
		res, err = s.Invoke(ctx, Event{RequestID: "big", Payload: []byte(`{"action":"big","size":100000}`)})
		if err != nil {
			t.Fatalf("Invoke: %v", err)
		}
		if res.FuncErr == nil || res.FuncErr.ErrorType != ErrorTypeResponseTooLarge {
			t.Fatalf("got %+v, want function error %s", res.FuncErr, ErrorTypeResponseTooLarge)
		}
		// aws-lambda-go treats the refused response as fatal.
		if err := in.waitExit(t, 10*time.Second); err == nil {
			t.Errorf("function exited cleanly, want an exit error")
		}
	})

	t.Run("unknown request id", func(t *testing.T) {
		s, _ := ready(t, Config{})
		for _, action := range []string{"response", "error"} {
			code, body := post(t, s, "invocation/made-up/"+action, `{}`)
			if code != http.StatusBadRequest || body.ErrorType != apiErrInvalidRequestID {
				t.Errorf("POST %s for an unknown id: got %d %+v, want 400 %s", action, code, body, apiErrInvalidRequestID)
			}
		}
		// The instance is unaffected.
		res, err := s.Invoke(testContext(t, 10*time.Second), Event{RequestID: "after", Payload: []byte(`{"name":"x"}`)})
		if err != nil {
			t.Fatalf("Invoke: %v", err)
		}
		decodeHandlerResponse(t, res)
	})
}
