package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/zfaas/zfaas/audit"
	"github.com/zfaas/zfaas/crypto/mtls"
	"github.com/zfaas/zfaas/gateway"
	"github.com/zfaas/zfaas/identity/attest"
	"github.com/zfaas/zfaas/identity/nodeapi"
	"github.com/zfaas/zfaas/policyd"
	"github.com/zfaas/zfaas/runtime/attest/swtpm"
	"github.com/zfaas/zfaas/runtime/cluster"
	"github.com/zfaas/zfaas/runtime/svid"
	"github.com/zfaas/zfaas/store"
)

// nodesBucket holds the node identity service's records (admission method,
// EK fingerprint, revocation), so they survive a restart.
const nodesBucket = "zfaas_nodes"

// kvNodes is a nodeapi.NodeStore in the store.
type kvNodes struct{ kv *store.KV }

func (n kvNodes) Node(ctx context.Context, node string) (nodeapi.NodeRecord, bool, error) {
	e, err := n.kv.Get(ctx, node)
	if errors.Is(err, store.ErrNotFound) {
		return nodeapi.NodeRecord{}, false, nil
	}
	if err != nil {
		return nodeapi.NodeRecord{}, false, err
	}
	var r nodeapi.NodeRecord
	if err := json.Unmarshal(e.Value, &r); err != nil {
		return nodeapi.NodeRecord{}, false, fmt.Errorf("node record %s: %w", node, err)
	}
	return r, true, nil
}

func (n kvNodes) PutNode(ctx context.Context, r nodeapi.NodeRecord) error {
	b, err := json.Marshal(r)
	if err != nil {
		return err
	}
	for range 10 {
		e, err := n.kv.Get(ctx, r.Node)
		switch {
		case errors.Is(err, store.ErrNotFound):
			_, err = n.kv.Create(ctx, r.Node, b)
		case err == nil:
			_, err = n.kv.Update(ctx, r.Node, b, e.Revision)
		}
		if err == nil || !errors.Is(err, store.ErrConflict) {
			return err
		}
	}
	return fmt.Errorf("node record %s: %w", r.Node, store.ErrConflict)
}

func (n kvNodes) DeleteNode(ctx context.Context, node string) error {
	e, err := n.kv.Get(ctx, node)
	if errors.Is(err, store.ErrNotFound) {
		return nil
	}
	if err != nil {
		return err
	}
	return n.kv.Delete(ctx, node, e.Revision)
}

// policyAdmitter asks the zfaas.admission policy about an attested node.
type policyAdmitter struct{ e *policyd.Engine }

func (a policyAdmitter) Admit(ctx context.Context, c attest.Claims) (bool, []string, error) {
	d, err := a.e.Decide(ctx, policyd.EntryAdmission, c.PolicyInput())
	if err != nil {
		return false, nil, err
	}
	return d.Allow, d.Reasons, nil
}

// nodeEvents turns the node identity service's verdicts into worker
// records (placement follows them) and audit records.
type nodeEvents struct {
	reg   *cluster.Registry
	audit *audit.Log // nil when the trail is off
	td    string
	ttl   time.Duration
	log   *slog.Logger
}

func (e nodeEvents) workerID(node string) string { return "spiffe://" + e.td + "/worker/" + node }

func (e nodeEvents) Admitted(ctx context.Context, c attest.Claims) {
	now := time.Now()
	_, err := e.reg.Admit(ctx, cluster.Attestation{
		Node: c.Node, SPIFFEID: e.workerID(c.Node), Method: c.Method, EKFingerprint: c.EKFingerprint,
		PCRSummary: cluster.SummarizeHexPCRs(c.PCRs), AttestedAt: now, SVIDExpiry: now.Add(e.ttl),
	})
	if err != nil {
		e.log.Error("admitted worker not recorded", "node", c.Node, "err", err)
	}
	e.record(audit.KindWorkerAdmitted, c.Node, audit.OutcomeAllow, map[string]any{"method": c.Method, "ek_fingerprint": c.EKFingerprint})
}

func (e nodeEvents) Refused(ctx context.Context, node string, reasons []string) {
	if cluster.ValidNode(node) {
		if _, err := e.reg.SetState(ctx, node, cluster.StateRefused, reasons); err != nil && !errors.Is(err, cluster.ErrTransition) {
			e.log.Warn("refused worker not recorded", "node", node, "err", err)
		}
	}
	e.record(audit.KindWorkerRefused, node, audit.OutcomeDeny, map[string]any{"reasons": anySlice(reasons)})
}

func (e nodeEvents) Revoked(ctx context.Context, node string, reasons []string) {
	if _, err := e.reg.SetState(ctx, node, cluster.StateRevoked, reasons); err != nil {
		e.log.Error("revoked worker not recorded", "node", node, "err", err)
	}
	e.log.Warn("worker revoked: no more work, no SVID renewal", "node", node, "reasons", reasons)
	e.record(audit.KindWorkerRevoked, node, audit.OutcomeDeny, map[string]any{"reasons": anySlice(reasons)})
}

func (e nodeEvents) record(kind, node, outcome string, d map[string]any) {
	if e.audit == nil {
		return
	}
	d["node"] = node
	_ = e.audit.Append(audit.Record{Kind: kind, Actor: e.workerID(node), Subject: e.workerID(node), Action: "attest", Outcome: outcome, Details: d})
}

