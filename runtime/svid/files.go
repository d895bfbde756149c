package svid

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/zfaas/zfaas/identity"
	"github.com/zfaas/zfaas/identity/ca"
	"github.com/zfaas/zfaas/runtime/sandbox"
	"github.com/zfaas/zfaas/runtime/worker"
)

// The files of an instance's SVID directory (Endpoints.Files), named as
// spiffe-helper names them. Each top-level name is a relative symbolic link
// into DataLink.
const (
	// SVIDFile holds the X.509-SVID's certificate chain, leaf first (PEM).
	SVIDFile = "svid.pem"
	// SVIDKeyFile holds the X.509-SVID's P-256 private key (PKCS#8 PEM),
	// mode 0400, owned by the function's uid and gid.
	SVIDKeyFile = "svid_key.pem"
	// SVIDBundleFile holds the trust domain's X.509 authorities (PEM).
	SVIDBundleFile = "svid_bundle.pem"
	// JWTSVIDFile holds a JWT-SVID (compact JWS, no newline), mode 0400,
	// owned by the function's uid and gid.
	JWTSVIDFile = "jwt_svid.token"
	// JWTBundleFile holds the trust domain's JWT keys (JWKS).
	JWTBundleFile = "jwt_bundle.json"
	// DataLink is the symbolic link to the directory of the current
	// generation. A reader that needs files of one generation (a
	// certificate and its key) resolves it once and reads from there.
	DataLink = "..data"
)

// dataLinkTmp is the link that is renamed over DataLink.
const dataLinkTmp = "..data_tmp"

// fileSpec is one file of a generation.
type fileSpec struct {
	name   string
	secret bool // 0400, owned by the function; otherwise 0444, the writer's
}

var fileSpecs = []fileSpec{
	{SVIDFile, false}, {SVIDKeyFile, true}, {SVIDBundleFile, false},
	{JWTSVIDFile, true}, {JWTBundleFile, false},
}

// deliveryKey marks the context of a mint for file delivery, so the
// recording issuer can tell Issued.Delivery.
type deliveryKey struct{}

// Deliveries named in Issued.Delivery.
const (
	DeliveryWorkloadAPI = "workload-api"
	DeliveryFiles       = "files"
)

func deliveryOf(ctx context.Context) string {
	if d, ok := ctx.Value(deliveryKey{}).(string); ok {
		return d
	}
	return DeliveryWorkloadAPI
}

var _ worker.FileIdentity = (*Endpoints)(nil)

// Files implements worker.FileIdentity. It writes the instance's
// X.509-SVID (its function's SPIFFE ID, a fresh P-256 key), a JWT-SVID
// for the configured audiences and the trust domain's bundles into a
// directory of the instance's own (Dir/files/<instance>) and keeps them
// current until closeFn: new SVIDs once half of a lifetime has passed by
// the clock, new bundles (and SVIDs, as on the Workload API) when the
// issuer's bundles change. Every update is a complete new generation in a
// hidden subdirectory that DataLink is switched to by one rename, so the
// top-level names change together; the previous generation stays until
// the next switch. spec.CgroupDir is not used: nothing attests a reader,
// the directory reaches only the instance's sandbox. closeFn stops the
// updates and removes the directory; it may be called more than once.
func (e *Endpoints) Files(ctx context.Context, spec worker.EndpointSpec) (string, func(), error) {
	if !sandbox.ValidID(spec.InstanceID) {
		return "", nil, fmt.Errorf("svid files: invalid instance id %q", spec.InstanceID)
	}
	id, err := identity.FunctionID(e.td, spec.Tenant, spec.Function)
	if err != nil {
		return "", nil, fmt.Errorf("svid files: %w", err)
	}
	dir := filepath.Join(e.filesDir, spec.InstanceID)
	if err := os.Mkdir(dir, 0o755); err != nil {
		return "", nil, fmt.Errorf("svid files: %w", err)
	}
	f := &fileSet{e: e, instance: spec.InstanceID, id: id, dir: dir, wake: make(chan struct{}, 1), done: make(chan struct{})}
	fail := func(err error) (string, func(), error) {
		if f.root != nil {
			f.root.Close()
		}
		os.RemoveAll(dir)
		return "", nil, fmt.Errorf("svid files for %s: %w", spec.InstanceID, err)
	}
	// Mkdir is subject to the umask.
	if err := os.Chmod(dir, 0o755); err != nil {
		return fail(err)
	}
	if f.root, err = os.OpenRoot(dir); err != nil {
		return fail(err)
	}
	// The first generation is complete before the sandbox starts.
	if err := f.update(ctx); err != nil {
		return fail(err)
	}
	e.filesMu.Lock()
	if e.filesClosed {
		e.filesMu.Unlock()
		return fail(errors.New("the svid provider is closed"))
	}
	e.files[f] = struct{}{}
	bg, cancel := context.WithCancel(e.bg)
	f.cancel = cancel
	e.wg.Go(func() {
		defer close(f.done)
		f.run(bg)
	})
	e.filesMu.Unlock()
	var once sync.Once
	return dir, func() { once.Do(func() { e.closeFiles(f) }) }, nil
}

