package nodeapi_test

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	zfaasv1 "github.com/zfaas/zfaas/api/zfaas/v1"
	"github.com/zfaas/zfaas/identity"
	"github.com/zfaas/zfaas/identity/attest"
	"github.com/zfaas/zfaas/identity/ca"
	"github.com/zfaas/zfaas/identity/nodeapi"
	rattest "github.com/zfaas/zfaas/runtime/attest"
	"github.com/zfaas/zfaas/runtime/attest/swtpmtest"
	"github.com/zfaas/zfaas/runtime/nodeclient"
)

// machine is one swtpm with its attester.
type machine struct {
	sim *swtpmtest.TPM
	tpm transport.TPM
	att *rattest.Attester
}

func newMachine(t testing.TB, node string) *machine {
	t.Helper()
	sim := swtpmtest.Start(t)
	tpm := sim.Open(t)
	att, err := rattest.New(context.Background(), rattest.Config{TPM: tpm, Node: node, EventLog: "-", EKChain: [][]byte{sim.Intermediate.Raw}})
	if err != nil {
		t.Fatalf("attester: %v", err)
	}
	t.Cleanup(func() { att.Close() })
	return &machine{sim: sim, tpm: tpm, att: att}
}

// tamper wraps an attester: hello may replace the Hello, answer the
// answers (call 0 answers the challenge, call 1 the binding challenge).
type tamper struct {
	nodeclient.Attester
	hello  func() *attest.Hello
	answer func(ctx context.Context, call int, c *attest.Challenge) (*attest.Evidence, error)

	mu    sync.Mutex
	calls int
}

func (a *tamper) Hello() *attest.Hello {
	if a.hello != nil {
		return a.hello()
	}
	return a.Attester.Hello()
}

func (a *tamper) Answer(ctx context.Context, c *attest.Challenge) (*attest.Evidence, error) {
	a.mu.Lock()
	call := a.calls % 2
	a.calls++
	a.mu.Unlock()
	if a.answer != nil {
		return a.answer(ctx, call, c)
	}
	return a.Attester.Answer(ctx, c)
}

func join(t *testing.T, e *env, node string, a nodeclient.Attester) (*nodeclient.WorkerIdentity, error) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	w, err := nodeclient.Join(ctx, nodeclient.Config{Addr: e.addr, Bundle: e.bundle, Node: node, Attester: a})
	if err == nil {
		t.Cleanup(func() { w.Close() })
	}
	return w, err
}

// wantRefused checks err is a refusal whose message contains want and
// that the server reported it.
func wantRefused(t *testing.T, e *env, node string, err error, want string) {
	t.Helper()
	if !errors.Is(err, nodeclient.ErrRefused) {
		t.Fatalf("got error %v, want ErrRefused", err)
	}
	if !strings.Contains(err.Error(), want) {
		t.Errorf("got error %q, want it to contain %q", err, want)
	}
	_, refused, _ := e.events.snapshot()
	if len(refused[node]) == 0 {
		t.Errorf("got no Refused event for %s", node)
	}
}

// foreignQuote has machine m quote with nonce, for evidence forged from
// another TPM: m answers a challenge made for its own EK, with the nonce
// replaced.
func foreignQuote(t *testing.T, m *machine, nonce []byte) *attest.Evidence {
	t.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(m.sim.Root)
	v, err := attest.New(attest.Config{Roots: pool, Admitter: allowAll{}})
	if err != nil {
		t.Fatal(err)
	}
	ch, err := v.Challenge(context.Background(), m.att.Hello())
	if err != nil {
		t.Fatal(err)
	}
	ch.Nonce = nonce
	ev, err := m.att.Answer(context.Background(), ch)
	if err != nil {
		t.Fatal(err)
	}
	return ev
}

type allowAll struct{}

func (allowAll) Admit(context.Context, attest.Claims) (bool, []string, error) { return true, nil, nil }

