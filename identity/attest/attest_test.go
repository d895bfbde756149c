package attest_test

import (
	"context"
	"crypto/sha256"
	"crypto/x509"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/zfaas/zfaas/identity/attest"
	rattest "github.com/zfaas/zfaas/runtime/attest"
	"github.com/zfaas/zfaas/runtime/attest/swtpmtest"
)

// admitAll records the claims it saw and allows them.
type admitAll struct {
	mu     sync.Mutex
	claims []attest.Claims
	allow  bool
}

func (a *admitAll) Admit(_ context.Context, c attest.Claims) (bool, []string, error) {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.claims = append(a.claims, c)
	if !a.allow {
		return false, []string{"test says no"}, nil
	}
	return true, []string{"test says yes"}, nil
}

type node struct {
	sim *swtpmtest.TPM
	tpm transport.TPMCloser
	att *rattest.Attester
}

func newNode(t *testing.T, name string, ek rattest.EKKind) *node {
	t.Helper()
	return newNodeNamed(t, name, ek)
}

func newNodeTB(tb testing.TB, ek rattest.EKKind) *node { return newNodeNamed(tb, "w1", ek) }

func newVerifierTB(tb testing.TB, n *node) *attest.Verifier {
	tb.Helper()
	pool := x509.NewCertPool()
	pool.AddCert(n.sim.Root)
	v, err := attest.New(attest.Config{Roots: pool, Admitter: &admitAll{allow: true}})
	if err != nil {
		tb.Fatal(err)
	}
	return v
}

func newNodeNamed(t testing.TB, name string, ek rattest.EKKind) *node {
	t.Helper()
	sim := swtpmtest.Start(t)
	tpm := sim.Open(t)
	att, err := rattest.New(context.Background(), rattest.Config{TPM: tpm, Node: name, EK: ek, EventLog: "-"})
	if err != nil {
		t.Fatalf("attester: %v", err)
	}
	t.Cleanup(func() { att.Close() })
	return &node{sim: sim, tpm: tpm, att: att}
}

