package audit

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/sha256"
	"crypto/x509"
	"encoding/base64"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"unicode"
	"unicode/utf8"

	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/smx509"
)

// Signature types of the C2SP signed-note specification used here.
//
// ECDSA P-256 uses the assigned type 0x02 (ECDSA as in
// transparency-dev/witness): the signature is ASN.1 DER ECDSA over
// SHA-256(note text) and the key ID is SHA-256(SPKI DER public key)[:4].
//
// SM2 has no assigned type, so it uses 0xff followed by the identifier
// "zfaas/sm2-sm3" (the signed-note specification reserves 0xff for types
// with a longer identifier): the signature is ASN.1 DER SM2 (GB/T 32918.2,
// default user id 1234567812345678, SM3 with Z_A) over the note text, and
// the key ID is SHA-256(key name || 0x0A || 0xff || "zfaas/sm2-sm3" || SPKI
// DER public key)[:4].
const (
	sigTypeECDSA byte = 0x02
	sigTypeOther byte = 0xff
	sm2TypeName       = "zfaas/sm2-sm3"
)

// maxNoteSignatures bounds the signature lines of a note.
const maxNoteSignatures = 16

// ErrNoteSignature is returned when a note has no valid signature by a
// trusted key, or a signature by a trusted key does not verify.
var ErrNoteSignature = errors.New("note signature does not verify")

// Verifier is a public key that checks note signatures: a key name, a key
// ID and the key. Verifiers are immutable and safe for concurrent use.
type Verifier struct {
	name  string
	id    uint32
	ecdsa *ecdsa.PublicKey // sig type 0x02
	sm2   *ecdsa.PublicKey // sig type 0xff zfaas/sm2-sm3
	text  string           // the vkey form
}

// Name returns the key name (the log origin).
func (v *Verifier) Name() string { return v.name }

// KeyID returns the key ID.
func (v *Verifier) KeyID() uint32 { return v.id }

// String returns the verifier key in its text form, "NAME+KEYID+KEY":
// the key name, the key ID as 8 hex digits and the base64 of the signature
// type identifier followed by the SPKI DER public key.
func (v *Verifier) String() string { return v.text }

// Algorithm names the signature algorithm: "ecdsa-p256" or "sm2".
func (v *Verifier) Algorithm() string {
	if v.sm2 != nil {
		return "sm2"
	}
	return "ecdsa-p256"
}

func (v *Verifier) verify(msg, sig []byte) bool {
	if v.sm2 != nil {
		return sm2.VerifyASN1WithSM2(v.sm2, nil, msg, sig)
	}
	d := sha256.Sum256(msg)
	return ecdsa.VerifyASN1(v.ecdsa, d[:], sig)
}

// signer signs notes with the audit key.
type signer struct {
	v     *Verifier
	ecdsa *ecdsa.PrivateKey
	sm2   *sm2.PrivateKey
}

func (s *signer) sign(rand io.Reader, msg []byte) ([]byte, error) {
	if s.sm2 != nil {
		return sm2.SignASN1(rand, s.sm2, msg, sm2.DefaultSM2SignerOpts)
	}
	d := sha256.Sum256(msg)
	return ecdsa.SignASN1(rand, s.ecdsa, d[:])
}

// validKeyName follows the signed-note rules: non-empty, no Unicode spaces
// and no plus.
func validKeyName(name string) bool {
	if name == "" || !utf8.ValidString(name) || strings.ContainsRune(name, '+') {
		return false
	}
	for _, r := range name {
		if unicode.IsSpace(r) || r < 0x20 {
			return false
		}
	}
	return true
}

// newVerifier builds the verifier of an ECDSA P-256 or SM2 public key.
func newVerifier(name string, pub *ecdsa.PublicKey, isSM2 bool) (*Verifier, error) {
	if !validKeyName(name) {
		return nil, fmt.Errorf("audit: invalid key name %q", name)
	}
	v := &Verifier{name: name}
	var typ, der []byte
	var err error
	if isSM2 {
		if der, err = smx509.MarshalPKIXPublicKey(pub); err != nil {
			return nil, fmt.Errorf("audit: marshal sm2 key: %w", err)
		}
		typ = append([]byte{sigTypeOther}, sm2TypeName...)
		h := sha256.New()
		h.Write([]byte(name))
		h.Write([]byte{'\n'})
		h.Write(typ)
		h.Write(der)
		v.id = binary.BigEndian.Uint32(h.Sum(nil))
		v.sm2 = pub
	} else {
		if pub.Curve != elliptic.P256() {
			return nil, errors.New("audit: ECDSA key is not P-256")
		}
		if der, err = x509.MarshalPKIXPublicKey(pub); err != nil {
			return nil, fmt.Errorf("audit: marshal ecdsa key: %w", err)
		}
		typ = []byte{sigTypeECDSA}
		sum := sha256.Sum256(der)
		v.id = binary.BigEndian.Uint32(sum[:])
		v.ecdsa = pub
	}
	v.text = fmt.Sprintf("%s+%08x+%s", name, v.id, base64.StdEncoding.EncodeToString(append(typ, der...)))
	return v, nil
}