func zeroPCRs() map[string]map[string]string {
	g := map[string]string{}
	for i := range 8 {
		g[string(rune('0'+i))] = strings.Repeat("0", 64)
	}
	return map[string]map[string]string{"sha256": g}
}

// TestTPM runs the attestation service against two real swtpm machines.
func TestTPM(t *testing.T) {
	a := newMachine(t, "w1")
	b := newMachine(t, "w1")
	roots := []*x509.Certificate{a.sim.Root, b.sim.Root}
	golden := admission{GoldenPCRs: zeroPCRs()}

	t.Run("refused by PCR policy", func(t *testing.T) {
		bad := zeroPCRs()
		bad["sha256"]["0"] = strings.Repeat("ab", 32)
		e := newEnv(t, envOpts{roots: roots, admission: admission{GoldenPCRs: bad}})
		w, err := join(t, e, "w1", a.att)
		if w != nil {
			t.Fatal("got a worker identity, want none")
		}
		wantRefused(t, e, "w1", err, "PCR sha256:0 is 0000")
		if n, _, _ := e.events.snapshot(); n != 0 {
			t.Errorf("got %d admissions, want 0", n)
		}
	})

	t.Run("replayed evidence", func(t *testing.T) {
		e := newEnv(t, envOpts{roots: roots, admission: golden})
		var old *attest.Evidence
		rec := &tamper{Attester: a.att, answer: func(ctx context.Context, call int, c *attest.Challenge) (*attest.Evidence, error) {
			ev, err := a.att.Answer(ctx, c)
			if call == 0 && err == nil {
				old = ev
			}
			return ev, err
		}}
		if _, err := join(t, e, "w1", rec); err != nil {
			t.Fatalf("first join: %v", err)
		}
		replay := &tamper{Attester: a.att, answer: func(ctx context.Context, call int, c *attest.Challenge) (*attest.Evidence, error) {
			if call == 0 {
				// The TPM activates the fresh credential, but the quote
				// is the old one (taken when the PCRs were good).
				fresh, err := a.att.Answer(ctx, c)
				if err != nil {
					return nil, err
				}
				ev := *old
				ev.ChallengeID, ev.Secret = c.ID, fresh.Secret
				return &ev, nil
			}
			return a.att.Answer(ctx, c)
		}}
		_, err := join(t, e, "w1", replay)
		wantRefused(t, e, "w1", err, "quote nonce mismatch")
	})

	t.Run("quote from another TPM than the EK", func(t *testing.T) {
		e := newEnv(t, envOpts{roots: roots, admission: golden})
		forged := &tamper{Attester: a.att, answer: func(ctx context.Context, call int, c *attest.Challenge) (*attest.Evidence, error) {
			ev, err := a.att.Answer(ctx, c)
			if err != nil || call == 1 {
				return ev, err
			}
			fq := foreignQuote(t, b, c.Nonce)
			ev.Quote, ev.Signature = fq.Quote, fq.Signature
			return ev, nil
		}}
		_, err := join(t, e, "w1", forged)
		wantRefused(t, e, "w1", err, "quote signature invalid")
	})

	t.Run("AK not bound to the EK", func(t *testing.T) {
		e := newEnv(t, envOpts{roots: roots, admission: golden})
		mixed := &tamper{Attester: a.att,
			hello: func() *attest.Hello {
				h := *a.att.Hello()
				h.AKPublic = b.att.Hello().AKPublic
				return &h
			},
			answer: func(ctx context.Context, call int, c *attest.Challenge) (*attest.Evidence, error) {
				// A cannot activate a credential bound to B's AK, B
				// cannot decrypt one made for A's EK: guess the secret.
				if _, err := a.att.Answer(ctx, c); err == nil {
					t.Error("TPM A activated a credential bound to another TPM's AK")
				}
				ev := foreignQuote(t, b, c.Nonce)
				ev.ChallengeID = c.ID
				ev.Secret = make([]byte, 32)
				rand.Read(ev.Secret)
				return ev, nil
			}}
		_, err := join(t, e, "w1", mixed)
		wantRefused(t, e, "w1", err, "credential activation failed")
	})

	t.Run("CSR not bound to the session", func(t *testing.T) {
		e := newEnv(t, envOpts{roots: roots, admission: golden})
		other, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		spki, _ := x509.MarshalPKIXPublicKey(other.Public())
		var nonce []byte
		unbound := &tamper{Attester: a.att, answer: func(ctx context.Context, call int, c *attest.Challenge) (*attest.Evidence, error) {
			if call == 0 {
				nonce = c.Nonce
				return a.att.Answer(ctx, c)
			}
			bc := *c
			bc.Nonce = nodeapi.CSRBinding(c.ID, nonce, spki)
			return a.att.Answer(ctx, &bc)
		}}
		_, err := join(t, e, "w1", unbound)
		wantRefused(t, e, "w1", err, "CSR is not bound")

		// Sending the main quote as the binding quote binds nothing.
		noBinding := &tamper{Attester: a.att, answer: func(ctx context.Context, call int, c *attest.Challenge) (*attest.Evidence, error) {
			if call == 0 {
				nonce = c.Nonce
			} else {
				bc := *c
				bc.Nonce = nonce
				c = &bc
			}
			return a.att.Answer(ctx, c)
		}}
		_, err = join(t, e, "w1", noBinding)
		wantRefused(t, e, "w1", err, "CSR is not bound")
	})

	t.Run("another EK for an admitted node", func(t *testing.T) {
		e := newEnv(t, envOpts{roots: roots, admission: golden})
		target := &switchable{m: a.att}
		w, err := join(t, e, "w1", target)
		if err != nil {
			t.Fatal(err)
		}
		// A fresh join under the same name from another TPM is refused
		// and does not revoke the node.
		_, err = join(t, e, "w1", b.att)
		wantRefused(t, e, "w1", err, "is not the EK node w1 was admitted with")
		// The node's own SVID re-attesting from another TPM revokes it.
		target.set(b.att)
		err = w.Renew(context.Background())
		if !errors.Is(err, nodeclient.ErrRefused) || !strings.Contains(err.Error(), "revoked") {
			t.Fatalf("got %v, want a refusal that revokes", err)
		}
		if _, _, revoked := e.events.snapshot(); len(revoked["w1"]) == 0 {
			t.Error("got no Revoked event")
		}
	})

	// Last: it extends a PCR of machine A.
	t.Run("admit, renew, PCR change revokes", func(t *testing.T) {
		const ttl = 3 * time.Minute
		e := newEnv(t, envOpts{roots: roots, admission: golden, workerTTL: ttl})
		start := time.Now()
		w, err := join(t, e, "w1", a.att)
		if err != nil {
			t.Fatalf("join: %v", err)
		}
		svid, _ := w.GetX509SVID()
		checkWorkerSVID(t, e, svid, "w1", start, ttl)
		if got := w.Method(); got != nodeapi.MethodTPM {
			t.Errorf("got method %q, want tpm", got)
		}
		n, _, _ := e.events.snapshot()
		if n != 1 || e.events.admitted[0].Method != "tpm" || e.events.admitted[0].EKFingerprint == "" {
			t.Fatalf("got %d admissions (%+v), want 1 by tpm with an EK fingerprint", n, e.events.admitted)
		}

		// Instances get SVIDs while the worker is admitted.
		fn := mustID(identity.FunctionID(td, "acme", "hello"))
		iss := w.Issuer()
		key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		inst, err := iss.MintX509SVID(context.Background(), ca.X509Params{ID: fn, PublicKey: key.Public()})
		if err != nil {
			t.Fatalf("mint instance svid: %v", err)
		}
		if inst.Certificates[0].NotAfter.After(svid.Certificates[0].NotAfter) {
			t.Errorf("instance svid expires %v, after the worker svid %v", inst.Certificates[0].NotAfter, svid.Certificates[0].NotAfter)
		}

		// Re-attestation with the same TPM renews.
		if err := w.Renew(context.Background()); err != nil {
			t.Fatalf("renew: %v", err)
		}
		renewed, _ := w.GetX509SVID()
		if renewed.Certificates[0].SerialNumber.Cmp(svid.Certificates[0].SerialNumber) == 0 {
			t.Error("renewal kept the old certificate")
		}
		checkWorkerSVID(t, e, renewed, "w1", start, ttl)

		// Extend PCR 7: the next re-attestation is refused and revokes.
		d := sha256.Sum256([]byte("new boot loader"))
		if _, err := (tpm2.PCRExtend{
			PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(7), Auth: tpm2.PasswordAuth(nil)},
			Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: d[:]}}},
		}).Execute(a.tpm); err != nil {
			t.Fatalf("extend PCR 7: %v", err)
		}
		err = w.Renew(context.Background())
		if !errors.Is(err, nodeclient.ErrRefused) || !strings.Contains(err.Error(), "PCR sha256:7") {
			t.Fatalf("got %v, want a refusal naming PCR 7", err)
		}
		_, _, revoked := e.events.snapshot()
		if len(revoked["w1"]) == 0 || !strings.Contains(strings.Join(revoked["w1"], " "), "PCR sha256:7") {
			t.Errorf("got Revoked reasons %q, want PCR 7", revoked["w1"])
		}
		if got, _ := w.GetX509SVID(); got != renewed {
			t.Error("a refused renewal replaced the SVID")
		}

		// The revoked worker can no longer mint instance SVIDs, though
		// its SVID has not expired.
		_, err = iss.MintX509SVID(context.Background(), ca.X509Params{ID: fn, PublicKey: key.Public()})
		if status.Code(err) != codes.PermissionDenied {
			t.Errorf("got %v, want PermissionDenied", err)
		}
		raw := e.client(t, renewed)
		if _, err := raw.MintJWTSVID(context.Background(), &zfaasv1.MintJWTSVIDRequest{SpiffeId: fn.String(), Audience: []string{"x"}}); status.Code(err) != codes.PermissionDenied {
			t.Errorf("got %v, want PermissionDenied", err)
		}
		// And it cannot come back by joining afresh.
		_, err = join(t, e, "w1", a.att)
		wantRefused(t, e, "w1", err, "not admitted")
	})
}

