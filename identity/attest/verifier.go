package attest

import (
	"context"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/big"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"
)

// Errors returned by the verifier; match them with errors.Is. Every
// refusal wraps exactly one of them.
var (
	// ErrMalformed: a message or a TPM structure in it cannot be decoded
	// or breaks a size or shape limit.
	ErrMalformed = errors.New("attest: malformed message")
	// ErrEKCertificate: the EK certificate does not chain to a configured
	// manufacturer root, or the EK public area is not the certified key.
	ErrEKCertificate = errors.New("attest: EK certificate refused")
	// ErrAK: the attestation key's attributes or algorithms are not
	// acceptable.
	ErrAK = errors.New("attest: attestation key refused")
	// ErrUnknownChallenge: the challenge id is unknown or already used
	// (a replay).
	ErrUnknownChallenge = errors.New("attest: unknown or already used challenge")
	// ErrChallengeExpired: the evidence came after the challenge expired.
	ErrChallengeExpired = errors.New("attest: challenge expired")
	// ErrActivation: the returned secret is not the credential's, so the
	// AK is not proven to live in the TPM holding the certified EK.
	ErrActivation = errors.New("attest: credential activation failed")
	// ErrQuote: the quote is not a TPM-generated quote over the requested
	// PCRs, or its PCR digest does not match the reported values.
	ErrQuote = errors.New("attest: quote refused")
	// ErrQuoteSignature: the quote's signature does not verify with the AK.
	ErrQuoteSignature = errors.New("attest: quote signature invalid")
	// ErrNonce: the quote's qualifying data is not this challenge's nonce.
	ErrNonce = errors.New("attest: quote nonce mismatch")
	// ErrEventLog: the event log cannot be parsed or does not replay to
	// the quoted PCR values.
	ErrEventLog = errors.New("attest: event log refused")
	// ErrBusy: too many challenges are outstanding.
	ErrBusy = errors.New("attest: too many pending challenges")
	// ErrNotAdmitted: every check passed but the Admitter said no;
	// Result.Reasons says why.
	ErrNotAdmitted = errors.New("attest: not admitted by policy")
)

// BankSHA256 names the SHA-256 PCR bank, the only one quoted today.
const BankSHA256 = "sha256"

// DefaultPCRs are the PCRs quoted when Config.PCRs is empty: the PC
// Client firmware, option ROM, boot manager and Secure Boot PCRs.
var DefaultPCRs = []int{0, 1, 2, 3, 4, 5, 6, 7}

// Admitter judges verified claims. The consumer owns it; zfaas binds it
// to the zfaas.admission policy.
type Admitter interface {
	Admit(ctx context.Context, c Claims) (allow bool, reasons []string, err error)
}

// Config configures a Verifier.
type Config struct {
	// Roots are the TPM manufacturers' EK root certificates. Required.
	Roots *x509.CertPool
	// Intermediates are extra EK intermediate CAs, in addition to those
	// the attester sends.
	Intermediates *x509.CertPool
	// Admitter judges the claims. Required.
	Admitter Admitter
	// PCRs to quote from the SHA-256 bank; DefaultPCRs when empty.
	PCRs []int
	// ChallengeTTL is how long a challenge may be answered; 30 s when zero.
	ChallengeTTL time.Duration
	// MaxPending bounds outstanding challenges; 1024 when zero.
	MaxPending int
	// Now is the clock; time.Now when nil.
	Now func() time.Time
	// Rand is the randomness for nonces, secrets and MakeCredential;
	// crypto/rand when nil.
	Rand io.Reader
	// Logger receives one record per decision; discarded when nil.
	Logger *slog.Logger
}

// Verifier runs the verifier side of the protocol. It is safe for
// concurrent use.
type Verifier struct {
	cfg     Config
	mu      sync.Mutex
	pending map[string]*pending
}

