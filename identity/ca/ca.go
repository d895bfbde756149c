// Package ca is the certificate authority of one SPIFFE trust domain: it
// keeps its signing keys behind the Signer/KeyStore interfaces, issues
// X509-SVIDs and JWT-SVIDs that follow the SPIFFE specs, publishes the X.509
// and JWT bundles, and rotates its own authority ahead of expiry.
//
// Rotation: when the active authority reaches half of its life a successor
// is prepared and published in both bundles at once; it starts signing at
// two thirds of the old one's life (at the earliest one sixth of a life after
// it was published), and the old authority stays in the bundles until it
// expires, which is also the latest expiry of anything it signed (SVID
// lifetimes are clipped to their issuer's). Time comes only from
// Config.Clock, so tests drive rotation by moving a fake clock and calling
// Rotate.
//
// Suites: the standard suite has one ECDSA P-256 authority per generation.
// The gm suite (Config.Suite = SuiteGM) keeps that authority, so standard
// TLS peers and go-spiffe keep working, and pairs it with a self-signed SM2
// authority of the same validity that signs the GM double SVIDs
// (MintGMSVID: an SM2 signing and an SM2 encryption certificate with the
// same SPIFFE ID). The SM2 authority is created, published, activated and
// retired together with its ECDSA partner, so it follows the same rotation
// story. Turning the gm suite on for an existing CA gives every unexpired
// authority an SM2 partner at the next Rotate (valid from then on until
// the partner's expiry).
//
// The CA never hands out private keys of its own, never signs a CA
// certificate for anyone else, and never issues an SVID outside its trust
// domain.
package ca

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"math/big"
	"net/url"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/emmansun/gmsm/smx509"
	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/zfaas/zfaas/identity/internal/notify"
)

// Defaults for Config.
const (
	DefaultX509TTL        = time.Hour
	DefaultJWTTTL         = 5 * time.Minute
	DefaultCATTL          = 24 * time.Hour
	DefaultRotateInterval = 10 * time.Second

	// backdate is subtracted from NotBefore to tolerate small clock skew
	// between the CA and relying parties.
	backdate = 30 * time.Second
)

var (
	// ErrNoAuthority is returned when no authority is active, e.g. all
	// have expired and Rotate has not run since.
	ErrNoAuthority = errors.New("no active signing authority")
	// ErrWrongTrustDomain is returned when asked to sign an ID outside
	// the CA's trust domain or the trust domain ID itself.
	ErrWrongTrustDomain = errors.New("spiffe id not in this trust domain")
	// ErrUnsupportedKey is returned for public or signing keys other than
	// ECDSA P-256.
	ErrUnsupportedKey = errors.New("unsupported key type")
	// ErrTTL is returned for a requested TTL above the allowed maximum.
	ErrTTL = errors.New("ttl too long")
	// ErrTrustDomain is returned by New when the state on disk belongs to
	// another trust domain.
	ErrTrustDomain = errors.New("ca state of another trust domain")
	// ErrGMDisabled is returned by MintGMSVID when the CA does not run the
	// gm suite.
	ErrGMDisabled = errors.New("gm suite not enabled")
)

// Suite selects the algorithms of a CA.
type Suite string

const (
	// SuiteStandard issues ECDSA P-256 X509-SVIDs and ES256 JWT-SVIDs.
	SuiteStandard Suite = "standard"
	// SuiteGM adds an SM2 authority and GM double SVIDs (SM2 signing and
	// encryption certificates, SM2-with-SM3 signatures) to everything the
	// standard suite issues.
	SuiteGM Suite = "gm"
)