// closeFiles stops f's updates and removes its directory.
func (e *Endpoints) closeFiles(f *fileSet) {
	f.cancel()
	<-f.done
	f.mu.Lock()
	if !f.closed {
		f.closed = true
		f.root.Close()
		if err := os.RemoveAll(f.dir); err != nil {
			e.log.Warn("could not remove svid files", "instance", f.instance, "err", err)
		}
	}
	f.mu.Unlock()
	e.filesMu.Lock()
	delete(e.files, f)
	e.filesMu.Unlock()
}

// refreshFiles wakes every file writer to check its SVIDs against the
// clock.
func (e *Endpoints) refreshFiles() {
	e.filesMu.Lock()
	defer e.filesMu.Unlock()
	for f := range e.files {
		select {
		case f.wake <- struct{}{}:
		default:
		}
	}
}

// checkFiles brings every file set up to date now (what the writers do
// when woken), for tests that must not wait.
func (e *Endpoints) checkFiles(ctx context.Context) error {
	e.filesMu.Lock()
	sets := make([]*fileSet, 0, len(e.files))
	for f := range e.files {
		sets = append(sets, f)
	}
	e.filesMu.Unlock()
	var errs []error
	for _, f := range sets {
		errs = append(errs, f.update(ctx))
	}
	return errors.Join(errs...)
}

// closeAllFiles closes the file sets still open (at Close) and refuses new
// ones.
func (e *Endpoints) closeAllFiles() {
	e.filesMu.Lock()
	e.filesClosed = true
	sets := make([]*fileSet, 0, len(e.files))
	for f := range e.files {
		sets = append(sets, f)
	}
	e.filesMu.Unlock()
	for _, f := range sets {
		e.closeFiles(f)
	}
}

// fileSet is the SVID directory of one instance.
type fileSet struct {
	e        *Endpoints
	instance string
	id       spiffeid.ID
	dir      string
	wake     chan struct{} // Refresh
	cancel   context.CancelFunc
	done     chan struct{} // closed when run returned

	// mu serializes updates (run and checkFiles) and guards the rest.
	mu      sync.Mutex
	closed  bool
	root    *os.Root
	x509    *x509svid.SVID
	jwt     *ca.JWTSVID
	jwtHalf time.Time // half of the JWT-SVID's life
	gen     uint64    // bundle generation written
	seq     int       // generations made
	cur     string    // the generation DataLink points at
	prev    string    // the one before, kept until the next switch
}

// updateTimeout bounds one update in the background (the issuer may be
// the control plane, over the network).
const updateTimeout = 30 * time.Second

// run updates the files whenever the bundles change or Refresh wakes it,
// until ctx ends. A failed update is logged and retried at the next wake
// (Endpoints refresh every RefreshInterval).
func (f *fileSet) run(ctx context.Context) {
	for {
		changed := f.e.issuer.Changed()
		uctx, cancel := context.WithTimeout(ctx, updateTimeout)
		err := f.update(uctx)
		cancel()
		if err != nil && ctx.Err() == nil {
			f.e.log.Error("could not update svid files", "instance", f.instance, "spiffe_id", f.id.String(), "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-changed:
		case <-f.wake:
		}
	}
}

// update writes a new generation when the bundles changed or an SVID is
// past half of its life, and does nothing otherwise.
func (f *fileSet) update(ctx context.Context) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.closed {
		return nil
	}
	now := f.e.now()
	b := f.e.issuer.Bundles()
	// A bundle change re-mints both SVIDs, as the Workload API does, so
	// they are signed by the active authority.
	renew := f.x509 == nil || b.Generation != f.gen
	mintX := renew || pastHalf(now, f.x509.Certificates[0].NotBefore, f.x509.Certificates[0].NotAfter)
	mintJ := renew || !now.Before(f.jwtHalf)
	if !mintX && !mintJ {
		return nil
	}
	ctx = context.WithValue(ctx, deliveryKey{}, DeliveryFiles)
	x, j, jwtHalf := f.x509, f.jwt, f.jwtHalf
	if mintX {
		key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		if err != nil {
			return fmt.Errorf("generate svid key: %w", err)
		}
		s, err := f.e.issuer.MintX509SVID(ctx, ca.X509Params{ID: f.id, PublicKey: key.Public()})
		if err != nil {
			return fmt.Errorf("issue x509-svid: %w", err)
		}
		if len(s.Certificates) == 0 {
			return errors.New("issue x509-svid: no certificate")
		}
		x = &x509svid.SVID{ID: s.ID, Certificates: s.Certificates, PrivateKey: key}
	}
	if mintJ {
		s, err := f.e.issuer.MintJWTSVID(ctx, ca.JWTParams{ID: f.id, Audience: f.e.audience, Instance: f.instance})
		if err != nil {
			return fmt.Errorf("issue jwt-svid: %w", err)
		}
		j, jwtHalf = s, now.Add(s.Expiry.Sub(now)/2)
	}
	certPEM, keyPEM, err := x.Marshal()
	if err != nil {
		return fmt.Errorf("encode x509-svid: %w", err)
	}
	x509Bundle, err := b.X509.Marshal()
	if err != nil {
		return fmt.Errorf("encode x509 bundle: %w", err)
	}
	jwtBundle, err := b.JWT.Marshal()
	if err != nil {
		return fmt.Errorf("encode jwt bundle: %w", err)
	}
	data := map[string][]byte{
		SVIDFile: certPEM, SVIDKeyFile: keyPEM, SVIDBundleFile: x509Bundle,
		JWTSVIDFile: []byte(j.Token), JWTBundleFile: jwtBundle,
	}
	if err := f.switchTo(data); err != nil {
		return err
	}
	f.x509, f.jwt, f.jwtHalf, f.gen = x, j, jwtHalf, b.Generation
	f.e.log.Debug("svid files written", "instance", f.instance, "spiffe_id", f.id.String(), "generation", f.cur,
		"serial", x.Certificates[0].SerialNumber.Text(16), "not_after", x.Certificates[0].NotAfter, "jwt_expiry", j.Expiry)
	return nil
}

