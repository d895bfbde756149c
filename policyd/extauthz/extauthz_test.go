package extauthz

import (
	"context"
	"encoding/json"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"testing"
	"time"

	corev3 "github.com/envoyproxy/go-control-plane/envoy/config/core/v3"
	authv3 "github.com/envoyproxy/go-control-plane/envoy/service/auth/v3"
	typev3 "github.com/envoyproxy/go-control-plane/envoy/type/v3"
	"google.golang.org/genproto/googleapis/rpc/code"
	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"

	"github.com/zfaas/zfaas/policyd"
	"github.com/zfaas/zfaas/store"
)

// startServer runs an engine on an embedded store and the ext_authz service
// on loopback, and returns a real client of it.
func startServer(t *testing.T, cfg policyd.Config) (authv3.AuthorizationClient, *policyd.Engine) {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	t.Cleanup(cancel)
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	s, err := store.Open(ctx, store.Config{DataDir: filepath.Join(t.TempDir(), "nats"), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	cfg.Store, cfg.Node, cfg.Logger = s, "envoy-test", log
	e, err := policyd.New(ctx, cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close(context.Background()) })

	g := grpc.NewServer()
	New(e, log).Register(g)
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go g.Serve(ln)
	t.Cleanup(g.Stop)
	conn, err := grpc.NewClient(ln.Addr().String(), grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close() })
	return authv3.NewAuthorizationClient(conn), e
}

func httpCheck(method, path string, headers map[string]string, body string) *authv3.CheckRequest {
	return &authv3.CheckRequest{Attributes: &authv3.AttributeContext{
		Source: &authv3.AttributeContext_Peer{
			Address:   &corev3.Address{Address: &corev3.Address_SocketAddress{SocketAddress: &corev3.SocketAddress{Address: "10.0.0.1", PortSpecifier: &corev3.SocketAddress_PortValue{PortValue: 45000}}}},
			Principal: "spiffe://zfaas.test/ns/acme/fn/a",
		},
		Destination: &authv3.AttributeContext_Peer{Principal: "spiffe://zfaas.test/ns/acme/fn/b"},
		Request: &authv3.AttributeContext_Request{Http: &authv3.AttributeContext_HttpRequest{
			Id: "req-1", Method: method, Path: path, Host: "b.acme.svc", Protocol: "HTTP/1.1",
			Headers: headers, Body: body,
		}},
	}}
}

func headerMap(opts []*corev3.HeaderValueOption) map[string]string {
	m := map[string]string{}
	for _, o := range opts {
		m[o.GetHeader().GetKey()] = o.GetHeader().GetValue()
	}
	return m
}

func TestCheck(t *testing.T) {
	client, e := startServer(t, policyd.Config{Default: os.DirFS("../testdata/basic"), DecisionLog: true})
	ctx := t.Context()

	t.Run("allowed with headers", func(t *testing.T) {
		resp, err := client.Check(ctx, httpCheck("GET", "/public/a%20b?lang=en", map[string]string{"x-internal": "1", ":authority": "b.acme.svc"}, ""))
		if err != nil {
			t.Fatalf("Check: %v", err)
		}
		if resp.GetStatus().GetCode() != int32(code.Code_OK) {
			t.Fatalf("status: got %v, want OK (%v)", resp.GetStatus(), resp)
		}
		ok := resp.GetOkResponse()
		if ok == nil {
			t.Fatalf("no ok response: %v", resp)
		}
		if got := headerMap(ok.GetHeaders()); got["x-zfaas-checked"] != "yes" {
			t.Errorf("headers: got %v", got)
		}
		if got := headerMap(ok.GetResponseHeadersToAdd()); got["x-zfaas-revision"] != "test" {
			t.Errorf("response headers: got %v", got)
		}
		if !reflect.DeepEqual(ok.GetHeadersToRemove(), []string{"x-internal"}) {
			t.Errorf("headers to remove: got %v", ok.GetHeadersToRemove())
		}
	})
	t.Run("denied with status and body", func(t *testing.T) {
		resp, err := client.Check(ctx, httpCheck("GET", "/private", nil, ""))
		if err != nil {
			t.Fatalf("Check: %v", err)
		}
		if resp.GetStatus().GetCode() != int32(code.Code_PERMISSION_DENIED) {
			t.Fatalf("status: got %v, want PERMISSION_DENIED", resp.GetStatus())
		}
		den := resp.GetDeniedResponse()
		if den.GetStatus().GetCode() != typev3.StatusCode_Unauthorized || den.GetBody() != "denied by zfaas" {
			t.Errorf("denied response: got %v", den)
		}
		if got := headerMap(den.GetHeaders()); got["x-zfaas-reason"] != "not public" {
			t.Errorf("denied headers: got %v", got)
		}
	})
	t.Run("JSON body allowed by a boolean result", func(t *testing.T) {
		body := `{"amount": 5}`
		resp, err := client.Check(ctx, httpCheck("POST", "/orders", map[string]string{"content-type": "application/json", "content-length": "13"}, body))
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetStatus().GetCode() != int32(code.Code_OK) || resp.GetOkResponse() == nil {
			t.Errorf("got %v, want allowed", resp)
		}
	})
	t.Run("JSON body over the limit denied", func(t *testing.T) {
		resp, err := client.Check(ctx, httpCheck("POST", "/orders", map[string]string{"content-type": "application/json"}, `{"amount": 500}`))
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetStatus().GetCode() != int32(code.Code_PERMISSION_DENIED) {
			t.Errorf("got %v, want denied", resp)
		}
	})
	t.Run("truncated body is not parsed", func(t *testing.T) {
		resp, err := client.Check(ctx, httpCheck("POST", "/orders", map[string]string{"content-type": "application/json", "content-length": "9999"}, `{"amount": 5}`))
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetStatus().GetCode() != int32(code.Code_PERMISSION_DENIED) {
			t.Errorf("got %v, want denied", resp)
		}
	})
	t.Run("no attributes", func(t *testing.T) {
		resp, err := client.Check(ctx, &authv3.CheckRequest{})
		if err != nil {
			t.Fatal(err)
		}
		if resp.GetStatus().GetCode() == int32(code.Code_OK) {
			t.Errorf("got %v, want denied", resp)
		}
	})

	if err := e.FlushDecisionLog(ctx); err != nil {
		t.Fatal(err)
	}
	var n int
	if err := e.Decisions(ctx, policyd.DecisionFilter{Entry: policyd.EntryEnvoy}, func(r policyd.DecisionRecord) {
		n++
		if r.Caller != "spiffe://zfaas.test/ns/acme/fn/a" {
			t.Errorf("record caller: got %q", r.Caller)
		}
	}); err != nil {
		t.Fatal(err)
	}
	if n != 5 {
		t.Errorf("envoy decision records: got %d, want 5", n)
	}
}

