package policyd

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rsa"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/google/uuid"

	"github.com/zfaas/zfaas/store"
)

// Defaults used when the matching Config field is zero.
const (
	DefaultEnvoyQuery          = "data.envoy.authz.allow"
	DefaultEvalTimeout         = 2 * time.Second
	DefaultTestTimeout         = 5 * time.Second
	DefaultMaxBundleBytes      = 16 << 20
	DefaultMaxUnpackedBytes    = 64 << 20
	DefaultDecisionLogQueue    = 4096
	DefaultDecisionLogMaxAge   = 7 * 24 * time.Hour
	DefaultDecisionLogMaxBytes = 1 << 30
	DefaultKeyID               = "zfaas"
)

// Names in the store.
const (
	// Bucket is the KV bucket of policy revisions ("rev.<n>"), the active
	// revision ("active"), the revision counter ("seq") and node status
	// ("status.<node>").
	Bucket = "zfaas_policy"
	// BundleBucket is the object store bucket of revision bundles, named by
	// "sha256:<hex>" of their bytes.
	BundleBucket = "zfaas_policy_bundles"
	// DecisionStream is the JetStream stream of the decision log.
	DecisionStream = "ZFAAS_DECISIONS"
	// DecisionSubjectPrefix prefixes the decision log's subjects; a record
	// of entry point E is published on DecisionSubjectPrefix + E.
	DecisionSubjectPrefix = "zfaas.decisions."
)

// Config configures New. Zero values take the documented defaults.
type Config struct {
	// Store holds revisions, node status and the decision log. Required.
	Store *store.Store
	// Node names this engine in status.<node> and in decision records:
	// [A-Za-z0-9_-]{1,64}. Default: the host name, with other characters
	// replaced by '-'.
	Node string
	// Logger receives the engine's logs with component=policyd; nil
	// discards them.
	Logger *slog.Logger
	// Now is the clock, used for records and as time.now_ns() in policies;
	// default time.Now.
	Now func() time.Time
	// NewID returns a unique decision id; default a random UUID.
	NewID func() string

	// Default is the policy served when the store has no active revision
	// yet (e.g. the policies/ repo embedded in the binary). It is compiled
	// (not tested: it shipped tested) and served as revision 0 on this node
	// only; it is never written to the store, and it needs no signature.
	// Nil: the engine denies every request until a revision is pushed.
	Default fs.FS

	// VerifyKey, when set, is the PEM public key (PKIX "PUBLIC KEY", "RSA
	// PUBLIC KEY" or a "CERTIFICATE") that every pushed or activated bundle
	// must be signed with. Unsigned bundles, bundles with a bad signature
	// and bundles holding any file the signature does not cover are
	// refused. Nil: signatures are not checked (and not required).
	VerifyKey []byte
	// KeyID is the id the verification key is known by; default
	// DefaultKeyID. The key is used whatever "kid" a signature names.
	KeyID string
	// KeyAlgorithm is the JWS algorithm of signatures (RS256, RS384, RS512,
	// PS256, PS384, PS512, ES256, ES384, ES512); default by key type: RS256
	// for RSA, ES256/ES384/ES512 by curve for ECDSA.
	KeyAlgorithm string

	// DecisionLog enables publishing every decision to DecisionStream.
	DecisionLog bool
	// DecisionLogQueue bounds the decisions waiting to be published; when
	// full, records are dropped and counted (LogStats). Default
	// DefaultDecisionLogQueue.
	DecisionLogQueue int
	// DecisionLogMaxAge and DecisionLogMaxBytes bound the stream when this
	// engine creates it; defaults DefaultDecisionLogMaxAge and
	// DefaultDecisionLogMaxBytes.
	DecisionLogMaxAge   time.Duration
	DecisionLogMaxBytes int64

	// EnvoyQuery is the query of entry point EntryEnvoy (Envoy ext_authz);
	// default DefaultEnvoyQuery.
	EnvoyQuery string
	// CallerPointers are JSON pointers into a decision's input tried in
	// order for the caller's SPIFFE ID recorded in the decision log; the
	// first string found wins. Default: /caller/spiffe_id, /caller/id,
	// /caller, /attributes/source/principal.
	CallerPointers []string

	// EvalTimeout bounds one evaluation; default DefaultEvalTimeout.
	EvalTimeout time.Duration
	// TestTimeout bounds one policy test; default DefaultTestTimeout.
	TestTimeout time.Duration
	// MaxBundleBytes caps a bundle's compressed size; default
	// DefaultMaxBundleBytes. MaxUnpackedBytes caps the sum of its files'
	// sizes; default DefaultMaxUnpackedBytes.
	MaxBundleBytes   int64
	MaxUnpackedBytes int64

	// OnSwap, if set, is called after this engine starts serving another
	// revision (from the goroutine that swapped; it must not block), e.g.
	// to rewrite eBPF egress maps from EgressRules.
	OnSwap func(revision int64)
}

var nodeRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

func (c *Config) setDefaults() error {
	if c.Store == nil {
		return errors.New("policyd: Config.Store is required")
	}
	if c.Node == "" {
		h, _ := os.Hostname()
		c.Node = sanitizeNode(h)
	}
	if !nodeRE.MatchString(c.Node) {
		return fmt.Errorf("policyd: node name %q: want [A-Za-z0-9_-]{1,64}", c.Node)
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
	if c.Now == nil {
		c.Now = time.Now
	}
	if c.NewID == nil {
		c.NewID = uuid.NewString
	}
	if c.KeyID == "" {
		c.KeyID = DefaultKeyID
	}
	if len(c.VerifyKey) > 0 {
		alg, err := verifyKeyAlgorithm(c.VerifyKey, c.KeyAlgorithm)
		if err != nil {
			return fmt.Errorf("policyd: verification key: %w", err)
		}
		c.KeyAlgorithm = alg
	}
	if c.DecisionLogQueue <= 0 {
		c.DecisionLogQueue = DefaultDecisionLogQueue
	}
	if c.DecisionLogMaxAge <= 0 {
		c.DecisionLogMaxAge = DefaultDecisionLogMaxAge
	}
	if c.DecisionLogMaxBytes <= 0 {
		c.DecisionLogMaxBytes = DefaultDecisionLogMaxBytes
	}
	if c.EnvoyQuery == "" {
		c.EnvoyQuery = DefaultEnvoyQuery
	}
	if len(c.CallerPointers) == 0 {
		c.CallerPointers = []string{"/caller/spiffe_id", "/caller/id", "/caller", "/attributes/source/principal"}
	}
	if c.EvalTimeout <= 0 {
		c.EvalTimeout = DefaultEvalTimeout
	}
	if c.TestTimeout <= 0 {
		c.TestTimeout = DefaultTestTimeout
	}
	if c.MaxBundleBytes <= 0 {
		c.MaxBundleBytes = DefaultMaxBundleBytes
	}
	if c.MaxUnpackedBytes <= 0 {
		c.MaxUnpackedBytes = DefaultMaxUnpackedBytes
	}
	return nil
}

func sanitizeNode(h string) string {
	h, _, _ = strings.Cut(h, ".")
	b := []byte(h)
	for i, c := range b {
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
			b[i] = '-'
		}
	}
	if len(b) > 64 {
		b = b[:64]
	}
	if len(b) == 0 {
		return "node"
	}
	return string(b)
}

// verifyKeyAlgorithm checks that pemKey is an asymmetric public key and
// returns the JWS algorithm to verify with.
func verifyKeyAlgorithm(pemKey []byte, alg string) (string, error) {
	block, _ := pem.Decode(pemKey)
	if block == nil {
		return "", errors.New("not PEM")
	}
	var pub any
	var err error
	switch block.Type {
	case "PUBLIC KEY":
		pub, err = x509.ParsePKIXPublicKey(block.Bytes)
	case "RSA PUBLIC KEY":
		pub, err = x509.ParsePKCS1PublicKey(block.Bytes)
	case "CERTIFICATE":
		var cert *x509.Certificate
		if cert, err = x509.ParseCertificate(block.Bytes); err == nil {
			pub = cert.PublicKey
		}
	default:
		return "", fmt.Errorf("PEM block %q: want a public key or certificate", block.Type)
	}
	if err != nil {
		return "", err
	}
	var want []string
	def := ""
	switch k := pub.(type) {
	case *rsa.PublicKey:
		want, def = []string{"RS256", "RS384", "RS512", "PS256", "PS384", "PS512"}, "RS256"
	case *ecdsa.PublicKey:
		switch k.Curve {
		case elliptic.P256():
			def = "ES256"
		case elliptic.P384():
			def = "ES384"
		case elliptic.P521():
			def = "ES512"
		default:
			return "", errors.New("unsupported ECDSA curve")
		}
		want = []string{def}
	default:
		return "", fmt.Errorf("unsupported key type %T", pub)
	}
	if alg == "" {
		return def, nil
	}
	for _, w := range want {
		if alg == w {
			return alg, nil
		}
	}
	return "", fmt.Errorf("algorithm %s does not fit the key (want one of %s)", alg, strings.Join(want, ", "))
}