// ParseVerifier parses a verifier key in the text form of
// Verifier.String. The key ID must match the key.
func ParseVerifier(vkey string) (*Verifier, error) {
	vkey = strings.TrimSpace(vkey)
	name, rest, ok1 := strings.Cut(vkey, "+")
	idHex, keyB64, ok2 := strings.Cut(rest, "+")
	if !ok1 || !ok2 || len(idHex) != 8 {
		return nil, fmt.Errorf("audit: malformed verifier key %q: want NAME+KEYID+BASE64", vkey)
	}
	id, err := strconv.ParseUint(idHex, 16, 32)
	if err != nil {
		return nil, fmt.Errorf("audit: verifier key id %q: %w", idHex, err)
	}
	raw, err := base64.StdEncoding.DecodeString(keyB64)
	if err != nil || len(raw) < 2 {
		return nil, fmt.Errorf("audit: verifier key %q: bad base64 key", name)
	}
	var v *Verifier
	switch {
	case raw[0] == sigTypeECDSA:
		pub, err := x509.ParsePKIXPublicKey(raw[1:])
		if err != nil {
			return nil, fmt.Errorf("audit: verifier key %q: %w", name, err)
		}
		ep, ok := pub.(*ecdsa.PublicKey)
		if !ok {
			return nil, fmt.Errorf("audit: verifier key %q: not an ECDSA key", name)
		}
		if v, err = newVerifier(name, ep, false); err != nil {
			return nil, err
		}
	case raw[0] == sigTypeOther && bytes.HasPrefix(raw[1:], []byte(sm2TypeName)):
		pub, err := smx509.ParsePKIXPublicKey(raw[1+len(sm2TypeName):])
		if err != nil {
			return nil, fmt.Errorf("audit: verifier key %q: %w", name, err)
		}
		ep, ok := pub.(*ecdsa.PublicKey)
		if !ok || !sm2.IsSM2PublicKey(ep) {
			return nil, fmt.Errorf("audit: verifier key %q: not an SM2 key", name)
		}
		if v, err = newVerifier(name, ep, true); err != nil {
			return nil, err
		}
	default:
		return nil, fmt.Errorf("audit: verifier key %q: unsupported signature type 0x%02x", name, raw[0])
	}
	if v.id != uint32(id) {
		return nil, fmt.Errorf("audit: verifier key %q: key id %s does not match the key (%08x)", name, idHex, v.id)
	}
	return v, nil
}