// pastHalf reports whether now is at or past the middle of [from, to].
func pastHalf(now, from, to time.Time) bool {
	return !now.Before(from.Add(to.Sub(from) / 2))
}

// switchTo writes data as a new generation, points DataLink at it with one
// rename and removes the generation before the previous one. Links of the
// top-level names are made with the first generation.
func (f *fileSet) switchTo(data map[string][]byte) error {
	f.seq++
	gen := fmt.Sprintf("..gen-%d", f.seq)
	if err := f.writeGeneration(gen, data); err != nil {
		_ = f.root.RemoveAll(gen)
		return err
	}
	if err := f.root.Remove(dataLinkTmp); err != nil && !errors.Is(err, fs.ErrNotExist) {
		_ = f.root.RemoveAll(gen)
		return fmt.Errorf("remove stale %s: %w", dataLinkTmp, err)
	}
	if err := f.root.Symlink(gen, dataLinkTmp); err != nil {
		_ = f.root.RemoveAll(gen)
		return fmt.Errorf("link %s: %w", gen, err)
	}
	if err := f.root.Rename(dataLinkTmp, DataLink); err != nil {
		_ = f.root.Remove(dataLinkTmp)
		_ = f.root.RemoveAll(gen)
		return fmt.Errorf("switch %s to %s: %w", DataLink, gen, err)
	}
	if f.cur == "" {
		for _, s := range fileSpecs {
			if err := f.root.Symlink(path.Join(DataLink, s.name), s.name); err != nil {
				return fmt.Errorf("link %s: %w", s.name, err)
			}
		}
	}
	if f.prev != "" {
		if err := f.root.RemoveAll(f.prev); err != nil {
			f.e.log.Warn("could not remove an old svid generation", "instance", f.instance, "generation", f.prev, "err", err)
		}
	}
	f.prev, f.cur = f.cur, gen
	return nil
}

// writeGeneration creates the generation directory gen with every file.
func (f *fileSet) writeGeneration(gen string, data map[string][]byte) error {
	if err := f.root.Mkdir(gen, 0o755); err != nil {
		return fmt.Errorf("create generation: %w", err)
	}
	if err := f.root.Chmod(gen, 0o755); err != nil {
		return fmt.Errorf("create generation: %w", err)
	}
	for _, s := range fileSpecs {
		if err := f.writeFile(path.Join(gen, s.name), data[s.name], s.secret); err != nil {
			return fmt.Errorf("write %s: %w", s.name, err)
		}
	}
	return nil
}

// writeFile creates name with b: a secret 0400 and owned by the
// function's uid and gid before any byte is written, anything else 0444.
func (f *fileSet) writeFile(name string, b []byte, secret bool) (err error) {
	mode := os.FileMode(0o444)
	if secret {
		mode = 0o400
	}
	fh, err := f.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return err
	}
	defer func() {
		if cerr := fh.Close(); err == nil {
			err = cerr
		}
	}()
	if secret {
		if err := fh.Chown(f.e.uid, f.e.gid); err != nil {
			return err
		}
	}
	// OpenFile's mode is subject to the umask.
	if err := fh.Chmod(mode); err != nil {
		return err
	}
	_, err = fh.Write(b)
	return err
}

// prepareFilesDir creates dir afresh (0700): SVID files of an earlier run
// belong to instances that are gone.
func prepareFilesDir(dir string) error {
	if err := os.RemoveAll(dir); err != nil {
		return err
	}
	return os.Mkdir(dir, 0o700)
}