type pending struct {
	expires time.Time
	hello   *Hello
	ekFP    string
	tpm     TPMInfo
	akKey   *ecdsa.PublicKey
	akName  []byte
	akAttrs AKAttributes
	secret  []byte
	nonce   []byte
	pcrs    []int
}

// New validates cfg and returns a Verifier.
func New(cfg Config) (*Verifier, error) {
	if cfg.Roots == nil {
		return nil, errors.New("attest: Config.Roots (manufacturer EK roots) is required")
	}
	if cfg.Admitter == nil {
		return nil, errors.New("attest: Config.Admitter is required")
	}
	if len(cfg.PCRs) == 0 {
		cfg.PCRs = DefaultPCRs
	}
	cfg.PCRs = append([]int(nil), cfg.PCRs...)
	if err := validPCRSelection(cfg.PCRs); err != nil {
		return nil, fmt.Errorf("attest: Config.PCRs: %w", err)
	}
	if cfg.ChallengeTTL <= 0 {
		cfg.ChallengeTTL = 30 * time.Second
	}
	if cfg.MaxPending <= 0 {
		cfg.MaxPending = 1024
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	if cfg.Rand == nil {
		cfg.Rand = rand.Reader
	}
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	cfg.Logger = cfg.Logger.With("component", "attest")
	return &Verifier{cfg: cfg, pending: make(map[string]*pending)}, nil
}

// Challenge checks a Hello (EK chain, EK public area, AK) and returns a
// challenge for it. The Hello must already have passed ParseHello or be
// built locally; it is validated again.
func (v *Verifier) Challenge(ctx context.Context, h *Hello) (*Challenge, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := h.validate(); err != nil {
		return nil, err
	}
	now := v.cfg.Now()
	cert, err := x509.ParseCertificate(h.EKCert)
	if err != nil {
		return nil, fmt.Errorf("%w: parse: %v", ErrEKCertificate, err)
	}
	inter := x509.NewCertPool()
	if v.cfg.Intermediates != nil {
		inter = v.cfg.Intermediates.Clone()
	}
	for i, der := range h.EKChain {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			return nil, fmt.Errorf("%w: ek_chain[%d]: %v", ErrEKCertificate, i, err)
		}
		inter.AddCert(c)
	}
	info, err := verifyEKCert(cert, v.cfg.Roots, inter, now)
	if err != nil {
		return nil, v.refuse(h.Node, err)
	}
	ekPub, err := parsePublic("ek_public", h.EKPublic)
	if err != nil {
		return nil, v.refuse(h.Node, err)
	}
	if err := checkEKPublic(ekPub, cert); err != nil {
		return nil, v.refuse(h.Node, err)
	}
	akPub, err := parsePublic("ak_public", h.AKPublic)
	if err != nil {
		return nil, v.refuse(h.Node, err)
	}
	akKey, akAttrs, akName, err := checkAK(akPub)
	if err != nil {
		return nil, v.refuse(h.Node, err)
	}
	ek, err := tpm2.ImportEncapsulationKey(ekPub)
	if err != nil {
		return nil, v.refuse(h.Node, fmt.Errorf("%w: EK cannot encapsulate: %v", ErrEKCertificate, err))
	}
	p := &pending{
		expires: now.Add(v.cfg.ChallengeTTL), hello: h, tpm: info,
		ekFP:  fingerprint(cert.RawSubjectPublicKeyInfo),
		akKey: akKey, akName: akName, akAttrs: akAttrs,
		secret: make([]byte, 32), nonce: make([]byte, 32), pcrs: v.cfg.PCRs,
	}
	idb := make([]byte, 16)
	for _, b := range [][]byte{p.secret, p.nonce, idb} {
		if _, err := io.ReadFull(v.cfg.Rand, b); err != nil {
			return nil, fmt.Errorf("attest: randomness: %w", err)
		}
	}
	cred, encSecret, err := makeCredential(v.cfg.Rand, ek, akName, p.secret)
	if err != nil {
		return nil, v.refuse(h.Node, fmt.Errorf("%w: make credential: %v", ErrEKCertificate, err))
	}
	id := hex.EncodeToString(idb)
	v.mu.Lock()
	for k, q := range v.pending {
		if now.After(q.expires) {
			delete(v.pending, k)
		}
	}
	if len(v.pending) >= v.cfg.MaxPending {
		v.mu.Unlock()
		return nil, ErrBusy
	}
	v.pending[id] = p
	v.mu.Unlock()
	v.cfg.Logger.LogAttrs(ctx, slog.LevelDebug, "challenge issued", slog.String("node", h.Node), slog.String("challenge", id), slog.String("ek", p.ekFP))
	return &Challenge{
		ID: id, Credential: cred, Secret: encSecret, Nonce: p.nonce,
		Bank: BankSHA256, PCRs: append([]int(nil), p.pcrs...),
	}, nil
}

