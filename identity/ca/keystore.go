package ca

import (
	"context"
	"crypto"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"regexp"

	"github.com/emmansun/gmsm/sm2"
	"github.com/emmansun/gmsm/smx509"
)

// Signer is a private key the CA can sign with without seeing it: the disk
// key store returns an *ecdsa.PrivateKey, an HSM, a KMS or an upstream
// authority can return a handle. Any crypto.Signer satisfies it. The key
// algorithm is the signer's business; the CA accepts ECDSA P-256 keys for
// its standard authorities and, under the gm suite, SM2 keys (public key on
// sm2.P256) for its SM2 authorities. An SM2 signer must produce SM2
// signatures over the message the way *sm2.PrivateKey does for smx509.
type Signer interface {
	Public() crypto.PublicKey
	Sign(rand io.Reader, digest []byte, opts crypto.SignerOpts) ([]byte, error)
}

// KeyStore creates, finds and destroys the CA's signing keys by name.
// Names match [a-z0-9][a-z0-9-]{0,63}.
type KeyStore interface {
	GenerateKey(ctx context.Context, name string) (Signer, error)
	LoadKey(ctx context.Context, name string) (Signer, error)
	DeleteKey(ctx context.Context, name string) error
}

// SM2KeyStore is a KeyStore that can also create SM2 keys. The CA needs it
// for the gm suite (Config.Suite == SuiteGM); LoadKey and DeleteKey serve
// both kinds by name.
type SM2KeyStore interface {
	KeyStore
	GenerateSM2Key(ctx context.Context, name string) (Signer, error)
}

var (
	// ErrKeyNotFound is returned by KeyStore.LoadKey for an unknown name.
	ErrKeyNotFound = errors.New("key not found")
	// ErrKeyPermissions is returned when a key file or its directory is
	// readable or writable by group or others.
	ErrKeyPermissions = errors.New("key file permissions too open")
	// ErrKeyName is returned for a key name outside the allowed alphabet.
	ErrKeyName = errors.New("invalid key name")
)

var keyNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,63}$`)

// DiskKeyStore keeps ECDSA P-256 and SM2 keys as PKCS#8 PEM files, mode
// 0600, in a directory of mode 0700. All file access goes through an os.Root so a name
// can never escape the directory. It is safe for concurrent use.
type DiskKeyStore struct {
	root *os.Root
}

var _ SM2KeyStore = (*DiskKeyStore)(nil)

// NewDiskKeyStore opens (creating it if needed) dir as a key directory. An
// existing directory whose mode allows group or other access is tightened
// to 0700.
func NewDiskKeyStore(dir string) (*DiskKeyStore, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create key dir %s: %w", dir, err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		return nil, fmt.Errorf("stat key dir %s: %w", dir, err)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		if err := os.Chmod(dir, 0o700); err != nil {
			return nil, fmt.Errorf("tighten key dir %s: %w", dir, err)
		}
	}
	root, err := os.OpenRoot(dir)
	if err != nil {
		return nil, fmt.Errorf("open key dir %s: %w", dir, err)
	}
	return &DiskKeyStore{root: root}, nil
}

// Close releases the directory handle.
func (s *DiskKeyStore) Close() error { return s.root.Close() }

func keyFile(name string) (string, error) {
	if !keyNameRE.MatchString(name) {
		return "", fmt.Errorf("%w: %q", ErrKeyName, name)
	}
	return name + ".key", nil
}

// GenerateKey creates a new P-256 key, writes it 0600 and returns it. It
// refuses to overwrite an existing key.
func (s *DiskKeyStore) GenerateKey(_ context.Context, name string) (Signer, error) {
	file, err := keyFile(name)
	if err != nil {
		return nil, err
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate key %s: %w", name, err)
	}
	der, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal key %s: %w", name, err)
	}
	if err := s.write(name, file, der); err != nil {
		return nil, err
	}
	return key, nil
}

// GenerateSM2Key creates a new SM2 key (an *sm2.PrivateKey), writes it 0600
// as PKCS#8 (algorithm id-ecPublicKey on the sm2p256v1 curve, the form
// smx509.MarshalPKCS8PrivateKey writes) and returns it. It refuses to
// overwrite an existing key.
func (s *DiskKeyStore) GenerateSM2Key(_ context.Context, name string) (Signer, error) {
	file, err := keyFile(name)
	if err != nil {
		return nil, err
	}
	key, err := sm2.GenerateKey(rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate sm2 key %s: %w", name, err)
	}
	der, err := smx509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal sm2 key %s: %w", name, err)
	}
	if err := s.write(name, file, der); err != nil {
		return nil, err
	}
	return key, nil
}

func (s *DiskKeyStore) write(name, file string, pkcs8 []byte) error {
	data := pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: pkcs8})
	if err := writeFileAtomic(s.root, file, data, true); err != nil {
		return fmt.Errorf("write key %s: %w", name, err)
	}
	return nil
}

// LoadKey reads a key written by GenerateKey or GenerateSM2Key. It fails with
// ErrKeyPermissions if the file mode allows group or other access and with
// ErrKeyNotFound if there is no such key.
func (s *DiskKeyStore) LoadKey(_ context.Context, name string) (Signer, error) {
	file, err := keyFile(name)
	if err != nil {
		return nil, err
	}
	f, err := s.root.Open(file)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%w: %s", ErrKeyNotFound, name)
	}
	if err != nil {
		return nil, fmt.Errorf("open key %s: %w", name, err)
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, fmt.Errorf("stat key %s: %w", name, err)
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("key %s: not a regular file", name)
	}
	if fi.Mode().Perm()&0o077 != 0 {
		return nil, fmt.Errorf("%w: %s is %v", ErrKeyPermissions, name, fi.Mode().Perm())
	}
	data, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return nil, fmt.Errorf("read key %s: %w", name, err)
	}
	block, _ := pem.Decode(data)
	if block == nil || block.Type != "PRIVATE KEY" {
		return nil, fmt.Errorf("key %s: no PKCS#8 PEM block", name)
	}
	k, err := x509.ParsePKCS8PrivateKey(block.Bytes)
	if err != nil {
		// crypto/x509 does not know the SM2 curve; smx509 does.
		sk, serr := smx509.ParsePKCS8PrivateKey(block.Bytes)
		if _, ok := sk.(*sm2.PrivateKey); serr != nil || !ok {
			return nil, fmt.Errorf("parse key %s: %w", name, err)
		}
		k = sk
	}
	signer, ok := k.(crypto.Signer)
	if !ok {
		return nil, fmt.Errorf("key %s: %T is not a signer", name, k)
	}
	return signer, nil
}

// DeleteKey removes a key file. Deleting a missing key is not an error.
func (s *DiskKeyStore) DeleteKey(_ context.Context, name string) error {
	file, err := keyFile(name)
	if err != nil {
		return err
	}
	if err := s.root.Remove(file); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("delete key %s: %w", name, err)
	}
	return nil
}

// writeFileAtomic writes data to name inside root with mode 0600 through a
// temporary file and a rename. With exclusive set it fails if name exists.
func writeFileAtomic(root *os.Root, name string, data []byte, exclusive bool) error {
	if exclusive {
		if _, err := root.Lstat(name); err == nil {
			return fs.ErrExist
		}
	}
	tmp := name + ".tmp"
	_ = root.Remove(tmp)
	f, err := root.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		_ = root.Remove(tmp)
		return err
	}
	if err := f.Sync(); err != nil {
		f.Close()
		_ = root.Remove(tmp)
		return err
	}
	if err := f.Close(); err != nil {
		_ = root.Remove(tmp)
		return err
	}
	return root.Rename(tmp, name)
}