// Config configures a CA. Zero durations take the defaults.
type Config struct {
	// TrustDomain is the trust domain the CA signs for, e.g. zfaas.local.
	TrustDomain spiffeid.TrustDomain
	// Dir holds the CA state (ca-state.json) and, unless KeyStore is set,
	// the keys in Dir/keys. Created 0700.
	Dir string
	// KeyStore holds the signing keys; nil means a DiskKeyStore in Dir/keys.
	KeyStore KeyStore
	// Clock returns the current time; nil means time.Now.
	Clock func() time.Time
	// X509TTL is the default X509-SVID lifetime (1 h).
	X509TTL time.Duration
	// JWTTTL is the default JWT-SVID lifetime (5 min).
	JWTTTL time.Duration
	// CATTL is the lifetime of each authority (24 h); it must be at least
	// six times X509TTL and JWTTTL so a successor is published for at least
	// one SVID lifetime before it signs.
	CATTL time.Duration
	// RotateInterval is how often Run calls Rotate (10 s).
	RotateInterval time.Duration
	// Logger receives structured logs; nil discards them.
	Logger *slog.Logger
	// Suite is SuiteStandard ("" means standard) or SuiteGM. The gm suite
	// needs a KeyStore that implements SM2KeyStore (DiskKeyStore does).
	Suite Suite
}

// CA is a SPIFFE certificate authority. It is safe for concurrent use.
type CA struct {
	td       spiffeid.TrustDomain
	cfg      Config
	keys     KeyStore
	ownsKeys *DiskKeyStore
	dir      *os.Root
	log      *slog.Logger
	now      func() time.Time

	changed notify.Broadcaster

	mu     sync.RWMutex
	auths  []*authority // sorted by activateAt
	gen    uint64
	active string // serial of the active authority, for change detection
}

type authority struct {
	cert        *x509.Certificate
	x509Key     Signer
	jwtKey      Signer
	x509KeyName string
	jwtKeyName  string
	kid         string
	activateAt  time.Time

	// The SM2 partner authority (gm suite), nil when there is none.
	gmCert    *smx509.Certificate
	gmKey     Signer
	gmKeyName string
}

// New builds a CA from cfg, loading the state left in cfg.Dir by an earlier
// run, and makes sure an authority is active.
func New(ctx context.Context, cfg Config) (*CA, error) {
	if cfg.TrustDomain.IsZero() {
		return nil, errors.New("ca config: trust domain is required")
	}
	if cfg.Dir == "" {
		return nil, errors.New("ca config: dir is required")
	}
	if cfg.X509TTL == 0 {
		cfg.X509TTL = DefaultX509TTL
	}
	if cfg.JWTTTL == 0 {
		cfg.JWTTTL = DefaultJWTTTL
	}
	if cfg.CATTL == 0 {
		cfg.CATTL = DefaultCATTL
	}
	if cfg.RotateInterval == 0 {
		cfg.RotateInterval = DefaultRotateInterval
	}
	if cfg.X509TTL < 0 || cfg.JWTTTL < 0 || cfg.CATTL < 0 || cfg.RotateInterval < 0 {
		return nil, errors.New("ca config: durations must be positive")
	}
	switch cfg.Suite {
	case "":
		cfg.Suite = SuiteStandard
	case SuiteStandard, SuiteGM:
	default:
		return nil, fmt.Errorf("ca config: unknown suite %q (want standard or gm)", cfg.Suite)
	}
	if cfg.CATTL < 6*cfg.X509TTL || cfg.CATTL < 6*cfg.JWTTTL {
		return nil, fmt.Errorf("ca config: ca_ttl %v must be at least 6 times the svid ttls (%v, %v)", cfg.CATTL, cfg.X509TTL, cfg.JWTTTL)
	}
	c := &CA{td: cfg.TrustDomain, cfg: cfg, now: cfg.Clock, log: cfg.Logger}
	if c.now == nil {
		c.now = time.Now
	}
	if c.log == nil {
		c.log = slog.New(slog.DiscardHandler)
	}
	c.log = c.log.With("component", "identity-ca", "trust_domain", c.td.String())
	if err := os.MkdirAll(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("create ca dir: %w", err)
	}
	if err := os.Chmod(cfg.Dir, 0o700); err != nil {
		return nil, fmt.Errorf("chmod ca dir: %w", err)
	}
	dir, err := os.OpenRoot(cfg.Dir)
	if err != nil {
		return nil, fmt.Errorf("open ca dir: %w", err)
	}
	c.dir = dir
	c.keys = cfg.KeyStore
	if c.keys == nil {
		ks, err := NewDiskKeyStore(filepath.Join(cfg.Dir, "keys"))
		if err != nil {
			dir.Close()
			return nil, err
		}
		c.keys, c.ownsKeys = ks, ks
	}
	if _, ok := c.keys.(SM2KeyStore); cfg.Suite == SuiteGM && !ok {
		c.Close()
		return nil, fmt.Errorf("ca config: suite gm needs a key store that can create sm2 keys, %T cannot", c.keys)
	}
	if err := c.load(ctx); err != nil {
		c.Close()
		return nil, err
	}
	if err := c.Rotate(ctx); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// Close releases file handles. It does not delete anything.
func (c *CA) Close() error {
	var errs []error
	if c.ownsKeys != nil {
		errs = append(errs, c.ownsKeys.Close())
	}
	errs = append(errs, c.dir.Close())
	return errors.Join(errs...)
}

// TrustDomain returns the trust domain the CA signs for.
func (c *CA) TrustDomain() spiffeid.TrustDomain { return c.td }

// Suite returns the CA's suite, SuiteStandard or SuiteGM.
func (c *CA) Suite() Suite { return c.cfg.Suite }

// Run calls Rotate every Config.RotateInterval until ctx is done. Rotation
// errors are logged and retried; Run returns nil when ctx ends.
func (c *CA) Run(ctx context.Context) error {
	t := time.NewTicker(c.cfg.RotateInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			if err := c.Rotate(ctx); err != nil {
				c.log.Error("ca rotation failed", "err", err)
			}
		}
	}
}

