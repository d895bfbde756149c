package gateway

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/zfaas/zfaas/api"
	"github.com/zfaas/zfaas/store"
)

// freePorts returns n distinct free loopback TCP ports.
func freePorts(t *testing.T, n int) []int {
	t.Helper()
	var ports []int
	var lns []net.Listener
	for range n {
		ln, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		lns = append(lns, ln)
		ports = append(ports, ln.Addr().(*net.TCPAddr).Port)
	}
	for _, ln := range lns {
		ln.Close()
	}
	return ports
}

// startNATSCluster runs a 3-node NATS cluster with JetStream on loopback,
// in this process, and returns the servers.
func startNATSCluster(t *testing.T) []*server.Server {
	t.Helper()
	ports := freePorts(t, 6)
	var routes []*url.URL
	for i := range 3 {
		routes = append(routes, &url.URL{Scheme: "nats-route", Host: fmt.Sprintf("127.0.0.1:%d", ports[3+i])})
	}
	var srvs []*server.Server
	for i := range 3 {
		s, err := server.NewServer(&server.Options{
			ServerName: fmt.Sprintf("n%d", i+1),
			Host:       "127.0.0.1",
			Port:       ports[i],
			JetStream:  true,
			StoreDir:   t.TempDir(),
			NoSigs:     true,
			Cluster:    server.ClusterOpts{Name: "zfaas-test", Host: "127.0.0.1", Port: ports[3+i]},
			Routes:     routes,
		})
		if err != nil {
			t.Fatal(err)
		}
		s.Start()
		srvs = append(srvs, s)
		t.Cleanup(func() { s.Shutdown(); s.WaitForShutdown() })
	}
	for _, s := range srvs {
		if !s.ReadyForConnections(20 * time.Second) {
			t.Fatal("nats node not ready")
		}
	}
	return srvs
}

// TestNATSClusterSurvivesNodeLoss: with the store on a 3-node NATS cluster
// (replicas 3), the loss of one node loses no registered function, and the
// registry keeps serving reads and compare-and-set writes.
func TestNATSClusterSurvivesNodeLoss(t *testing.T) {
	if testing.Short() {
		t.Skip("starts a 3-node NATS cluster")
	}
	srvs := startNATSCluster(t)
	var urls []string
	for _, s := range srvs {
		urls = append(urls, s.ClientURL())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	var st *store.Store
	var err error
	// JetStream needs a meta leader before the first bucket can be made.
	for deadline := time.Now().Add(30 * time.Second); ; {
		st, err = store.Open(ctx, store.Config{URL: strings.Join(urls, ","), Replicas: 3, SpoolDir: t.TempDir(), StartTimeout: 20 * time.Second})
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("open the store on the cluster: %v", err)
		}
		time.Sleep(200 * time.Millisecond)
	}
	defer st.Close()
	reg, err := NewRegistry(ctx, st, nil)
	if err != nil {
		t.Fatal(err)
	}
	pkg, err := st.PutPackage(ctx, bytes.NewReader([]byte("package bytes")))
	if err != nil {
		t.Fatal(err)
	}
	cfg := api.FunctionConfig{Runtime: api.RuntimeGo, Handler: "bootstrap"}
	if err := cfg.Normalize(); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		if _, err := reg.Publish(ctx, "default", fmt.Sprintf("fn%d", i), cfg, pkg, ""); err != nil {
			t.Fatal(err)
		}
	}
	// Lose a node (whichever; the client fails over to the others).
	srvs[0].Shutdown()
	srvs[0].WaitForShutdown()

	// Reads and writes keep working once the remaining two elect leaders
	// (each try bounded, so a slow election costs tries, not the test).
	deadline := time.Now().Add(2 * time.Minute)
	for {
		octx, ocancel := context.WithTimeout(ctx, 10*time.Second)
		fns, lerr := reg.List(octx, "default")
		_, perr := reg.Publish(octx, "default", "after-loss", cfg, pkg, "")
		ocancel()
		if lerr == nil && perr == nil && len(fns) >= 5 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("after losing a node: list %d functions (%v), publish: %v", len(fns), lerr, perr)
		}
		time.Sleep(500 * time.Millisecond)
	}
	for i := range 5 {
		v, err := reg.Resolve(ctx, "default", fmt.Sprintf("fn%d", i), "", 0)
		if err != nil || v.Version != 1 {
			t.Fatalf("fn%d after the loss: %+v %v", i, v, err)
		}
	}
	rc, err := st.OpenPackage(ctx, pkg.Digest)
	if err != nil {
		t.Fatalf("package after the loss: %v", err)
	}
	rc.Close()
}