// makeCredential wraps tpm2.CreateCredential, which panics on some
// malformed keys in the go-tpm version in use.
func makeCredential(r io.Reader, ek tpm2.LabeledEncapsulationKey, name, secret []byte) (cred, enc []byte, err error) {
	defer func() {
		if p := recover(); p != nil {
			cred, enc, err = nil, nil, fmt.Errorf("unusable key")
		}
	}()
	return tpm2.CreateCredential(r, ek, name, secret)
}

// Result is the outcome of Verify.
type Result struct {
	// Claims are what the attestation proved; set once every
	// cryptographic check passed, also when the Admitter said no.
	Claims Claims
	// Allowed is the Admitter's decision.
	Allowed bool
	// Reasons are the Admitter's reasons.
	Reasons []string
}

// Verify checks Evidence against its challenge and asks the Admitter. It
// returns nil error only when the node is admitted; a policy refusal
// returns the Result with ErrNotAdmitted. A challenge is consumed by the
// first Verify that names it, whatever the outcome.
func (v *Verifier) Verify(ctx context.Context, e *Evidence) (*Result, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	if err := e.validate(); err != nil {
		return nil, err
	}
	v.mu.Lock()
	p, ok := v.pending[e.ChallengeID]
	delete(v.pending, e.ChallengeID)
	v.mu.Unlock()
	if !ok {
		return nil, v.refuse("", ErrUnknownChallenge)
	}
	node := p.hello.Node
	now := v.cfg.Now()
	if now.After(p.expires) {
		return nil, v.refuse(node, ErrChallengeExpired)
	}
	if subtle.ConstantTimeCompare(e.Secret, p.secret) != 1 {
		return nil, v.refuse(node, ErrActivation)
	}
	attest, err := unmarshal[tpm2.TPMSAttest]("quote", e.Quote)
	if err != nil {
		return nil, v.refuse(node, err)
	}
	if err := verifySignature(p.akKey, e.Quote, e.Signature); err != nil {
		return nil, v.refuse(node, err)
	}
	if attest.Magic != tpm2.TPMGeneratedValue || attest.Type != tpm2.TPMSTAttestQuote {
		return nil, v.refuse(node, fmt.Errorf("%w: not a TPM-generated quote", ErrQuote))
	}
	if subtle.ConstantTimeCompare(attest.ExtraData.Buffer, p.nonce) != 1 {
		return nil, v.refuse(node, ErrNonce)
	}
	quote, err := attest.Attested.Quote()
	if err != nil {
		return nil, v.refuse(node, fmt.Errorf("%w: %v", ErrQuote, err))
	}
	want := pcrSelection(p.pcrs)
	if string(tpm2.Marshal(quote.PCRSelect)) != string(tpm2.Marshal(want)) {
		return nil, v.refuse(node, fmt.Errorf("%w: quoted PCR selection is not the requested one", ErrQuote))
	}
	reported := make(map[int][]byte, len(e.PCRs))
	for _, r := range e.PCRs {
		reported[r.Index] = r.Digest
	}
	if len(reported) != len(p.pcrs) {
		return nil, v.refuse(node, fmt.Errorf("%w: %d PCR values reported, %d quoted", ErrQuote, len(reported), len(p.pcrs)))
	}
	values := make([][]byte, 0, len(p.pcrs))
	pcrs := make(map[int]string, len(p.pcrs))
	for _, i := range p.pcrs {
		d, ok := reported[i]
		if !ok {
			return nil, v.refuse(node, fmt.Errorf("%w: PCR %d quoted but not reported", ErrQuote, i))
		}
		values = append(values, d)
		pcrs[i] = hex.EncodeToString(d)
	}
	if subtle.ConstantTimeCompare(pcrDigest(values), quote.PCRDigest.Buffer) != 1 {
		return nil, v.refuse(node, fmt.Errorf("%w: PCR digest does not match the reported PCR values", ErrQuote))
	}
	log := EventLogFacts{}
	if len(e.EventLog) > 0 {
		log, err = replayEventLog(e.EventLog, reported)
		if err != nil {
			return nil, v.refuse(node, err)
		}
	}
	c := Claims{
		Node: node, Method: "tpm",
		EKFingerprint: p.ekFP, EKChainVerified: true, TPM: p.tpm,
		AKName: hex.EncodeToString(p.akName), AK: p.akAttrs,
		QuoteVerified: true, NonceFresh: true,
		PCRBank: BankSHA256, PCRs: pcrs,
		Firmware: Firmware{
			Version:      attest.FirmwareVersion,
			ResetCount:   attest.ClockInfo.ResetCount,
			RestartCount: attest.ClockInfo.RestartCount,
			Safe:         bool(attest.ClockInfo.Safe),
		},
		EventLog:   log,
		AttestedAt: now.UTC(),
	}
	allow, reasons, err := v.cfg.Admitter.Admit(ctx, c)
	if err != nil {
		return nil, fmt.Errorf("attest: admit %s: %w", node, err)
	}
	res := &Result{Claims: c, Allowed: allow, Reasons: reasons}
	v.cfg.Logger.LogAttrs(ctx, slog.LevelInfo, "node attested",
		slog.String("node", node), slog.String("ek", p.ekFP), slog.Bool("allow", allow), slog.Any("reasons", reasons))
	if !allow {
		return res, fmt.Errorf("%w: %v", ErrNotAdmitted, reasons)
	}
	return res, nil
}