// Changed returns a channel closed at the next change of the bundles or of
// the active authority (see Bundles.Generation).
func (c *CA) Changed() <-chan struct{} { return c.changed.Wait() }

// Rotate brings the authorities up to date with the clock: it drops expired
// ones, prepares and publishes a successor at half of the active one's life,
// creates a fresh authority if none is active and, under the gm suite,
// gives every authority without one an SM2 partner. Any change bumps the
// generation and wakes Changed waiters.
func (c *CA) Rotate(ctx context.Context) error {
	now := c.now()
	c.mu.Lock()
	changed, err := c.rotateLocked(ctx, now)
	if changed {
		c.gen++
	}
	c.mu.Unlock()
	if changed {
		c.changed.Notify()
	}
	return err
}

func (c *CA) rotateLocked(ctx context.Context, now time.Time) (bool, error) {
	changed := false
	keep := c.auths[:0]
	var expired []*authority
	for _, a := range c.auths {
		if now.Before(a.cert.NotAfter) {
			keep = append(keep, a)
		} else {
			expired = append(expired, a)
		}
	}
	c.auths = keep
	if len(expired) > 0 {
		changed = true
	}
	active := c.activeLocked(now)
	switch {
	case active == nil:
		// Nothing can sign: a fresh authority is active at once. This is
		// the first start, or the CA was offline past its expiry.
		a, err := c.newAuthority(ctx, now, now)
		if err != nil {
			return changed, c.finish(changed, err)
		}
		c.insert(a)
		changed = true
		c.log.Info("ca authority created and active", "serial", serialHex(a.cert), "not_after", a.cert.NotAfter)
	case !c.hasSuccessorLocked(active):
		life := active.cert.NotAfter.Sub(active.cert.NotBefore)
		if now.Before(active.cert.NotBefore.Add(life / 2)) {
			break
		}
		at := active.cert.NotBefore.Add(life * 2 / 3)
		if earliest := now.Add(life / 6); at.Before(earliest) {
			at = earliest
		}
		if at.After(active.cert.NotAfter) {
			at = active.cert.NotAfter
		}
		a, err := c.newAuthority(ctx, now, at)
		if err != nil {
			return changed, c.finish(changed, err)
		}
		c.insert(a)
		changed = true
		c.log.Info("ca successor published", "serial", serialHex(a.cert), "activate_at", at)
	}
	if c.cfg.Suite == SuiteGM {
		for _, a := range c.auths {
			if a.gmCert != nil {
				continue
			}
			// An authority from before the gm suite was turned on.
			if err := c.addGM(ctx, a, now); err != nil {
				return changed, c.finish(changed, err)
			}
			changed = true
			c.log.Info("ca sm2 authority added", "serial", serialHex(a.cert), "sm2_serial", a.gmCert.SerialNumber.Text(16))
		}
	}
	if act := c.activeLocked(now); act != nil && serialHex(act.cert) != c.active {
		c.active = serialHex(act.cert)
		changed = true
		c.log.Info("ca authority active", "serial", c.active)
	}
	for _, a := range expired {
		c.log.Info("ca authority expired", "serial", serialHex(a.cert))
		c.deleteKeys(ctx, a)
	}
	return changed, c.finish(changed, nil)
}

