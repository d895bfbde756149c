package audit

import (
	"crypto/sha256"
	"fmt"
	"hash"
	"strings"

	"github.com/emmansun/gmsm/sm3"
)

// Suite picks the audit log's algorithms.
type Suite string

// Suites.
const (
	// SuiteStandard hashes with SHA-256 and signs checkpoints with ECDSA
	// P-256. It is the default.
	SuiteStandard Suite = "standard"
	// SuiteGM hashes with SM3 and signs checkpoints with SM2 (GB/T 32918,
	// default user id), for deployments that must use the Chinese national
	// algorithms.
	SuiteGM Suite = "gm"
)

// HashAlg is a record hash algorithm.
type HashAlg string

// Hash algorithms, as named in export headers.
const (
	SHA256 HashAlg = "sha256"
	SM3    HashAlg = "sm3"
)

// Hash returns the suite's record hash.
func (s Suite) Hash() HashAlg {
	if s == SuiteGM {
		return SM3
	}
	return SHA256
}

func (s Suite) valid() bool { return s == SuiteStandard || s == SuiteGM }

// ParseSuite parses "standard" or "gm" (case-insensitive; "" is standard).
func ParseSuite(s string) (Suite, error) {
	switch strings.ToLower(s) {
	case "", "standard":
		return SuiteStandard, nil
	case "gm":
		return SuiteGM, nil
	}
	return "", fmt.Errorf("audit: unknown suite %q (want standard or gm)", s)
}

// New returns a new hash.Hash of the algorithm.
func (h HashAlg) New() hash.Hash {
	if h == SM3 {
		return sm3.New()
	}
	return sha256.New()
}

// Sum returns the digest of b.
func (h HashAlg) Sum(b []byte) []byte {
	if h == SM3 {
		s := sm3.Sum(b)
		return s[:]
	}
	s := sha256.Sum256(b)
	return s[:]
}

func (h HashAlg) valid() bool { return h == SHA256 || h == SM3 }

// zeroHash is the Prev of record 1: 32 zero bytes in hex.
var zeroHash = strings.Repeat("0", 64)