// Pending returns the number of outstanding challenges.
func (v *Verifier) Pending() int {
	v.mu.Lock()
	defer v.mu.Unlock()
	return len(v.pending)
}

func (v *Verifier) refuse(node string, err error) error {
	v.cfg.Logger.LogAttrs(context.Background(), slog.LevelWarn, "attestation refused", slog.String("node", node), slog.String("error", err.Error()))
	return err
}

func verifySignature(key *ecdsa.PublicKey, msg, sig []byte) error {
	s, err := unmarshal[tpm2.TPMTSignature]("signature", sig)
	if err != nil {
		return err
	}
	if s.SigAlg != tpm2.TPMAlgECDSA {
		return fmt.Errorf("%w: signature algorithm is not ECDSA", ErrQuoteSignature)
	}
	ec, err := s.Signature.ECDSA()
	if err != nil || ec.Hash != tpm2.TPMAlgSHA256 {
		return fmt.Errorf("%w: signature is not ECDSA with SHA-256", ErrQuoteSignature)
	}
	d := sha256.Sum256(msg)
	r := new(big.Int).SetBytes(ec.SignatureR.Buffer)
	ss := new(big.Int).SetBytes(ec.SignatureS.Buffer)
	if !ecdsa.Verify(key, d[:], r, ss) {
		return ErrQuoteSignature
	}
	return nil
}

func fingerprint(spki []byte) string {
	d := sha256.Sum256(spki)
	return "sha256:" + hex.EncodeToString(d[:])
}
