package attest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"regexp"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/zfaas/zfaas/identity"
)

// Size limits for messages and their fields. Decoders refuse anything
// larger before parsing it.
const (
	// MaxHelloSize bounds an encoded Hello.
	MaxHelloSize = 64 << 10
	// MaxChallengeSize bounds an encoded Challenge.
	MaxChallengeSize = 16 << 10
	// MaxEvidenceSize bounds an encoded Evidence, event log included.
	MaxEvidenceSize = 2 << 20
	// MaxEventLogSize bounds the raw TCG event log in Evidence.
	MaxEventLogSize = 1 << 20
	// MaxChainLength bounds the number of intermediates in a Hello.
	MaxChainLength = 8

	maxCertSize   = 8 << 10
	maxPublicSize = 1024 // TPM2B_PUBLIC of RSA-4096 is about 600 bytes
	maxBlobSize   = 1024 // TPM2B_ID_OBJECT, TPM2B_ENCRYPTED_SECRET
	maxQuoteSize  = 1024 // TPMS_ATTEST of a quote
	maxSigSize    = 1024
	maxSecretSize = 64
	maxNonceSize  = 64
	maxPCRs       = 24
)

// Hello is the attester's first message.
type Hello struct {
	// Node is the worker's node name, a single SPIFFE path segment.
	Node string `json:"node"`
	// EKCert is the DER EK certificate read from the TPM's NV.
	EKCert []byte `json:"ek_cert"`
	// EKChain holds DER intermediate certificates, issuer of EKCert first.
	EKChain [][]byte `json:"ek_chain,omitempty"`
	// EKPublic is the EK's TPM2B_PUBLIC; its key must be EKCert's.
	EKPublic []byte `json:"ek_public"`
	// AKPublic is the attestation key's TPM2B_PUBLIC.
	AKPublic []byte `json:"ak_public"`
}

// Challenge is the verifier's answer to a Hello.
type Challenge struct {
	// ID names this attestation; the Evidence must carry it back.
	ID string `json:"id"`
	// Credential is the TPM2B_ID_OBJECT contents from MakeCredential.
	Credential []byte `json:"credential"`
	// Secret is the TPM2B_ENCRYPTED_SECRET contents (the encrypted seed).
	Secret []byte `json:"secret"`
	// Nonce must be the quote's qualifying data (extraData).
	Nonce []byte `json:"nonce"`
	// Bank is the PCR bank to quote; only "sha256" today.
	Bank string `json:"bank"`
	// PCRs are the PCR indices to quote, ascending.
	PCRs []int `json:"pcrs"`
}

// PCR is one PCR value as reported by the attester.
type PCR struct {
	Index  int    `json:"index"`
	Digest []byte `json:"digest"`
}

// Evidence is the attester's answer to a Challenge.
type Evidence struct {
	// ChallengeID is Challenge.ID.
	ChallengeID string `json:"challenge_id"`
	// Secret is the credential value ActivateCredential recovered.
	Secret []byte `json:"secret"`
	// Quote is the TPMS_ATTEST the AK signed (TPM2B_ATTEST contents).
	Quote []byte `json:"quote"`
	// Signature is the TPMT_SIGNATURE over Quote.
	Signature []byte `json:"signature"`
	// PCRs are the values of the quoted PCRs in Challenge.Bank.
	PCRs []PCR `json:"pcrs"`
	// EventLog is the raw TCG PC Client event log, when the machine has one.
	EventLog []byte `json:"event_log,omitempty"`
}

var challengeIDPattern = regexp.MustCompile(`^[0-9a-f]{32}$`)

// ParseHello decodes and checks the shape of a JSON Hello. It wraps
// ErrMalformed.
func ParseHello(b []byte) (*Hello, error) {
	var h Hello
	if err := decode(b, MaxHelloSize, &h); err != nil {
		return nil, err
	}
	if err := h.validate(); err != nil {
		return nil, err
	}
	return &h, nil
}

// ParseChallenge decodes and checks the shape of a JSON Challenge. It
// wraps ErrMalformed.
func ParseChallenge(b []byte) (*Challenge, error) {
	var c Challenge
	if err := decode(b, MaxChallengeSize, &c); err != nil {
		return nil, err
	}
	if err := c.validate(); err != nil {
		return nil, err
	}
	return &c, nil
}

// ParseEvidence decodes and checks the shape of a JSON Evidence. It wraps
// ErrMalformed.
func ParseEvidence(b []byte) (*Evidence, error) {
	var e Evidence
	if err := decode(b, MaxEvidenceSize, &e); err != nil {
		return nil, err
	}
	if err := e.validate(); err != nil {
		return nil, err
	}
	return &e, nil
}