// finish persists the state after a change; err is returned unchanged if
// set (and the state is still saved so nothing already done is lost).
func (c *CA) finish(changed bool, err error) error {
	if !changed {
		return err
	}
	if serr := c.save(); serr != nil {
		return errors.Join(err, serr)
	}
	return err
}

func (c *CA) deleteKeys(ctx context.Context, a *authority) {
	for _, name := range []string{a.x509KeyName, a.jwtKeyName, a.gmKeyName} {
		if name == "" {
			continue
		}
		if err := c.keys.DeleteKey(ctx, name); err != nil {
			c.log.Warn("delete expired ca key", "key", name, "err", err)
		}
	}
}

func (c *CA) insert(a *authority) {
	i := len(c.auths)
	for i > 0 && c.auths[i-1].activateAt.After(a.activateAt) {
		i--
	}
	c.auths = append(c.auths, nil)
	copy(c.auths[i+1:], c.auths[i:])
	c.auths[i] = a
}

// signingAuthority returns the authority that signs now, and now.
func (c *CA) signingAuthority() (*authority, time.Time, error) {
	now := c.now()
	c.mu.RLock()
	a := c.activeLocked(now)
	c.mu.RUnlock()
	if a == nil {
		return nil, now, ErrNoAuthority
	}
	return a, now, nil
}

// activeLocked returns the newest unexpired authority whose activation time
// has come.
func (c *CA) activeLocked(now time.Time) *authority {
	for i := len(c.auths) - 1; i >= 0; i-- {
		a := c.auths[i]
		if !now.Before(a.activateAt) && now.Before(a.cert.NotAfter) {
			return a
		}
	}
	return nil
}

func (c *CA) hasSuccessorLocked(active *authority) bool {
	for _, a := range c.auths {
		if a.activateAt.After(active.activateAt) {
			return true
		}
	}
	return false
}

func (c *CA) newAuthority(ctx context.Context, now, activateAt time.Time) (*authority, error) {
	var rnd [8]byte
	if _, err := rand.Read(rnd[:]); err != nil {
		return nil, err
	}
	suffix := hex.EncodeToString(rnd[:])
	a := &authority{x509KeyName: "x509-" + suffix, jwtKeyName: "jwt-" + suffix, activateAt: activateAt}
	var err error
	if a.x509Key, err = c.keys.GenerateKey(ctx, a.x509KeyName); err != nil {
		return nil, fmt.Errorf("generate x509 ca key: %w", err)
	}
	if a.jwtKey, err = c.keys.GenerateKey(ctx, a.jwtKeyName); err != nil {
		c.deleteKeys(ctx, a)
		return nil, fmt.Errorf("generate jwt key: %w", err)
	}
	if err := checkP256(a.x509Key.Public()); err != nil {
		c.deleteKeys(ctx, a)
		return nil, err
	}
	if a.kid, err = keyID(a.jwtKey.Public()); err != nil {
		c.deleteKeys(ctx, a)
		return nil, err
	}
	serial, err := randomSerial()
	if err != nil {
		c.deleteKeys(ctx, a)
		return nil, err
	}
	nb := now.Add(-backdate)
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject: pkix.Name{
			Organization: []string{"zfaas"},
			CommonName:   "zfaas CA " + c.td.Name(),
			SerialNumber: serial.Text(16),
		},
		URIs:                  []*url.URL{c.td.ID().URL()},
		NotBefore:             nb,
		NotAfter:              nb.Add(c.cfg.CATTL),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, a.x509Key.Public(), a.x509Key)
	if err != nil {
		c.deleteKeys(ctx, a)
		return nil, fmt.Errorf("self-sign ca certificate: %w", err)
	}
	if a.cert, err = x509.ParseCertificate(der); err != nil {
		c.deleteKeys(ctx, a)
		return nil, fmt.Errorf("parse ca certificate: %w", err)
	}
	if c.cfg.Suite == SuiteGM {
		if err := c.addGM(ctx, a, now); err != nil {
			c.deleteKeys(ctx, a)
			return nil, err
		}
	}
	return a, nil
}