// ParseVerifiers parses verifier keys, one per line; empty lines and lines
// starting with # are skipped.
func ParseVerifiers(text string) ([]*Verifier, error) {
	var out []*Verifier
	for line := range strings.SplitSeq(text, "\n") {
		line = strings.TrimSpace(line)
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		v, err := ParseVerifier(line)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	if len(out) == 0 {
		return nil, errors.New("audit: no verifier keys")
	}
	return out, nil
}

// signNote returns the signed note: text (which must end in a newline), a
// blank line, and one signature line.
func signNote(rand io.Reader, s *signer, text string) (string, error) {
	if !strings.HasSuffix(text, "\n") {
		return "", errors.New("audit: note text must end in a newline")
	}
	sig, err := s.sign(rand, []byte(text))
	if err != nil {
		return "", fmt.Errorf("audit: sign note: %w", err)
	}
	var idb [4]byte
	binary.BigEndian.PutUint32(idb[:], s.v.id)
	return text + "\n— " + s.v.name + " " + base64.StdEncoding.EncodeToString(append(idb[:], sig...)) + "\n", nil
}

// openNote splits a signed note and checks its signatures against the
// known keys: signatures by unknown keys are ignored, a signature by a
// known key that does not verify rejects the note, and at least one known
// signature must verify. It returns the note text and the keys that
// signed it.
func openNote(note string, known []*Verifier) (string, []*Verifier, error) {
	if !utf8.ValidString(note) {
		return "", nil, errors.New("note is not valid UTF-8")
	}
	for _, r := range note {
		if r < 0x20 && r != '\n' {
			return "", nil, errors.New("note contains a control character")
		}
	}
	split := strings.LastIndex(note, "\n\n")
	if split < 0 {
		return "", nil, errors.New("malformed note: no signature block")
	}
	text, sigs := note[:split+1], note[split+2:]
	if !strings.HasSuffix(sigs, "\n") {
		return "", nil, errors.New("malformed note: signatures must end in a newline")
	}
	lines := strings.Split(strings.TrimSuffix(sigs, "\n"), "\n")
	if len(lines) > maxNoteSignatures {
		return "", nil, fmt.Errorf("note has %d signatures, more than %d", len(lines), maxNoteSignatures)
	}
	var signed []*Verifier
	for _, line := range lines {
		rest, ok := strings.CutPrefix(line, "— ")
		if !ok {
			return "", nil, fmt.Errorf("malformed signature line %q", line)
		}
		name, b64, ok := strings.Cut(rest, " ")
		if !ok || !validKeyName(name) {
			return "", nil, fmt.Errorf("malformed signature line %q", line)
		}
		raw, err := base64.StdEncoding.DecodeString(b64)
		if err != nil || len(raw) < 5 {
			return "", nil, fmt.Errorf("malformed signature by %s", name)
		}
		id := binary.BigEndian.Uint32(raw[:4])
		for _, v := range known {
			if v.name != name || v.id != id {
				continue
			}
			if !v.verify([]byte(text), raw[4:]) {
				return "", nil, fmt.Errorf("%w: key %s+%08x", ErrNoteSignature, name, id)
			}
			signed = append(signed, v)
		}
	}
	if len(signed) == 0 {
		return "", nil, fmt.Errorf("%w: no signature by a trusted key", ErrNoteSignature)
	}
	return text, signed, nil
}

// Checkpoint is a signed statement of the chain at a size: after Size
// records the hash of record Size is Head. Its text is a C2SP
// tlog-checkpoint body (origin, size, base64 head hash, one per line);
// the third line is the hash-chain head, not an RFC 6962 Merkle root.
type Checkpoint struct {
	Origin string
	Size   uint64
	Head   []byte // raw hash of record Size
	// Note is the whole signed note (text, blank line, signature lines).
	Note string
}

// checkpointText formats the note text of a checkpoint.
func checkpointText(origin string, size uint64, head []byte) string {
	return origin + "\n" + strconv.FormatUint(size, 10) + "\n" + base64.StdEncoding.EncodeToString(head) + "\n"
}

// parseCheckpointText parses a checkpoint note text.
func parseCheckpointText(text string) (Checkpoint, error) {
	lines := strings.Split(strings.TrimSuffix(text, "\n"), "\n")
	if len(lines) < 3 || lines[0] == "" {
		return Checkpoint{}, errors.New("malformed checkpoint: want origin, size and head hash lines")
	}
	for _, l := range lines[3:] {
		if l == "" {
			return Checkpoint{}, errors.New("malformed checkpoint: empty extension line")
		}
	}
	size, err := strconv.ParseUint(lines[1], 10, 64)
	if err != nil || (lines[1] != "0" && strings.HasPrefix(lines[1], "0")) {
		return Checkpoint{}, fmt.Errorf("malformed checkpoint size %q", lines[1])
	}
	head, err := base64.StdEncoding.DecodeString(lines[2])
	if err != nil || len(head) != 32 {
		return Checkpoint{}, fmt.Errorf("malformed checkpoint head %q", lines[2])
	}
	return Checkpoint{Origin: lines[0], Size: size, Head: head}, nil
}

// OpenCheckpoint verifies a signed checkpoint note against the trusted
// keys and parses it. The origin must be the name of a key that signed it.
func OpenCheckpoint(note string, trusted []*Verifier) (Checkpoint, []*Verifier, error) {
	text, signed, err := openNote(note, trusted)
	if err != nil {
		return Checkpoint{}, nil, err
	}
	cp, err := parseCheckpointText(text)
	if err != nil {
		return Checkpoint{}, nil, err
	}
	for _, v := range signed {
		if v.name != cp.Origin {
			return Checkpoint{}, nil, fmt.Errorf("checkpoint origin %q is signed by key %q", cp.Origin, v.name)
		}
	}
	cp.Note = note
	return cp, signed, nil
}

// HeadHex returns the checkpoint's head hash in hex, as records carry it.
func (c Checkpoint) HeadHex() string { return hex.EncodeToString(c.Head) }