func decode(b []byte, limit int, v any) error {
	if len(b) > limit {
		return fmt.Errorf("%w: message is %d bytes, limit %d", ErrMalformed, len(b), limit)
	}
	dec := json.NewDecoder(bytes.NewReader(b))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return fmt.Errorf("%w: %v", ErrMalformed, err)
	}
	if _, err := dec.Token(); err != io.EOF {
		return fmt.Errorf("%w: trailing data after message", ErrMalformed)
	}
	return nil
}

func field(name string, b []byte, limit int) error {
	if len(b) == 0 {
		return fmt.Errorf("%w: %s is empty", ErrMalformed, name)
	}
	if len(b) > limit {
		return fmt.Errorf("%w: %s is %d bytes, limit %d", ErrMalformed, name, len(b), limit)
	}
	return nil
}

func (h *Hello) validate() error {
	if !validNode(h.Node) {
		return fmt.Errorf("%w: node %q is not a valid node name", ErrMalformed, h.Node)
	}
	if err := field("ek_cert", h.EKCert, maxCertSize); err != nil {
		return err
	}
	if len(h.EKChain) > MaxChainLength {
		return fmt.Errorf("%w: ek_chain has %d certificates, limit %d", ErrMalformed, len(h.EKChain), MaxChainLength)
	}
	for i, c := range h.EKChain {
		if err := field(fmt.Sprintf("ek_chain[%d]", i), c, maxCertSize); err != nil {
			return err
		}
	}
	if err := field("ek_public", h.EKPublic, maxPublicSize); err != nil {
		return err
	}
	return field("ak_public", h.AKPublic, maxPublicSize)
}

func (c *Challenge) validate() error {
	if !challengeIDPattern.MatchString(c.ID) {
		return fmt.Errorf("%w: challenge id is not 32 lower-case hex digits", ErrMalformed)
	}
	if err := field("credential", c.Credential, maxBlobSize); err != nil {
		return err
	}
	if err := field("secret", c.Secret, maxBlobSize); err != nil {
		return err
	}
	if err := field("nonce", c.Nonce, maxNonceSize); err != nil {
		return err
	}
	if c.Bank != BankSHA256 {
		return fmt.Errorf("%w: PCR bank %q is not supported (want %q)", ErrMalformed, c.Bank, BankSHA256)
	}
	return validPCRSelection(c.PCRs)
}

func (e *Evidence) validate() error {
	if !challengeIDPattern.MatchString(e.ChallengeID) {
		return fmt.Errorf("%w: challenge id is not 32 lower-case hex digits", ErrMalformed)
	}
	if err := field("secret", e.Secret, maxSecretSize); err != nil {
		return err
	}
	if err := field("quote", e.Quote, maxQuoteSize); err != nil {
		return err
	}
	if err := field("signature", e.Signature, maxSigSize); err != nil {
		return err
	}
	if len(e.PCRs) > maxPCRs {
		return fmt.Errorf("%w: %d PCR values, limit %d", ErrMalformed, len(e.PCRs), maxPCRs)
	}
	seen := make(map[int]bool, len(e.PCRs))
	for _, p := range e.PCRs {
		if p.Index < 0 || p.Index >= maxPCRs {
			return fmt.Errorf("%w: PCR index %d is not 0-23", ErrMalformed, p.Index)
		}
		if seen[p.Index] {
			return fmt.Errorf("%w: PCR %d reported twice", ErrMalformed, p.Index)
		}
		seen[p.Index] = true
		if len(p.Digest) != 32 {
			return fmt.Errorf("%w: PCR %d value is %d bytes, want 32", ErrMalformed, p.Index, len(p.Digest))
		}
	}
	if len(e.EventLog) > MaxEventLogSize {
		return fmt.Errorf("%w: event log is %d bytes, limit %d", ErrMalformed, len(e.EventLog), MaxEventLogSize)
	}
	return nil
}

func validPCRSelection(pcrs []int) error {
	if len(pcrs) == 0 || len(pcrs) > maxPCRs {
		return fmt.Errorf("%w: PCR selection has %d entries, want 1-%d", ErrMalformed, len(pcrs), maxPCRs)
	}
	for i, p := range pcrs {
		if p < 0 || p >= maxPCRs {
			return fmt.Errorf("%w: PCR index %d is not 0-23", ErrMalformed, p)
		}
		if i > 0 && p <= pcrs[i-1] {
			return fmt.Errorf("%w: PCR selection is not strictly ascending", ErrMalformed)
		}
	}
	return nil
}

// validNode applies the node-name rule of the identity package (the
// worker's SPIFFE ID is built from it), which is stricter than the
// admission policy's.
func validNode(s string) bool {
	_, err := identity.WorkerID(nodeCheckDomain, s)
	return err == nil
}

var nodeCheckDomain = spiffeid.RequireTrustDomainFromString("zfaas.local")
