package audit

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	cryptorand "crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/smx509"
)

// Key files in a key directory.
const (
	// PublicKeysFile lists the verifier keys (Verifier.String), one per
	// line, the current key first, then retired keys that still verify
	// older checkpoints. Mode 0644: it is meant to be published.
	PublicKeysFile = "audit.pub"
	keyFileECDSA   = "audit-ecdsa.key" // PKCS #8 PEM, 0600
	keyFileSM2     = "audit-sm2.key"   // PKCS #8 PEM, 0600
)

func keyFile(s Suite) string {
	if s == SuiteGM {
		return keyFileSM2
	}
	return keyFileECDSA
}

// loadOrCreateKey loads the suite's signing key from dir, creating the
// directory (0700) and a new key (0600) when there is none, and makes sure
// its verifier key is listed in dir/audit.pub.
func loadOrCreateKey(dir string, suite Suite, name string, rand io.Reader) (*signer, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("audit: key dir: %w", err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("audit: key dir: %w", err)
	}
	defer root.Close()
	raw, err := root.ReadFile(keyFile(suite))
	var s *signer
	switch {
	case errors.Is(err, fs.ErrNotExist):
		if s, err = generateKey(root, suite, name, rand); err != nil {
			return nil, err
		}
	case err != nil:
		return nil, fmt.Errorf("audit: read key: %w", err)
	default:
		if fi, err := root.Stat(keyFile(suite)); err == nil && fi.Mode().Perm()&0o077 != 0 {
			return nil, fmt.Errorf("audit: key %s is mode %o: want 0600", filepath.Join(dir, keyFile(suite)), fi.Mode().Perm())
		}
		if s, err = parseSigningKey(raw, suite, name); err != nil {
			return nil, err
		}
	}
	if err := addPublicKey(root, s.v); err != nil {
		return nil, err
	}
	return s, nil
}

// RotateKey replaces the suite's signing key in dir with a new one and
// lists the new verifier key first in dir/audit.pub; the old verifier keys
// stay listed, so checkpoints they signed keep verifying. The old private
// key is overwritten. Logs using dir pick the new key up when reopened.
// rand nil means crypto/rand.
func RotateKey(dir string, suite Suite, name string, rand io.Reader) (*Verifier, error) {
	if !suite.valid() {
		return nil, fmt.Errorf("audit: unknown suite %q", suite)
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("audit: key dir: %w", err)
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("audit: key dir: %w", err)
	}
	defer root.Close()
	s, err := generateKey(root, suite, name, rand)
	if err != nil {
		return nil, err
	}
	return s.v, addPublicKey(root, s.v)
}

func generateKey(root *os.Root, suite Suite, name string, rand io.Reader) (*signer, error) {
	if rand == nil {
		rand = cryptorand.Reader
	}
	var der []byte
	var s *signer
	var err error
	if suite == SuiteGM {
		k, err := sm2.GenerateKey(rand)
		if err != nil {
			return nil, fmt.Errorf("audit: generate sm2 key: %w", err)
		}
		if der, err = smx509.MarshalPKCS8PrivateKey(k); err != nil {
			return nil, fmt.Errorf("audit: marshal sm2 key: %w", err)
		}
		v, err := newVerifier(name, &k.PublicKey, true)
		if err != nil {
			return nil, err
		}
		s = &signer{v: v, sm2: k}
	} else {
		k, err := ecdsa.GenerateKey(elliptic.P256(), rand)
		if err != nil {
			return nil, fmt.Errorf("audit: generate ecdsa key: %w", err)
		}
		if der, err = x509.MarshalPKCS8PrivateKey(k); err != nil {
			return nil, fmt.Errorf("audit: marshal ecdsa key: %w", err)
		}
		v, err := newVerifier(name, &k.PublicKey, false)
		if err != nil {
			return nil, err
		}
		s = &signer{v: v, ecdsa: k}
	}
	pemBytes := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der})
	if err = writeFileAtomic(root, keyFile(suite), pemBytes, 0o600); err != nil {
		return nil, fmt.Errorf("audit: write key: %w", err)
	}
	return s, nil
}

func parseSigningKey(raw []byte, suite Suite, name string) (*signer, error) {
	b, _ := pem.Decode(raw)
	if b == nil || b.Type != "PRIVATE KEY" {
		return nil, errors.New("audit: signing key: want a PEM PRIVATE KEY (PKCS #8)")
	}
	if suite == SuiteGM {
		k, err := smx509.ParsePKCS8PrivateKey(b.Bytes)
		if err != nil {
			return nil, fmt.Errorf("audit: signing key: %w", err)
		}
		sk, ok := k.(*sm2.PrivateKey)
		if !ok {
			return nil, fmt.Errorf("audit: signing key is %T, want SM2 for the gm suite", k)
		}
		v, err := newVerifier(name, &sk.PublicKey, true)
		if err != nil {
			return nil, err
		}
		return &signer{v: v, sm2: sk}, nil
	}
	k, err := x509.ParsePKCS8PrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("audit: signing key: %w", err)
	}
	ek, ok := k.(*ecdsa.PrivateKey)
	if !ok || ek.Curve != elliptic.P256() {
		return nil, fmt.Errorf("audit: signing key is %T, want ECDSA P-256 for the standard suite", k)
	}
	v, err := newVerifier(name, &ek.PublicKey, false)
	if err != nil {
		return nil, err
	}
	return &signer{v: v, ecdsa: ek}, nil
}

// addPublicKey puts v first in audit.pub, keeping the other keys listed.
func addPublicKey(root *os.Root, v *Verifier) error {
	old, err := root.ReadFile(PublicKeysFile)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("audit: read public keys: %w", err)
	}
	if strings.HasPrefix(string(old), v.String()+"\n") {
		return nil // already first
	}
	lines := []string{v.String()}
	for l := range strings.SplitSeq(string(old), "\n") {
		l = strings.TrimSpace(l)
		if l != "" && l != v.String() {
			lines = append(lines, l)
		}
	}
	if err := writeFileAtomic(root, PublicKeysFile, []byte(strings.Join(lines, "\n")+"\n"), 0o644); err != nil {
		return fmt.Errorf("audit: write public keys: %w", err)
	}
	return nil
}

// ReadPublicKeys reads the verifier keys listed in dir/audit.pub.
func ReadPublicKeys(dir string) ([]*Verifier, error) {
	raw, err := os.ReadFile(filepath.Join(dir, PublicKeysFile))
	if err != nil {
		return nil, fmt.Errorf("audit: %w", err)
	}
	return ParseVerifiers(string(raw))
}

func writeFileAtomic(root *os.Root, name string, data []byte, mode os.FileMode) error {
	tmp := name + ".tmp"
	f, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, mode)
	if err != nil {
		return err
	}
	if err := f.Chmod(mode); err != nil {
		f.Close()
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return err
	}
	if err := f.Close(); err != nil {
		return err
	}
	return root.Rename(tmp, name)
}