// switchable is an attester whose TPM can be swapped.
type switchable struct {
	mu sync.Mutex
	m  *rattest.Attester
}

func (s *switchable) set(m *rattest.Attester) { s.mu.Lock(); s.m = m; s.mu.Unlock() }

func (s *switchable) get() *rattest.Attester {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.m
}

func (s *switchable) Hello() *attest.Hello { return s.get().Hello() }

func (s *switchable) Answer(ctx context.Context, c *attest.Challenge) (*attest.Evidence, error) {
	return s.get().Answer(ctx, c)
}

func checkWorkerSVID(t *testing.T, e *env, s *x509svid.SVID, node string, start time.Time, ttl time.Duration) {
	t.Helper()
	want := mustID(identity.WorkerID(td, node))
	id, _, err := x509svid.Verify(s.Certificates, e.ca.Bundles().X509)
	if err != nil || id != want {
		t.Fatalf("got svid %v (%v), want %v", id, err, want)
	}
	leaf := s.Certificates[0]
	if leaf.NotAfter.Before(start.Add(ttl-time.Second)) || leaf.NotAfter.After(time.Now().Add(ttl+time.Second)) {
		t.Errorf("got NotAfter %v, want about %v after %v", leaf.NotAfter, ttl, start)
	}
	pub, ok := leaf.PublicKey.(*ecdsa.PublicKey)
	if !ok || !pub.Equal(s.PrivateKey.Public()) {
		t.Error("svid does not certify the worker's key")
	}
}
