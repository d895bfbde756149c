package decisionapi

import (
	"context"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/structpb"

	policydv1 "github.com/zfaas/zfaas/api/policyd/v1"
	"github.com/zfaas/zfaas/policyd"
	"github.com/zfaas/zfaas/store"
)

func startServer(t *testing.T, cfg policyd.Config) policydv1.DecisionsClient {
	t.Helper()
	ctx, cancel := context.WithTimeout(t.Context(), 60*time.Second)
	t.Cleanup(cancel)
	log := slog.New(slog.NewTextHandler(t.Output(), &slog.HandlerOptions{Level: slog.LevelWarn}))
	s, err := store.Open(ctx, store.Config{DataDir: filepath.Join(t.TempDir(), "nats"), Logger: log})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { s.Close() })
	cfg.Store, cfg.Node, cfg.Logger = s, "api-test", log
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
	return policydv1.NewDecisionsClient(conn)
}

func TestDecide(t *testing.T) {
	c := startServer(t, policyd.Config{Default: os.DirFS("../testdata/basic")})
	ctx := t.Context()
	in, err := structpb.NewStruct(map[string]any{"caller": map[string]any{"spiffe_id": "spiffe://zfaas.test/ns/acme/fn/a"}, "function": map[string]any{"name": "hello"}})
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Decide(ctx, &policydv1.DecideRequest{Entry: "invoke", Input: &policydv1.DecideRequest_InputStruct{InputStruct: in}})
	if err != nil {
		t.Fatalf("Decide: %v", err)
	}
	if !resp.GetAllow() || resp.GetRevision() != 0 || resp.GetDecisionId() == "" || !slices.Equal(resp.GetReasons(), []string{"spiffe://zfaas.test/ns/acme/fn/a may invoke hello"}) {
		t.Errorf("allowed: got %v", resp)
	}

	resp, err = c.Decide(ctx, &policydv1.DecideRequest{Entry: "invoke", Input: &policydv1.DecideRequest_InputJson{InputJson: []byte(`{"caller": {"spiffe_id": "spiffe://zfaas.test/ns/evil/fn/x"}}`)}})
	if err != nil {
		t.Fatalf("Decide: %v", err)
	}
	if resp.GetAllow() || !slices.Equal(resp.GetReasons(), []string{"caller is blocked"}) {
		t.Errorf("denied: got %v", resp)
	}

	resp, err = c.Decide(ctx, &policydv1.DecideRequest{Entry: "invoke"})
	if err != nil || resp.GetAllow() {
		t.Errorf("no input: got %v, %v; want a denial", resp, err)
	}

	tests := []struct {
		name string
		req  *policydv1.DecideRequest
		want codes.Code
	}{
		{"unknown entry", &policydv1.DecideRequest{Entry: "nope"}, codes.InvalidArgument},
		{"bad JSON", &policydv1.DecideRequest{Entry: "invoke", Input: &policydv1.DecideRequest_InputJson{InputJson: []byte(`[1]`)}}, codes.InvalidArgument},
		{"trailing JSON", &policydv1.DecideRequest{Entry: "invoke", Input: &policydv1.DecideRequest_InputJson{InputJson: []byte(`{} {}`)}}, codes.InvalidArgument},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := c.Decide(ctx, tt.req)
			if status.Code(err) != tt.want {
				t.Errorf("got %v, want %v", err, tt.want)
			}
		})
	}
}

func TestDecideWithoutPolicy(t *testing.T) {
	c := startServer(t, policyd.Config{})
	_, err := c.Decide(t.Context(), &policydv1.DecideRequest{Entry: "invoke"})
	if status.Code(err) != codes.Unavailable {
		t.Errorf("got %v, want Unavailable", err)
	}
}
