package main

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffegrpc/grpccredentials"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/credentials"

	"github.com/zfaas/zfaas/api"
	"github.com/zfaas/zfaas/gateway"
	"github.com/zfaas/zfaas/runtime/cluster"
	"github.com/zfaas/zfaas/runtime/nodeclient"
	"github.com/zfaas/zfaas/runtime/worker"
	"github.com/zfaas/zfaas/runtime/workerapi"
)

// localNode is the node name of the worker inside `zfaas up`.
const localNode = "local"

// attestLocal is the attestation method of that worker: it runs in the
// control plane's own process, so there is no machine to attest.
const attestLocal = "local"

// placerAdapter binds the cluster placer to the gateway's Placer.
type placerAdapter struct{ p *cluster.Placer }

func (a placerAdapter) Place(v api.Version, exclude map[string]bool) (gateway.Placement, func(), error) {
	rec, release, err := a.p.Place(v, exclude)
	if err != nil {
		if errors.Is(err, cluster.ErrNoWorker) {
			return gateway.Placement{}, nil, fmt.Errorf("%w: %w", gateway.ErrNoWorker, err)
		}
		return gateway.Placement{}, nil, err
	}
	return gateway.Placement{Node: rec.Node, Addr: rec.Addr, SPIFFEID: rec.SPIFFEID}, release, nil
}

// workerDialer keeps one mutual-TLS gRPC client per remote worker, pinned
// to the worker's SPIFFE ID.
type workerDialer struct {
	svids   x509svid.Source
	bundles x509bundle.Source
	// gm dials workers over TLCP with the gateway's SM2 pair (gm suite).
	gm      func(workerID spiffeid.ID) credentials.TransportCredentials
	mu      sync.Mutex
	clients map[string]*remoteWorker // by node
}

type remoteWorker struct {
	addr, id string
	c        *workerapi.Client
}

func (d *workerDialer) Worker(p gateway.Placement) (gateway.Invoker, error) {
	id, err := spiffeid.FromString(p.SPIFFEID)
	if err != nil {
		return nil, fmt.Errorf("worker %s has no valid SPIFFE ID: %w", p.Node, err)
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	if rw, ok := d.clients[p.Node]; ok && rw.addr == p.Addr && rw.id == p.SPIFFEID {
		return rw, nil
	} else if ok {
		rw.c.Close()
		delete(d.clients, p.Node)
	}
	creds := grpccredentials.MTLSClientCredentials(d.svids, d.bundles, tlsconfig.AuthorizeID(id))
	if d.gm != nil {
		creds = d.gm(id)
	}
	c, err := workerapi.Dial(p.Addr, creds)
	if err != nil {
		return nil, err
	}
	rw := &remoteWorker{addr: p.Addr, id: p.SPIFFEID, c: c}
	d.clients[p.Node] = rw
	return rw, nil
}

func (d *workerDialer) Close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	for n, rw := range d.clients {
		rw.c.Close()
		delete(d.clients, n)
	}
}

// Invoke maps the client's delivery errors to the gateway's.
func (r *remoteWorker) Invoke(ctx context.Context, inv api.Invocation) (*api.InvocationResult, error) {
	res, err := r.c.Invoke(ctx, inv)
	switch {
	case err == nil:
		return res, nil
	case errors.Is(err, workerapi.ErrNotDelivered):
		return nil, fmt.Errorf("%w: %w", gateway.ErrNotDelivered, err)
	case errors.Is(err, workerapi.ErrLost):
		return nil, fmt.Errorf("%w: %w", gateway.ErrWorkerLost, err)
	}
	return nil, err
}

// workerAdmin serves the gateway's /v1/workers from the registry.
type workerAdmin struct{ reg *cluster.Registry }

func (a workerAdmin) Workers(context.Context) ([]api.WorkerInfo, error) {
	var out []api.WorkerInfo
	for _, w := range a.reg.Workers() {
		out = append(out, workerInfo(w))
	}
	return out, nil
}

func (a workerAdmin) Drain(ctx context.Context, node string, drain bool) (api.WorkerInfo, error) {
	if _, ok := a.reg.Get(node); !ok {
		return api.WorkerInfo{}, gateway.ErrWorkerNotFound
	}
	state, reasons := cluster.StateDraining, []string{"drained by an operator"}
	if !drain {
		state, reasons = cluster.StateAdmitted, nil
	}
	if _, err := a.reg.SetState(ctx, node, state, reasons); err != nil {
		if errors.Is(err, cluster.ErrTransition) {
			return api.WorkerInfo{}, fmt.Errorf("%w: %w", gateway.ErrWorkerState, err)
		}
		return api.WorkerInfo{}, err
	}
	w, _ := a.reg.Get(node)
	return workerInfo(w), nil
}

