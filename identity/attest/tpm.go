package attest

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/sha256"
	"crypto/x509"
	"fmt"
	"math/big"

	"github.com/google/go-tpm/tpm2"
)

// unmarshal parses a TPM structure from b, refusing trailing bytes and
// turning any panic of the reflection-based decoder into an error: the
// bytes come from the network.
func unmarshal[T tpm2.Marshallable, P interface {
	*T
	tpm2.Unmarshallable
}](what string, b []byte) (v *T, err error) {
	defer func() {
		if r := recover(); r != nil {
			v, err = nil, fmt.Errorf("%w: %s: cannot be decoded", ErrMalformed, what)
		}
	}()
	v, err = tpm2.Unmarshal[T, P](b)
	if err != nil {
		return nil, fmt.Errorf("%w: %s: %v", ErrMalformed, what, err)
	}
	if !bytes.Equal(tpm2.Marshal(*v), b) {
		return nil, fmt.Errorf("%w: %s: not canonically encoded or has trailing bytes", ErrMalformed, what)
	}
	return v, nil
}

// parsePublic parses TPM2B_PUBLIC bytes into the TPMT_PUBLIC.
func parsePublic(what string, b []byte) (*tpm2.TPMTPublic, error) {
	outer, err := unmarshal[tpm2.TPM2BPublic](what, b)
	if err != nil {
		return nil, err
	}
	inner, err := unmarshal[tpm2.TPMTPublic](what, outer.Bytes())
	if err != nil {
		return nil, err
	}
	return inner, nil
}

// AKAttributes are the AK's object attributes the verifier checked.
type AKAttributes struct {
	FixedTPM            bool `json:"fixed_tpm"`
	FixedParent         bool `json:"fixed_parent"`
	SensitiveDataOrigin bool `json:"sensitive_data_origin"`
	Restricted          bool `json:"restricted"`
	Sign                bool `json:"sign"`
	Decrypt             bool `json:"decrypt"`
}

// checkAK checks the AK is a TPM-resident restricted ECDSA P-256/SHA-256
// signing key and returns its key, attributes and name.
func checkAK(pub *tpm2.TPMTPublic) (*ecdsa.PublicKey, AKAttributes, []byte, error) {
	a := pub.ObjectAttributes
	attrs := AKAttributes{
		FixedTPM: a.FixedTPM, FixedParent: a.FixedParent, SensitiveDataOrigin: a.SensitiveDataOrigin,
		Restricted: a.Restricted, Sign: a.SignEncrypt, Decrypt: a.Decrypt,
	}
	var bad []string
	for _, c := range []struct {
		ok   bool
		name string
	}{
		{attrs.FixedTPM, "not fixedTPM"}, {attrs.FixedParent, "not fixedParent"},
		{attrs.SensitiveDataOrigin, "not sensitiveDataOrigin"}, {attrs.Restricted, "not restricted"},
		{attrs.Sign, "not a signing key"}, {!attrs.Decrypt, "a decryption key"},
	} {
		if !c.ok {
			bad = append(bad, c.name)
		}
	}
	if len(bad) > 0 {
		return nil, attrs, nil, fmt.Errorf("%w: AK is %v", ErrAK, bad)
	}
	if pub.Type != tpm2.TPMAlgECC || pub.NameAlg != tpm2.TPMAlgSHA256 {
		return nil, attrs, nil, fmt.Errorf("%w: AK is not an ECC key with SHA-256 names", ErrAK)
	}
	parms, err := pub.Parameters.ECCDetail()
	if err != nil {
		return nil, attrs, nil, fmt.Errorf("%w: AK parameters: %v", ErrAK, err)
	}
	if parms.CurveID != tpm2.TPMECCNistP256 || parms.Scheme.Scheme != tpm2.TPMAlgECDSA {
		return nil, attrs, nil, fmt.Errorf("%w: AK is not ECDSA on P-256", ErrAK)
	}
	sch, err := parms.Scheme.Details.ECDSA()
	if err != nil || sch.HashAlg != tpm2.TPMAlgSHA256 {
		return nil, attrs, nil, fmt.Errorf("%w: AK signing scheme is not ECDSA with SHA-256", ErrAK)
	}
	point, err := pub.Unique.ECC()
	if err != nil {
		return nil, attrs, nil, fmt.Errorf("%w: AK public point: %v", ErrAK, err)
	}
	key, err := ecdsaKey(point)
	if err != nil {
		return nil, attrs, nil, fmt.Errorf("%w: AK public point: %v", ErrAK, err)
	}
	name, err := tpm2.ObjectName(pub)
	if err != nil {
		return nil, attrs, nil, fmt.Errorf("%w: AK name: %v", ErrAK, err)
	}
	return key, attrs, name.Buffer, nil
}