func TestCheckWithoutPolicyDenies(t *testing.T) {
	client, _ := startServer(t, policyd.Config{})
	resp, err := client.Check(t.Context(), httpCheck("GET", "/public/x?lang=en", nil, ""))
	if err != nil {
		t.Fatal(err)
	}
	if resp.GetStatus().GetCode() == int32(code.Code_OK) || resp.GetDeniedResponse().GetStatus().GetCode() != typev3.StatusCode_ServiceUnavailable {
		t.Errorf("got %v, want a 503 denial", resp)
	}
}

func TestInput(t *testing.T) {
	req := httpCheck("POST", "/a/b%2Fc/?x=1&x=2&y=", map[string]string{"content-type": "application/x-www-form-urlencoded"}, "k=v&k=w")
	in, err := Input(req)
	if err != nil {
		t.Fatal(err)
	}
	raw, _ := json.Marshal(in)
	var got map[string]any
	if err := json.Unmarshal(raw, &got); err != nil {
		t.Fatal(err)
	}
	want := map[string]any{
		"parsed_path":    []any{"a", "b/c", ""},
		"parsed_query":   map[string]any{"x": []any{"1", "2"}, "y": []any{""}},
		"parsed_body":    map[string]any{"k": []any{"v", "w"}},
		"truncated_body": false,
		"version":        map[string]any{"encoding": "protojson", "ext_authz": "v3"},
	}
	for k, v := range want {
		if !reflect.DeepEqual(got[k], v) {
			t.Errorf("%s: got %#v, want %#v", k, got[k], v)
		}
	}
	attrs := got["attributes"].(map[string]any)
	httpReq := attrs["request"].(map[string]any)["http"].(map[string]any)
	if httpReq["method"] != "POST" || httpReq["host"] != "b.acme.svc" || httpReq["path"] != "/a/b%2Fc/?x=1&x=2&y=" {
		t.Errorf("attributes.request.http: got %v", httpReq)
	}
	src := attrs["source"].(map[string]any)
	if src["principal"] != "spiffe://zfaas.test/ns/acme/fn/a" || src["address"].(map[string]any)["socketAddress"].(map[string]any)["portValue"] != float64(45000) {
		t.Errorf("attributes.source: got %v", src)
	}

	// Headers sent only as a header_map appear under headers too.
	req = httpCheck("GET", "/", nil, "")
	req.Attributes.Request.Http.HeaderMap = &corev3.HeaderMap{Headers: []*corev3.HeaderValue{{Key: "X-A", Value: "1"}, {Key: "x-a", Value: "2"}}}
	in, err = Input(req)
	if err != nil {
		t.Fatal(err)
	}
	h := in["attributes"].(map[string]any)["request"].(map[string]any)["http"].(map[string]any)["headers"].(map[string]any)
	if h["x-a"] != "1,2" {
		t.Errorf("headers from header_map: got %v", h)
	}
	if !reflect.DeepEqual(in["parsed_path"], []any{""}) {
		t.Errorf("parsed_path of /: got %v", in["parsed_path"])
	}
	if _, ok := in["parsed_body"]; ok {
		t.Error("parsed_body present without a body")
	}
}
