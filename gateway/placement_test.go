package gateway

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"testing"

	"github.com/zfaas/zfaas/api"
)

// listPlacer places on the first node not excluded.
type listPlacer struct {
	nodes    []string
	released int
}

func (l *listPlacer) Place(_ api.Version, exclude map[string]bool) (Placement, func(), error) {
	for _, n := range l.nodes {
		if !exclude[n] {
			return Placement{Node: n, Addr: n + ":1"}, func() { l.released++ }, nil
		}
	}
	return Placement{}, nil, fmt.Errorf("%w: all excluded", ErrNoWorker)
}

type nodeInvoker struct {
	node string
	err  error
	hits *[]string
}

func (n nodeInvoker) Invoke(context.Context, api.Invocation) (*api.InvocationResult, error) {
	*n.hits = append(*n.hits, n.node)
	if n.err != nil {
		return nil, n.err
	}
	return &api.InvocationResult{Payload: []byte(n.node)}, nil
}

type mapDialer map[string]Invoker

func (m mapDialer) Worker(p Placement) (Invoker, error) {
	w, ok := m[p.Node]
	if !ok {
		return nil, errors.New("dial refused")
	}
	return w, nil
}

func TestClusterInvoker(t *testing.T) {
	var hits []string
	notDelivered := fmt.Errorf("%w: connection refused", ErrNotDelivered)
	lost := fmt.Errorf("%w: connection reset", ErrWorkerLost)
	tests := []struct {
		name     string
		nodes    []string
		workers  mapDialer
		want     string
		wantErr  error
		wantHits []string
	}{
		{"local first", []string{"local", "w1"}, mapDialer{}, "local", nil, []string{"local"}},
		{"remote", []string{"w1"}, mapDialer{"w1": nodeInvoker{node: "w1", hits: &hits}}, "w1", nil, []string{"w1"}},
		{"undelivered goes elsewhere", []string{"w1", "w2"}, mapDialer{"w1": nodeInvoker{node: "w1", err: notDelivered, hits: &hits}, "w2": nodeInvoker{node: "w2", hits: &hits}}, "w2", nil, []string{"w1", "w2"}},
		{"dial failure goes elsewhere", []string{"gone", "w2"}, mapDialer{"w2": nodeInvoker{node: "w2", hits: &hits}}, "w2", nil, []string{"w2"}},
		{"lost is reported, not retried", []string{"w1", "w2"}, mapDialer{"w1": nodeInvoker{node: "w1", err: lost, hits: &hits}, "w2": nodeInvoker{node: "w2", hits: &hits}}, "", ErrWorkerLost, []string{"w1"}},
		{"no worker", nil, mapDialer{}, "", ErrNoWorker, nil},
		{"all undelivered", []string{"w1", "w2"}, mapDialer{"w1": nodeInvoker{node: "w1", err: notDelivered, hits: &hits}, "w2": nodeInvoker{node: "w2", err: notDelivered, hits: &hits}}, "", ErrNoWorker, []string{"w1", "w2"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			hits = nil
			pl := &listPlacer{nodes: tt.nodes}
			c := &ClusterInvoker{Placer: pl, Local: nodeInvoker{node: "local", hits: &hits}, LocalNode: "local", Remote: tt.workers}
			res, err := c.Invoke(context.Background(), api.Invocation{})
			if !errors.Is(err, tt.wantErr) || (tt.wantErr == nil && string(res.Payload) != tt.want) {
				t.Fatalf("got %v %v, want %q %v", res, err, tt.want, tt.wantErr)
			}
			if fmt.Sprint(hits) != fmt.Sprint(tt.wantHits) {
				t.Fatalf("tried %v, want %v", hits, tt.wantHits)
			}
			if tries := len(tt.wantHits); pl.released < tries-1 {
				t.Fatalf("released %d placements for %d tries", pl.released, tries)
			}
		})
	}
	g := &Gateway{}
	if st, code, _ := g.classify(fmt.Errorf("x: %w", ErrNoWorker)); st != http.StatusServiceUnavailable || code != CodeUnavailable {
		t.Errorf("no worker: %d %s", st, code)
	}
	if st, code, _ := g.classify(lost); st != http.StatusBadGateway || code != CodeWorkerLost {
		t.Errorf("lost: %d %s", st, code)
	}
}