// Bundles is a consistent view of the published trust material.
type Bundles struct {
	// X509 holds every unexpired CA certificate, including a prepared
	// successor that does not sign yet.
	X509 *x509bundle.Bundle
	// JWT holds every unexpired JWT signing key by key ID.
	JWT *jwtbundle.Bundle
	// GM holds the SM2 authorities (gm suite only; nil otherwise): every
	// unexpired one, including a prepared successor, oldest first. They
	// verify GM double SVIDs; crypto/x509 cannot parse them, so they are
	// not in X509.
	GM []*smx509.Certificate
	// Generation increases whenever the bundles or the active authority
	// change.
	Generation uint64
}

// Bundles returns fresh copies of the X.509 and JWT bundles; callers may
// modify them.
func (c *CA) Bundles() Bundles {
	now := c.now()
	c.mu.RLock()
	defer c.mu.RUnlock()
	b := Bundles{X509: x509bundle.New(c.td), JWT: jwtbundle.New(c.td), Generation: c.gen}
	for _, a := range c.auths {
		if !now.Before(a.cert.NotAfter) {
			continue
		}
		b.X509.AddX509Authority(a.cert)
		_ = b.JWT.AddJWTAuthority(a.kid, a.jwtKey.Public()) // kid is never empty
		if c.cfg.Suite == SuiteGM && a.gmCert != nil && now.Before(a.gmCert.NotAfter) {
			b.GM = append(b.GM, a.gmCert)
		}
	}
	return b
}

// X509Bundle returns the X.509 bundle (see Bundles).
func (c *CA) X509Bundle() *x509bundle.Bundle { return c.Bundles().X509 }

// JWTBundle returns the JWT bundle (see Bundles).
func (c *CA) JWTBundle() *jwtbundle.Bundle { return c.Bundles().JWT }

func (c *CA) checkID(id spiffeid.ID) error {
	if id.IsZero() || !id.MemberOf(c.td) || id.Path() == "" {
		return fmt.Errorf("%w: %q", ErrWrongTrustDomain, id.String())
	}
	return nil
}

func checkP256(pub any) error {
	k, ok := pub.(*ecdsa.PublicKey)
	if !ok || k.Curve != elliptic.P256() {
		return fmt.Errorf("%w: %T", ErrUnsupportedKey, pub)
	}
	return nil
}

// keyID derives a JWT key ID from the public key (SHA-256 of the SPKI).
func keyID(pub any) (string, error) {
	if err := checkP256(pub); err != nil {
		return "", err
	}
	der, err := x509.MarshalPKIXPublicKey(pub)
	if err != nil {
		return "", fmt.Errorf("marshal jwt public key: %w", err)
	}
	sum := sha256.Sum256(der)
	return base64.RawURLEncoding.EncodeToString(sum[:24]), nil
}

func randomSerial() (*big.Int, error) {
	// 127 bits: positive, at most 16 DER bytes.
	limit := new(big.Int).Lsh(big.NewInt(1), 127)
	for {
		n, err := rand.Int(rand.Reader, limit)
		if err != nil {
			return nil, fmt.Errorf("serial: %w", err)
		}
		if n.Sign() > 0 {
			return n, nil
		}
	}
}

func serialHex(c *x509.Certificate) string { return c.SerialNumber.Text(16) }
