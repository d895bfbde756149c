package tlcp

import (
	"crypto/cipher"
	"crypto/hmac"
	"errors"
	"hash"

	"github.com/emmansun/gmsm/sm3"
	"github.com/emmansun/gmsm/sm4"
)

// cipherSuite describes one suite's key exchange and record protection.
type cipherSuite struct {
	id    uint16
	name  string
	ecdhe bool // SM2 key exchange (ECDHE) rather than SM2 encryption (ECC)
	aead  bool // SM4-GCM rather than SM4-CBC with HMAC-SM3
	// Key block lengths (GB/T 38636-2020 6.5.2).
	macLen, keyLen, ivLen int
}

var suiteTable = []*cipherSuite{
	{id: ECC_SM4_CBC_SM3, name: "ECC_SM4_CBC_SM3", macLen: 32, keyLen: 16, ivLen: 16},
	{id: ECC_SM4_GCM_SM3, name: "ECC_SM4_GCM_SM3", aead: true, keyLen: 16, ivLen: 4},
	{id: ECDHE_SM4_CBC_SM3, name: "ECDHE_SM4_CBC_SM3", ecdhe: true, macLen: 32, keyLen: 16, ivLen: 16},
	{id: ECDHE_SM4_GCM_SM3, name: "ECDHE_SM4_GCM_SM3", ecdhe: true, aead: true, keyLen: 16, ivLen: 4},
}

func suiteByID(id uint16) *cipherSuite {
	for _, s := range suiteTable {
		if s.id == id {
			return s
		}
	}
	return nil
}

// gcmNonceExplicit is the per-record explicit part of the SM4-GCM nonce;
// the 4-byte implicit part comes from the key block (as in RFC 5288).
const (
	gcmNonceExplicit = 8
	gcmTagSize       = 16
)

// newSM4GCM returns SM4 in GCM mode, using gmsm's accelerated GCM when the
// block offers one (crypto/cipher.NewGCM only accelerates AES).
func newSM4GCM(key []byte) (cipher.AEAD, error) {
	b, err := sm4.NewCipher(key)
	if err != nil {
		return nil, err
	}
	if g, ok := b.(interface {
		NewGCM(nonceSize, tagSize int) (cipher.AEAD, error)
	}); ok {
		return g.NewGCM(12, gcmTagSize)
	}
	return cipher.NewGCM(b)
}

// prf is the TLCP PRF: P_SM3 of RFC 5246 5 with HMAC-SM3.
func prf(out, secret []byte, label string, seeds ...[]byte) {
	seed := make([]byte, 0, len(label)+64)
	seed = append(seed, label...)
	for _, s := range seeds {
		seed = append(seed, s...)
	}
	h := hmac.New(sm3.New, secret)
	h.Write(seed)
	a := h.Sum(nil) // A(1)
	for len(out) > 0 {
		h.Reset()
		h.Write(a)
		h.Write(seed)
		n := copy(out, h.Sum(nil))
		out = out[n:]
		h.Reset()
		h.Write(a)
		a = h.Sum(a[:0])
	}
}

const (
	masterSecretLen = 48
	finishedLen     = 12
)

func masterSecret(preMaster, clientRandom, serverRandom []byte) []byte {
	m := make([]byte, masterSecretLen)
	prf(m, preMaster, "master secret", clientRandom, serverRandom)
	return m
}

func finishedData(master []byte, client bool, transcript hash.Hash) []byte {
	label := "server finished"
	if client {
		label = "client finished"
	}
	out := make([]byte, finishedLen)
	prf(out, master, label, transcript.Sum(nil))
	return out
}

// keys are one connection's record protection keys.
type keys struct {
	clientMAC, serverMAC, clientKey, serverKey, clientIV, serverIV []byte
}

func deriveKeys(s *cipherSuite, master, clientRandom, serverRandom []byte) keys {
	n := 2 * (s.macLen + s.keyLen + s.ivLen)
	b := make([]byte, n)
	prf(b, master, "key expansion", serverRandom, clientRandom)
	var k keys
	take := func(l int) []byte { r := b[:l:l]; b = b[l:]; return r }
	k.clientMAC, k.serverMAC = take(s.macLen), take(s.macLen)
	k.clientKey, k.serverKey = take(s.keyLen), take(s.keyLen)
	k.clientIV, k.serverIV = take(s.ivLen), take(s.ivLen)
	return k
}

// newProtection builds the record protection of one direction.
func newProtection(s *cipherSuite, macKey, key, iv []byte) (*protection, error) {
	if s.aead {
		g, err := newSM4GCM(key)
		if err != nil {
			return nil, err
		}
		return &protection{aead: g, fixedIV: iv}, nil
	}
	b, err := sm4.NewCipher(key)
	if err != nil {
		return nil, err
	}
	if len(macKey) == 0 {
		return nil, errors.New("tlcp: missing MAC key")
	}
	return &protection{block: b, mac: hmac.New(sm3.New, macKey)}, nil
}