func ecdsaKey(p *tpm2.TPMSECCPoint) (*ecdsa.PublicKey, error) {
	if len(p.X.Buffer) != 32 || len(p.Y.Buffer) != 32 {
		return nil, fmt.Errorf("coordinates are not 32 bytes")
	}
	raw := make([]byte, 0, 65)
	raw = append(append(append(raw, 4), p.X.Buffer...), p.Y.Buffer...)
	// Refuses points that are not on the curve.
	return ecdsa.ParseUncompressedPublicKey(elliptic.P256(), raw)
}

// checkEKPublic checks the EK public area carries the certified key and
// is a restricted decryption key resident in the TPM.
func checkEKPublic(pub *tpm2.TPMTPublic, cert *x509.Certificate) error {
	a := pub.ObjectAttributes
	if !a.FixedTPM || !a.FixedParent || !a.SensitiveDataOrigin || !a.Restricted || !a.Decrypt || a.SignEncrypt {
		return fmt.Errorf("%w: EK public area is not a fixedTPM restricted decryption key", ErrEKCertificate)
	}
	switch certKey := cert.PublicKey.(type) {
	case *rsa.PublicKey:
		if pub.Type != tpm2.TPMAlgRSA {
			return fmt.Errorf("%w: EK public area is not RSA like its certificate", ErrEKCertificate)
		}
		parms, err := pub.Parameters.RSADetail()
		if err != nil {
			return fmt.Errorf("%w: EK parameters: %v", ErrEKCertificate, err)
		}
		n, err := pub.Unique.RSA()
		if err != nil {
			return fmt.Errorf("%w: EK modulus: %v", ErrEKCertificate, err)
		}
		e := int(parms.Exponent)
		if e == 0 {
			e = 65537
		}
		if new(big.Int).SetBytes(n.Buffer).Cmp(certKey.N) != 0 || e != certKey.E {
			return fmt.Errorf("%w: EK public area does not hold the certified key", ErrEKCertificate)
		}
	case *ecdsa.PublicKey:
		if pub.Type != tpm2.TPMAlgECC {
			return fmt.Errorf("%w: EK public area is not ECC like its certificate", ErrEKCertificate)
		}
		p, err := pub.Unique.ECC()
		if err != nil {
			return fmt.Errorf("%w: EK point: %v", ErrEKCertificate, err)
		}
		want, err := certKey.Bytes()
		if err != nil {
			return fmt.Errorf("%w: EK certificate key: %v", ErrEKCertificate, err)
		}
		size := (len(want) - 1) / 2
		if len(p.X.Buffer) > size || len(p.Y.Buffer) > size {
			return fmt.Errorf("%w: EK public area does not hold the certified key", ErrEKCertificate)
		}
		got := make([]byte, 1+2*size)
		got[0] = 4
		copy(got[1+size-len(p.X.Buffer):], p.X.Buffer)
		copy(got[1+2*size-len(p.Y.Buffer):], p.Y.Buffer)
		if !bytes.Equal(got, want) {
			return fmt.Errorf("%w: EK public area does not hold the certified key", ErrEKCertificate)
		}
	default:
		return fmt.Errorf("%w: EK certificate key type %T is not supported", ErrEKCertificate, cert.PublicKey)
	}
	return nil
}

// pcrSelection is the TPML_PCR_SELECTION for pcrs in the SHA-256 bank.
func pcrSelection(pcrs []int) tpm2.TPMLPCRSelection {
	sel := make([]uint, len(pcrs))
	for i, p := range pcrs {
		sel[i] = uint(p)
	}
	return tpm2.TPMLPCRSelection{PCRSelections: []tpm2.TPMSPCRSelection{{
		Hash:      tpm2.TPMAlgSHA256,
		PCRSelect: tpm2.PCClientCompatible.PCRs(sel...),
	}}}
}

// PCRSelection returns the TPML_PCR_SELECTION a Challenge asks to quote.
// The attester uses it so both sides build the same selection.
func (c *Challenge) PCRSelection() tpm2.TPMLPCRSelection { return pcrSelection(c.PCRs) }

// pcrDigest is the quote's PCR digest for SHA-256 values in selection
// (ascending index) order.
func pcrDigest(values [][]byte) []byte {
	h := sha256.New()
	for _, v := range values {
		h.Write(v)
	}
	return h.Sum(nil)
}
