package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/rand"
	"crypto/sha256"
	"encoding/asn1"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"math/big"
	"slices"
	"strings"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

// InstanceClaim is the private JWT claim that names the function instance a
// JWT-SVID was issued to (instances of one function share their SPIFFE ID).
const InstanceClaim = "x-zfaas-instance"

// MaxJWTSize bounds the tokens ValidateJWTSVID will look at.
const MaxJWTSize = 8 << 10

var (
	// ErrInvalidJWT is returned (wrapped) for a malformed token, an unknown
	// key, a bad signature or a subject outside the trust domain.
	ErrInvalidJWT = errors.New("invalid jwt-svid")
	// ErrJWTExpired is returned for a token at or past its exp claim.
	ErrJWTExpired = errors.New("jwt-svid expired")
	// ErrJWTAudience is returned when the token is not for the audience.
	ErrJWTAudience = errors.New("jwt-svid audience mismatch")
)

// JWTParams asks for a JWT-SVID.
type JWTParams struct {
	// ID is the subject; a workload ID in the CA's trust domain.
	ID spiffeid.ID
	// Audience must hold at least one non-empty value.
	Audience []string
	// TTL is the lifetime; zero means Config.JWTTTL. At most CATTL/6.
	TTL time.Duration
	// Instance, if set, is carried in the InstanceClaim claim.
	Instance string
}

// JWTSVID is a signed JWT-SVID.
type JWTSVID struct {
	Token    string
	ID       spiffeid.ID
	Audience []string
	Expiry   time.Time
}

type jwtHeader struct {
	Alg string `json:"alg"`
	Kid string `json:"kid"`
	Typ string `json:"typ,omitempty"`
}

type jwtClaims struct {
	Sub      string   `json:"sub"`
	Aud      []string `json:"aud"`
	Exp      int64    `json:"exp"`
	Iat      int64    `json:"iat"`
	Instance string   `json:"x-zfaas-instance,omitempty"`
}

// MintJWTSVID signs a JWT-SVID (ES256, with the kid of a key in the JWT
// bundle) with claims sub, aud, exp, iat and, if set, InstanceClaim.
func (c *CA) MintJWTSVID(_ context.Context, p JWTParams) (*JWTSVID, error) {
	if err := c.checkID(p.ID); err != nil {
		return nil, err
	}
	if len(p.Audience) == 0 || slices.Contains(p.Audience, "") {
		return nil, fmt.Errorf("%w: audience required", ErrInvalidJWT)
	}
	ttl, err := c.ttl(p.TTL, c.cfg.JWTTTL)
	if err != nil {
		return nil, err
	}
	a, now, err := c.signingAuthority()
	if err != nil {
		return nil, err
	}
	_, exp := clip(now, ttl, a)
	hdr, err := json.Marshal(jwtHeader{Alg: "ES256", Kid: a.kid, Typ: "JWT"})
	if err != nil {
		return nil, err
	}
	cl, err := json.Marshal(jwtClaims{Sub: p.ID.String(), Aud: slices.Clone(p.Audience), Exp: exp.Unix(), Iat: now.Unix(), Instance: p.Instance})
	if err != nil {
		return nil, err
	}
	signing := b64(hdr) + "." + b64(cl)
	digest := sha256.Sum256([]byte(signing))
	der, err := a.jwtKey.Sign(rand.Reader, digest[:], crypto.SHA256)
	if err != nil {
		return nil, fmt.Errorf("sign jwt-svid: %w", err)
	}
	raw, err := ecdsaDERToRaw(der, 32)
	if err != nil {
		return nil, fmt.Errorf("sign jwt-svid: %w", err)
	}
	return &JWTSVID{
		Token:    signing + "." + b64(raw),
		ID:       p.ID,
		Audience: slices.Clone(p.Audience),
		Expiry:   time.Unix(exp.Unix(), 0).UTC(),
	}, nil
}

// ValidatedJWT is the result of ValidateJWTSVID.
type ValidatedJWT struct {
	ID       spiffeid.ID
	Audience []string
	Expiry   time.Time
	// Claims holds every claim as decoded from JSON.
	Claims map[string]any
}