func anySlice(s []string) []any {
	out := make([]any, len(s))
	for i, v := range s {
		out[i] = v
	}
	return out
}

// storeServerTLS is the embedded store's TLS for workers on other
// machines: the control plane's SVID, and only clients with a worker or
// gateway SVID of the trust domain.
func storeServerTLS(p *svid.Provider, serverID string, td spiffeid.TrustDomain) *tls.Config {
	c := mtls.ServerConfig(p.SVIDSource(serverID), p)
	c.ClientAuth = tls.RequireAnyClientCert
	verify := c.VerifyPeerCertificate
	c.VerifyPeerCertificate = func(raw [][]byte, chains [][]*x509.Certificate) error {
		if err := verify(raw, chains); err != nil {
			return err
		}
		if len(raw) == 0 {
			return errors.New("a client certificate is required")
		}
		cert, err := x509.ParseCertificate(raw[0])
		if err != nil {
			return err
		}
		id, err := x509svid.IDFromCert(cert)
		if err != nil {
			return err
		}
		if kind, _, _, ok := gateway.ParseSPIFFEID(id.String()); !ok || id.TrustDomain() != td || (kind != "worker" && kind != "gateway") {
			return fmt.Errorf("%s may not use the store", id)
		}
		return nil
	}
	return c
}

// startNodeIdentity builds the node identity service: TPM attestation when
// cluster.ek_roots_file names manufacturer roots, join tokens when
// cluster.join_tokens_file lists some, the admission policy deciding both.
func (p *platform) startNodeIdentity(ctx context.Context, cfg upConfig) (*nodeapi.Server, error) {
	ac := attest.Config{Admitter: policyAdmitter{p.policy}, Logger: p.log}
	switch a := cfg.Worker.Attest; {
	case a == "swtpm":
		// Development: a software TPM for the in-process worker, trusted
		// because this platform manufactured it.
		t, err := swtpm.Manufacture(ctx, filepath.Join(cfg.DataDir, "swtpm"))
		if err != nil {
			return nil, fmt.Errorf("worker.attest swtpm: %w", err)
		}
		if err := t.Serve(ctx); err != nil {
			return nil, fmt.Errorf("worker.attest swtpm: %w", err)
		}
		p.swtpm, p.localTPM = t, "swtpm://"+t.CommandAddr
		ac.Roots, ac.Intermediates = x509.NewCertPool(), x509.NewCertPool()
		ac.Roots.AddCert(t.Root)
		ac.Intermediates.AddCert(t.Intermediate)
		p.log.Warn("development: the in-process worker is attested by a software TPM that this platform manufactured; it proves nothing about the machine", "dir", t.Dir)
	case strings.HasPrefix(a, "/"):
		p.localTPM = a
	}
	if f := cfg.Cluster.EKRootsFile; f != "" {
		raw, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("cluster.ek_roots_file: %w", err)
		}
		if ac.Roots == nil {
			ac.Roots, ac.Intermediates = x509.NewCertPool(), x509.NewCertPool()
		}
		n := 0
		for rest := raw; ; {
			var b *pem.Block
			b, rest = pem.Decode(rest)
			if b == nil {
				break
			}
			c, err := x509.ParseCertificate(b.Bytes)
			if err != nil {
				return nil, fmt.Errorf("cluster.ek_roots_file: %w", err)
			}
			if bytes.Equal(c.RawIssuer, c.RawSubject) {
				ac.Roots.AddCert(c)
				n++
			} else {
				ac.Intermediates.AddCert(c)
			}
		}
		if n == 0 {
			return nil, fmt.Errorf("cluster.ek_roots_file %s: no self-signed root certificate", f)
		}
	}
	var tokens [][sha256.Size]byte
	if f := cfg.Cluster.JoinTokensFile; f != "" {
		raw, err := os.ReadFile(f)
		if err != nil {
			return nil, fmt.Errorf("cluster.join_tokens_file: %w", err)
		}
		for line := range strings.Lines(string(raw)) {
			if t := strings.TrimSpace(line); t != "" && !strings.HasPrefix(t, "#") {
				tokens = append(tokens, nodeapi.HashJoinToken(t))
			}
		}
	}
	kv, err := p.store.KV(ctx, nodesBucket)
	if err != nil {
		return nil, err
	}
	srv, err := nodeapi.New(nodeapi.Config{
		CA: p.identity.CA(), Attest: ac, Nodes: kvNodes{kv},
		Events:    nodeEvents{reg: p.cluster, audit: p.audit, td: p.td.Name(), ttl: cfg.Cluster.WorkerSVIDTTL, log: p.log},
		WorkerTTL: cfg.Cluster.WorkerSVIDTTL, JoinTokens: tokens, Logger: p.log,
	})
	if err != nil {
		return nil, fmt.Errorf("node identity: %w", err)
	}
	if ac.Roots != nil {
		p.log.Info("workers may join with TPM attestation", "ek_roots", cfg.Cluster.EKRootsFile)
	}
	if len(tokens) > 0 {
		p.log.Warn("development: workers may join with a join token, without TPM attestation (when the admission policy allows it)", "tokens", len(tokens))
	}
	return srv, nil
}