func newVerifier(t *testing.T, adm attest.Admitter, roots ...*x509.Certificate) *attest.Verifier {
	t.Helper()
	pool := x509.NewCertPool()
	inter := x509.NewCertPool()
	for _, r := range roots {
		pool.AddCert(r)
	}
	v, err := attest.New(attest.Config{Roots: pool, Intermediates: inter, Admitter: adm})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// roundTrip runs the protocol through the JSON encodings.
func roundTrip(t *testing.T, v *attest.Verifier, n *node, hello *attest.Hello) (*attest.Challenge, *attest.Evidence) {
	t.Helper()
	ctx := context.Background()
	h, err := attest.ParseHello(mustJSON(t, hello))
	if err != nil {
		t.Fatalf("parse hello: %v", err)
	}
	ch, err := v.Challenge(ctx, h)
	if err != nil {
		t.Fatalf("challenge: %v", err)
	}
	ch2, err := attest.ParseChallenge(mustJSON(t, ch))
	if err != nil {
		t.Fatalf("parse challenge: %v", err)
	}
	ev, err := n.att.Answer(ctx, ch2)
	if err != nil {
		t.Fatalf("answer: %v", err)
	}
	ev2, err := attest.ParseEvidence(mustJSON(t, ev))
	if err != nil {
		t.Fatalf("parse evidence: %v", err)
	}
	return ch2, ev2
}

func mustJSON(t *testing.T, v any) []byte {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func withChain(n *node) *attest.Hello {
	h := n.att.Hello()
	h.EKChain = [][]byte{n.sim.Intermediate.Raw}
	return h
}

func TestAttestHappyPath(t *testing.T) {
	for _, ek := range []rattest.EKKind{rattest.EKRSA, rattest.EKECC} {
		t.Run(string(ek), func(t *testing.T) {
			n := newNode(t, "w1", ek)
			adm := &admitAll{allow: true}
			v := newVerifier(t, adm, n.sim.Root)
			_, ev := roundTrip(t, v, n, withChain(n))
			res, err := v.Verify(context.Background(), ev)
			if err != nil {
				t.Fatalf("verify: %v", err)
			}
			c := res.Claims
			if !res.Allowed || len(adm.claims) != 1 {
				t.Fatalf("got allowed %v after %d Admit calls, want true after 1", res.Allowed, len(adm.claims))
			}
			cert, _ := x509.ParseCertificate(n.att.Hello().EKCert)
			sum := sha256.Sum256(cert.RawSubjectPublicKeyInfo)
			if want := "sha256:" + hex.EncodeToString(sum[:]); c.EKFingerprint != want {
				t.Errorf("got fingerprint %s, want %s", c.EKFingerprint, want)
			}
			if c.Node != "w1" || c.Method != "tpm" || !c.EKChainVerified || !c.QuoteVerified || !c.NonceFresh {
				t.Errorf("got claims %+v", c)
			}
			if !c.AK.FixedTPM || !c.AK.Restricted || !c.AK.Sign || c.AK.Decrypt {
				t.Errorf("got AK attributes %+v", c.AK)
			}
			if c.TPM.Manufacturer != "id:00001014" || c.TPM.Model != "swtpm" {
				t.Errorf("got TPM info %+v, want IBM swtpm", c.TPM)
			}
			if len(c.PCRs) != 8 || c.PCRs[0] != strings.Repeat("0", 64) {
				t.Errorf("got PCRs %v, want 8 zero PCRs (swtpm measures nothing)", c.PCRs)
			}
			if c.EventLog.Present {
				t.Errorf("got event log facts %+v, want none", c.EventLog)
			}
			if !strings.HasPrefix(c.AKName, "000b") {
				t.Errorf("got AK name %s, want a SHA-256 name", c.AKName)
			}
			if v.Pending() != 0 {
				t.Errorf("got %d pending challenges, want 0", v.Pending())
			}
			// The same evidence again is a replay.
			if _, err := v.Verify(context.Background(), ev); !errors.Is(err, attest.ErrUnknownChallenge) {
				t.Errorf("replayed evidence: got %v, want ErrUnknownChallenge", err)
			}
		})
	}
}

func TestAttestRefusals(t *testing.T) {
	n := newNode(t, "w1", rattest.EKRSA)
	ctx := context.Background()
	cases := []struct {
		name   string
		tamper func(ch *attest.Challenge, ev *attest.Evidence) *attest.Evidence
		want   error
	}{
		{"tampered quote signature", func(_ *attest.Challenge, ev *attest.Evidence) *attest.Evidence {
			ev.Signature[len(ev.Signature)-1] ^= 1
			return ev
		}, attest.ErrQuoteSignature},
		{"tampered quote body", func(_ *attest.Challenge, ev *attest.Evidence) *attest.Evidence {
			ev.Quote[len(ev.Quote)-1] ^= 1
			return ev
		}, attest.ErrQuoteSignature},
		{"PCR value mismatch", func(_ *attest.Challenge, ev *attest.Evidence) *attest.Evidence {
			ev.PCRs[3].Digest[0] ^= 0xff
			return ev
		}, attest.ErrQuote},
		{"PCR missing", func(_ *attest.Challenge, ev *attest.Evidence) *attest.Evidence {
			ev.PCRs = ev.PCRs[:7]
			return ev
		}, attest.ErrQuote},
		{"wrong secret", func(_ *attest.Challenge, ev *attest.Evidence) *attest.Evidence {
			ev.Secret[0] ^= 1
			return ev
		}, attest.ErrActivation},
		{"wrong nonce", func(ch *attest.Challenge, _ *attest.Evidence) *attest.Evidence {
			ch.Nonce = append([]byte(nil), ch.Nonce...)
			ch.Nonce[0] ^= 1
			ev, err := n.att.Answer(ctx, ch)
			if err != nil {
				t.Fatal(err)
			}
			return ev
		}, attest.ErrNonce},
		{"other PCR selection", func(ch *attest.Challenge, _ *attest.Evidence) *attest.Evidence {
			ch.PCRs = []int{0, 1, 2}
			ev, err := n.att.Answer(ctx, ch)
			if err != nil {
				t.Fatal(err)
			}
			return ev
		}, attest.ErrQuote},
		{"unknown challenge", func(_ *attest.Challenge, ev *attest.Evidence) *attest.Evidence {
			ev.ChallengeID = strings.Repeat("0", 32)
			return ev
		}, attest.ErrUnknownChallenge},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			v := newVerifier(t, &admitAll{allow: true}, n.sim.Root, n.sim.Intermediate)
			ch, ev := roundTrip(t, v, n, n.att.Hello())
			if _, err := v.Verify(ctx, tc.tamper(ch, ev)); !errors.Is(err, tc.want) {
				t.Errorf("got %v, want %v", err, tc.want)
			}
		})
	}
}

func TestAttestReplayedNonce(t *testing.T) {
	n := newNode(t, "w1", rattest.EKRSA)
	v := newVerifier(t, &admitAll{allow: true}, n.sim.Root, n.sim.Intermediate)
	ctx := context.Background()
	_, old := roundTrip(t, v, n, n.att.Hello())
	if _, err := v.Verify(ctx, old); err != nil {
		t.Fatal(err)
	}
	// A new challenge answered with the old quote: fresh id and secret,
	// old nonce.
	ch, ev := roundTrip(t, v, n, n.att.Hello())
	_ = ch
	ev.Quote, ev.Signature = old.Quote, old.Signature
	if _, err := v.Verify(ctx, ev); !errors.Is(err, attest.ErrNonce) {
		t.Errorf("got %v, want ErrNonce", err)
	}
}

