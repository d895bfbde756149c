package nodeapi

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"fmt"
	"math/big"

	"github.com/google/go-tpm/tpm2"
)

// ErrNotBound is returned (wrapped) when the binding quote does not tie
// the CSR's key to the attestation session.
var ErrNotBound = errors.New("nodeapi: CSR is not bound to this attestation")

// bindingLabel separates the binding from every other use of a quote.
const bindingLabel = "zfaas-node-csr-v1"

// CSRBinding returns the qualifying data of the binding quote: SHA-256
// over the label "zfaas-node-csr-v1", a zero byte, the challenge id, a
// zero byte, the 2-byte big-endian length of the nonce, the nonce, and
// SHA-256 of the CSR's DER SubjectPublicKeyInfo. The worker quotes with it
// (same AK, same PCR selection as the challenge) after receiving the
// challenge; the server recomputes it.
func CSRBinding(challengeID string, nonce, csrSPKI []byte) []byte {
	spki := sha256.Sum256(csrSPKI)
	h := sha256.New()
	h.Write([]byte(bindingLabel))
	h.Write([]byte{0})
	h.Write([]byte(challengeID))
	h.Write([]byte{0})
	h.Write(binary.BigEndian.AppendUint16(nil, uint16(len(nonce))))
	h.Write(nonce)
	h.Write(spki[:])
	return h.Sum(nil)
}

// checkBinding verifies the binding quote: a TPM-generated quote
// (TPM_GENERATED_VALUE, TPM_ST_ATTEST_QUOTE) signed with ECDSA/SHA-256 by
// the session's AK (akPublic from this session's Hello, never re-sent),
// whose qualifying data is want and whose PCR selection and digest are the
// main quote's. The main quote is verified by identity/attest.
func checkBinding(akPublic, mainQuote, quote, sig, want []byte) (err error) {
	defer func() {
		// go-tpm's decoders panic on some malformed input.
		if p := recover(); p != nil {
			err = fmt.Errorf("%w: malformed TPM structure", ErrNotBound)
		}
	}()
	if len(quote) == 0 || len(sig) == 0 || len(quote) > 1024 || len(sig) > 1024 {
		return fmt.Errorf("%w: binding quote missing or oversized", ErrNotBound)
	}
	key, err := akKey(akPublic)
	if err != nil {
		return err
	}
	s, err := tpm2.Unmarshal[tpm2.TPMTSignature](sig)
	if err != nil || s.SigAlg != tpm2.TPMAlgECDSA {
		return fmt.Errorf("%w: binding signature is not ECDSA", ErrNotBound)
	}
	ec, err := s.Signature.ECDSA()
	if err != nil || ec.Hash != tpm2.TPMAlgSHA256 {
		return fmt.Errorf("%w: binding signature is not ECDSA with SHA-256", ErrNotBound)
	}
	d := sha256.Sum256(quote)
	if !ecdsa.Verify(key, d[:], new(big.Int).SetBytes(ec.SignatureR.Buffer), new(big.Int).SetBytes(ec.SignatureS.Buffer)) {
		return fmt.Errorf("%w: binding quote signature does not verify with the session's AK", ErrNotBound)
	}
	bind, err := tpm2.Unmarshal[tpm2.TPMSAttest](quote)
	if err != nil {
		return fmt.Errorf("%w: binding quote: %v", ErrNotBound, err)
	}
	if bind.Magic != tpm2.TPMGeneratedValue || bind.Type != tpm2.TPMSTAttestQuote {
		return fmt.Errorf("%w: binding quote is not a TPM-generated quote", ErrNotBound)
	}
	if subtle.ConstantTimeCompare(bind.ExtraData.Buffer, want) != 1 {
		return fmt.Errorf("%w: binding quote does not name this challenge and this CSR key", ErrNotBound)
	}
	main, err := tpm2.Unmarshal[tpm2.TPMSAttest](mainQuote)
	if err != nil {
		return fmt.Errorf("%w: quote: %v", ErrNotBound, err)
	}
	bq, err1 := bind.Attested.Quote()
	mq, err2 := main.Attested.Quote()
	if err1 != nil || err2 != nil {
		return fmt.Errorf("%w: not quotes", ErrNotBound)
	}
	if string(tpm2.Marshal(bq.PCRSelect)) != string(tpm2.Marshal(mq.PCRSelect)) ||
		subtle.ConstantTimeCompare(bq.PCRDigest.Buffer, mq.PCRDigest.Buffer) != 1 {
		return fmt.Errorf("%w: binding quote covers other PCRs or values than the quote", ErrNotBound)
	}
	return nil
}

// akKey decodes the AK's ECC P-256 public key from its TPM2B_PUBLIC. The
// verifier has already checked its attributes when it issued the
// challenge.
func akKey(b []byte) (*ecdsa.PublicKey, error) {
	p, err := tpm2.Unmarshal[tpm2.TPM2BPublic](b)
	if err != nil {
		return nil, fmt.Errorf("%w: ak_public: %v", ErrNotBound, err)
	}
	pub, err := p.Contents()
	if err != nil || pub.Type != tpm2.TPMAlgECC {
		return nil, fmt.Errorf("%w: AK is not an ECC key", ErrNotBound)
	}
	pt, err := pub.Unique.ECC()
	if err != nil || len(pt.X.Buffer) != 32 || len(pt.Y.Buffer) != 32 {
		return nil, fmt.Errorf("%w: AK is not a P-256 key", ErrNotBound)
	}
	raw := append(append([]byte{4}, pt.X.Buffer...), pt.Y.Buffer...)
	k, err := ecdsa.ParseUncompressedPublicKey(elliptic.P256(), raw)
	if err != nil {
		return nil, fmt.Errorf("%w: AK point: %v", ErrNotBound, err)
	}
	return k, nil
}