// ValidateJWTSVID checks a JWT-SVID against the current JWT bundle and clock:
// ES256 signature by a published key, subject in this trust domain, audience
// containing audience, not expired. Errors wrap ErrInvalidJWT, ErrJWTExpired
// or ErrJWTAudience.
func (c *CA) ValidateJWTSVID(token, audience string) (*ValidatedJWT, error) {
	if len(token) > MaxJWTSize {
		return nil, fmt.Errorf("%w: token too large", ErrInvalidJWT)
	}
	if audience == "" {
		return nil, fmt.Errorf("%w: audience required", ErrJWTAudience)
	}
	parts := strings.Split(token, ".")
	if len(parts) != 3 {
		return nil, fmt.Errorf("%w: not a compact jws", ErrInvalidJWT)
	}
	hdrRaw, err1 := base64.RawURLEncoding.DecodeString(parts[0])
	claimsRaw, err2 := base64.RawURLEncoding.DecodeString(parts[1])
	sig, err3 := base64.RawURLEncoding.DecodeString(parts[2])
	if err := errors.Join(err1, err2, err3); err != nil {
		return nil, fmt.Errorf("%w: bad base64url", ErrInvalidJWT)
	}
	var hdr map[string]any
	if err := json.Unmarshal(hdrRaw, &hdr); err != nil {
		return nil, fmt.Errorf("%w: bad header", ErrInvalidJWT)
	}
	if hdr["alg"] != "ES256" {
		return nil, fmt.Errorf("%w: alg %v not allowed", ErrInvalidJWT, hdr["alg"])
	}
	if typ, ok := hdr["typ"]; ok && typ != "JWT" && typ != "JOSE" {
		return nil, fmt.Errorf("%w: typ %v", ErrInvalidJWT, typ)
	}
	if _, ok := hdr["crit"]; ok {
		return nil, fmt.Errorf("%w: crit header not supported", ErrInvalidJWT)
	}
	kid, _ := hdr["kid"].(string)
	pub, ok := c.Bundles().JWT.FindJWTAuthority(kid)
	if !ok || kid == "" {
		return nil, fmt.Errorf("%w: unknown key id %q", ErrInvalidJWT, kid)
	}
	ek, ok := pub.(*ecdsa.PublicKey)
	if !ok || len(sig) != 64 {
		return nil, fmt.Errorf("%w: bad signature", ErrInvalidJWT)
	}
	digest := sha256.Sum256([]byte(parts[0] + "." + parts[1]))
	r, s := new(big.Int).SetBytes(sig[:32]), new(big.Int).SetBytes(sig[32:])
	if !ecdsa.Verify(ek, digest[:], r, s) {
		return nil, fmt.Errorf("%w: bad signature", ErrInvalidJWT)
	}

	var claims map[string]any
	dec := json.NewDecoder(bytes.NewReader(claimsRaw))
	dec.UseNumber()
	if err := dec.Decode(&claims); err != nil {
		return nil, fmt.Errorf("%w: bad claims", ErrInvalidJWT)
	}
	sub, _ := claims["sub"].(string)
	id, err := spiffeid.FromString(sub)
	if err != nil || c.checkID(id) != nil {
		return nil, fmt.Errorf("%w: subject %q", ErrInvalidJWT, sub)
	}
	exp, ok := numericDate(claims["exp"])
	if !ok {
		return nil, fmt.Errorf("%w: missing exp", ErrInvalidJWT)
	}
	now := c.now()
	if !now.Before(exp) {
		return nil, ErrJWTExpired
	}
	if nbf, ok := numericDate(claims["nbf"]); ok && now.Add(backdate).Before(nbf) {
		return nil, fmt.Errorf("%w: not yet valid", ErrInvalidJWT)
	}
	var aud []string
	switch v := claims["aud"].(type) {
	case string:
		aud = []string{v}
	case []any:
		for _, x := range v {
			if s, ok := x.(string); ok {
				aud = append(aud, s)
			}
		}
	}
	if !slices.Contains(aud, audience) {
		return nil, ErrJWTAudience
	}
	// Hand out claims decoded the plain encoding/json way (numbers as
	// float64) so callers can convert them without knowing json.Number.
	var plain map[string]any
	if err := json.Unmarshal(claimsRaw, &plain); err != nil {
		return nil, fmt.Errorf("%w: bad claims", ErrInvalidJWT)
	}
	return &ValidatedJWT{ID: id, Audience: aud, Expiry: exp.UTC(), Claims: plain}, nil
}

func numericDate(v any) (time.Time, bool) {
	n, ok := v.(json.Number)
	if !ok {
		return time.Time{}, false
	}
	i, err := n.Int64()
	if err != nil {
		f, ferr := n.Float64()
		if ferr != nil {
			return time.Time{}, false
		}
		i = int64(f)
	}
	return time.Unix(i, 0), true
}

func b64(b []byte) string { return base64.RawURLEncoding.EncodeToString(b) }

// ecdsaDERToRaw converts an ASN.1 ECDSA signature to the fixed-size R||S
// form JWS uses.
func ecdsaDERToRaw(der []byte, size int) ([]byte, error) {
	var sig struct{ R, S *big.Int }
	rest, err := asn1.Unmarshal(der, &sig)
	if err != nil || len(rest) != 0 || sig.R == nil || sig.S == nil || sig.R.Sign() <= 0 || sig.S.Sign() <= 0 {
		return nil, errors.New("malformed ecdsa signature")
	}
	if (sig.R.BitLen()+7)/8 > size || (sig.S.BitLen()+7)/8 > size {
		return nil, errors.New("ecdsa signature too large")
	}
	out := make([]byte, 2*size)
	sig.R.FillBytes(out[:size])
	sig.S.FillBytes(out[size:])
	return out, nil
}