func TestAttestExpired(t *testing.T) {
	n := newNode(t, "w1", rattest.EKRSA)
	now := time.Now()
	var mu sync.Mutex
	pool := x509.NewCertPool()
	pool.AddCert(n.sim.Root)
	v, err := attest.New(attest.Config{Roots: pool, Admitter: &admitAll{allow: true}, ChallengeTTL: 30 * time.Second, Now: func() time.Time {
		mu.Lock()
		defer mu.Unlock()
		return now
	}})
	if err != nil {
		t.Fatal(err)
	}
	_, ev := roundTrip(t, v, n, withChain(n))
	mu.Lock()
	now = now.Add(31 * time.Second)
	mu.Unlock()
	if _, err := v.Verify(context.Background(), ev); !errors.Is(err, attest.ErrChallengeExpired) {
		t.Errorf("got %v, want ErrChallengeExpired", err)
	}
}

func TestAttestWrongRoot(t *testing.T) {
	n := newNode(t, "w1", rattest.EKRSA)
	other := swtpmtest.Start(t)
	v := newVerifier(t, &admitAll{allow: true}, other.Root)
	if _, err := v.Challenge(context.Background(), withChain(n)); !errors.Is(err, attest.ErrEKCertificate) {
		t.Errorf("got %v, want ErrEKCertificate", err)
	}
	// The intermediate alone is not a root either.
	v = newVerifier(t, &admitAll{allow: true})
	if _, err := v.Challenge(context.Background(), withChain(n)); !errors.Is(err, attest.ErrEKCertificate) {
		t.Errorf("no roots: got %v, want ErrEKCertificate", err)
	}
}

func TestAttestPolicyRefusal(t *testing.T) {
	n := newNode(t, "w1", rattest.EKRSA)
	v := newVerifier(t, &admitAll{allow: false}, n.sim.Root)
	_, ev := roundTrip(t, v, n, withChain(n))
	res, err := v.Verify(context.Background(), ev)
	if !errors.Is(err, attest.ErrNotAdmitted) || res == nil || res.Allowed || res.Reasons[0] != "test says no" {
		t.Errorf("got %+v, %v; want a refused result and ErrNotAdmitted", res, err)
	}
}

// An AK that is not restricted could sign a forged TPMS_ATTEST, so it is
// refused before any challenge.
func TestAttestUnrestrictedAK(t *testing.T) {
	n := newNode(t, "w1", rattest.EKRSA)
	v := newVerifier(t, &admitAll{allow: true}, n.sim.Root)
	for _, tc := range []struct {
		name  string
		patch func(*tpm2.TPMTPublic)
	}{
		{"not restricted", func(p *tpm2.TPMTPublic) { p.ObjectAttributes.Restricted = false }},
		{"not fixedTPM", func(p *tpm2.TPMTPublic) { p.ObjectAttributes.FixedTPM = false; p.ObjectAttributes.FixedParent = false }},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tmpl := rattest.AKTemplate
			tc.patch(&tmpl)
			rsp, err := tpm2.CreatePrimary{PrimaryHandle: tpm2.TPMRHOwner, InPublic: tpm2.New2B(tmpl)}.Execute(n.tpm)
			if err != nil {
				t.Fatal(err)
			}
			defer tpm2.FlushContext{FlushHandle: rsp.ObjectHandle}.Execute(n.tpm)
			h := withChain(n)
			h.AKPublic = tpm2.Marshal(rsp.OutPublic)
			if _, err := v.Challenge(context.Background(), h); !errors.Is(err, attest.ErrAK) {
				t.Errorf("got %v, want ErrAK", err)
			}
		})
	}
}