func workerInfo(w cluster.Worker) api.WorkerInfo {
	pcrs := map[string]string{}
	for k, v := range w.PCRSummary {
		pcrs[strconv.Itoa(k)] = v
	}
	return api.WorkerInfo{
		Node: w.Node, SPIFFEID: w.SPIFFEID, Addr: w.Addr, State: string(w.State), Live: w.Live,
		AttestMethod: w.AttestMethod, EKFingerprint: w.EKFingerprint, PCRs: pcrs,
		AttestedAt: w.AttestedAt, SVIDExpiry: w.SVIDExpiry, LeaseExpiry: w.LeaseDeadline,
		CapacityMB: w.Capacity.MemoryMB, MemoryMB: w.Load.MemoryMB, Instances: w.Load.Instances,
		Inflight: w.Load.Inflight, Reasons: w.Reasons,
	}
}

// loadSource reports a worker's load to its heartbeat.
type loadSource struct {
	w          *worker.Worker
	capacityMB int
}

func (l loadSource) Load() cluster.Snapshot {
	ld := l.w.Load()
	s := cluster.Snapshot{
		Capacity: cluster.Capacity{MemoryMB: l.capacityMB},
		Load:     cluster.Load{MemoryMB: ld.MemoryMB, Instances: ld.Instances, Inflight: ld.Inflight},
	}
	for key, st := range ld.Versions {
		if st.Idle > 0 {
			s.Warm = append(s.Warm, cluster.Warm{Version: key, Idle: st.Idle})
		}
	}
	return s
}

// workerLocal adapts the worker to the worker API's Local.
type workerLocal struct{ *worker.Worker }

func (l workerLocal) Load() workerapi.Load { return workerapi.Load(l.Worker.Load()) }

// defaultCapacityMB is the memory a worker offers to instances when
// worker.capacity_mb is 0: three quarters of the machine's.
func defaultCapacityMB() int {
	f, err := os.Open("/proc/meminfo")
	if err != nil {
		return 4096
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "MemTotal:" {
			kb, err := strconv.Atoi(fields[1])
			if err == nil {
				return kb / 1024 * 3 / 4
			}
		}
	}
	return 4096
}

// startLocalWorkerLease registers the in-process worker and keeps its
// lease; it returns the heartbeat's run loop. With worker.attest "none" the
// worker is part of the control plane and recorded as such ("local");
// otherwise the loop first attests it with its TPM through the node
// identity service on this platform's own gRPC port, like any worker
// (re-attesting at half its SVID's life; a refusal revokes it and the
// platform serves on without it).
func startLocalWorkerLease(ctx context.Context, p *platform, capacityMB int, tpmAddr string) (task, error) {
	hbc := cluster.HeartbeatConfig{
		Store: p.store, Node: localNode, Source: loadSource{w: p.worker, capacityMB: capacityMB}, Logger: p.log,
	}
	beat := func(ctx context.Context) error {
		hb, err := cluster.NewHeartbeat(ctx, hbc)
		if err != nil {
			return err
		}
		if _, err := hb.Beat(ctx); err != nil {
			return fmt.Errorf("local worker lease: %w", err)
		}
		err = hb.Run(ctx)
		lctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		_ = hb.Leave(lctx)
		if errors.Is(err, context.Canceled) {
			return ctx.Err()
		}
		return err
	}
	if tpmAddr == "" {
		if _, err := p.cluster.Admit(ctx, cluster.Attestation{
			Node: localNode, SPIFFEID: "spiffe://" + p.td.Name() + "/worker/" + localNode, Method: attestLocal, AttestedAt: time.Now(),
		}); err != nil {
			return nil, fmt.Errorf("register the local worker: %w", err)
		}
		hb, err := cluster.NewHeartbeat(ctx, hbc)
		if err != nil {
			return nil, err
		}
		if _, err := hb.Beat(ctx); err != nil {
			return nil, fmt.Errorf("local worker lease: %w", err)
		}
		return beat, nil
	}
	bundle, err := p.identity.GetX509BundleForTrustDomain(p.td)
	if err != nil {
		return nil, err
	}
	gw := spiffeid.RequireFromString(p.gatewayID)
	return func(ctx context.Context) error {
		// The gRPC server starts with the platform's run: retry until it
		// answers.
		var wid *nodeclient.WorkerIdentity
		for {
			jctx, cancel := context.WithTimeout(ctx, 30*time.Second)
			wid, err = nodeclient.Join(jctx, nodeclient.Config{Addr: p.grpcAddr, Bundle: bundle, ServerAuthorizer: tlsconfig.AuthorizeID(gw),
				Node: localNode, Attester: &sessionTPM{addr: tpmAddr, node: localNode, log: p.log}, Logger: p.log})
			cancel()
			if err == nil {
				break
			}
			if errors.Is(err, nodeclient.ErrRefused) {
				p.log.Error("the in-process worker was refused admission; this platform runs no functions itself", "err", err)
				<-ctx.Done()
				return ctx.Err()
			}
			select {
			case <-ctx.Done():
				return ctx.Err()
			case <-time.After(200 * time.Millisecond):
			}
		}
		defer wid.Close()
		p.log.Info("in-process worker attested by its TPM", "spiffe_id", wid.ID().String())
		return runTasks(ctx, beat, func(ctx context.Context) error {
			if err := wid.Run(ctx); err != nil {
				p.log.Error("the in-process worker is no longer admitted (revoked or expired); it gets no more work", "err", err)
				<-ctx.Done()
			}
			return ctx.Err()
		})
	}, nil
}