// The EK certificate of TPM A with the AK of TPM B: B cannot activate a
// credential made for A's EK, and a guessed secret is refused.
func TestAttestDifferentTPM(t *testing.T) {
	a := newNode(t, "w1", rattest.EKRSA)
	b := newNode(t, "w1", rattest.EKRSA)
	v := newVerifier(t, &admitAll{allow: true}, a.sim.Root, b.sim.Root)
	ctx := context.Background()
	h := withChain(a)
	h.AKPublic = b.att.Hello().AKPublic
	ch, err := v.Challenge(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := b.att.Answer(ctx, ch); err == nil {
		t.Fatal("TPM B activated a credential made for TPM A's EK")
	}
	// B answers with a made-up secret and its own valid quote.
	ch.Credential, ch.Secret = nil, nil
	hb := withChain(b)
	chb, err := v.Challenge(ctx, hb) // a real challenge for B, to get a quote
	if err != nil {
		t.Fatal(err)
	}
	chb.Nonce = ch.Nonce
	evb, err := b.att.Answer(ctx, chb)
	if err != nil {
		t.Fatal(err)
	}
	evb.ChallengeID = ch.ID
	if _, err := v.Verify(ctx, evb); !errors.Is(err, attest.ErrActivation) {
		t.Errorf("got %v, want ErrActivation", err)
	}
	// And A's own AK with B's EK certificate: A cannot activate either.
	h = withChain(b)
	h.AKPublic = a.att.Hello().AKPublic
	ch, err = v.Challenge(ctx, h)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.att.Answer(ctx, ch); err == nil {
		t.Fatal("TPM A activated a credential made for TPM B's EK")
	}
}

// The EK public area must hold the certified key.
func TestAttestEKPublicMismatch(t *testing.T) {
	a := newNode(t, "w1", rattest.EKRSA)
	b := newNode(t, "w2", rattest.EKRSA)
	v := newVerifier(t, &admitAll{allow: true}, a.sim.Root, b.sim.Root)
	h := withChain(a)
	h.EKPublic = b.att.Hello().EKPublic
	if _, err := v.Challenge(context.Background(), h); !errors.Is(err, attest.ErrEKCertificate) {
		t.Errorf("got %v, want ErrEKCertificate", err)
	}
}

// TestAttestEventLog extends swtpm's PCRs as a firmware would, builds the
// matching crypto-agile event log and checks it replays; a log that does
// not match the quote is refused.
func TestAttestEventLog(t *testing.T) {
	n := newNode(t, "w1", rattest.EKRSA)
	ctx := context.Background()
	var digests [][]byte
	var pcrIdx []uint32
	for i, ev := range []string{"firmware", "option rom", "boot loader", "secure boot db"} {
		d := sha256.Sum256([]byte(ev))
		pcr := []uint32{0, 2, 4, 7}[i]
		if _, err := (tpm2.PCRExtend{
			PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(pcr), Auth: tpm2.PasswordAuth(nil)},
			Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: d[:]}}},
		}).Execute(n.tpm); err != nil {
			t.Fatal(err)
		}
		digests = append(digests, d[:])
		pcrIdx = append(pcrIdx, pcr)
	}
	log := buildLog(pcrIdx, digests)
	for _, tc := range []struct {
		name string
		log  []byte
		want error
	}{
		{"replays", log, nil},
		{"missing event", buildLog(pcrIdx[:3], digests[:3]), attest.ErrEventLog},
		{"truncated", log[:len(log)-3], attest.ErrEventLog},
	} {
		t.Run(tc.name, func(t *testing.T) {
			v := newVerifier(t, &admitAll{allow: true}, n.sim.Root, n.sim.Intermediate)
			_, ev := roundTrip(t, v, n, n.att.Hello())
			ev.EventLog = tc.log
			res, err := v.Verify(ctx, ev)
			if !errors.Is(err, tc.want) {
				t.Fatalf("got %v, want %v", err, tc.want)
			}
			if err == nil && (!res.Claims.EventLog.Replayed || res.Claims.EventLog.Events != 4) {
				t.Errorf("got event log facts %+v, want 4 replayed events", res.Claims.EventLog)
			}
		})
	}
}

// buildLog writes a TCG crypto-agile log with SHA-256 digests.
func buildLog(pcrs []uint32, digests [][]byte) []byte {
	le := binary.LittleEndian
	var spec []byte
	spec = append(spec, "Spec ID Event03\x00"...)
	spec = le.AppendUint32(spec, 0)      // platform class
	spec = append(spec, 0, 2, 0, 2)      // version 2.0, errata 0, uintn 8
	spec = le.AppendUint32(spec, 1)      // one algorithm
	spec = le.AppendUint16(spec, 0x000b) // sha256
	spec = le.AppendUint16(spec, 32)     //
	spec = append(spec, 0)               // no vendor info
	var b []byte
	b = le.AppendUint32(b, 0)
	b = le.AppendUint32(b, 3) // EV_NO_ACTION
	b = append(b, make([]byte, 20)...)
	b = le.AppendUint32(b, uint32(len(spec)))
	b = append(b, spec...)
	for i, d := range digests {
		b = le.AppendUint32(b, pcrs[i])
		b = le.AppendUint32(b, 0x80000008) // EV_EFI_PLATFORM_FIRMWARE_BLOB, say
		b = le.AppendUint32(b, 1)
		b = le.AppendUint16(b, 0x000b)
		b = append(b, d...)
		b = le.AppendUint32(b, 4)
		b = append(b, "data"...)
	}
	return b
}
