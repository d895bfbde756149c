package svid

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"encoding/pem"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/zfaas/zfaas/identity/ca"
	"github.com/zfaas/zfaas/identity/workloadapi"
	"github.com/zfaas/zfaas/runtime/worker"
)

const filesTD = "files.test"

// fileOwner is the uid/gid the secret files must get: a function's
// (nobody) when the test runs as root, the test's own otherwise.
func fileOwner() (int, int) {
	if os.Geteuid() == 0 {
		return 65534, 65534
	}
	return os.Getuid(), os.Getgid()
}

// startFilesProvider starts a Provider with the fake clock, X.509-SVIDs of
// 10 minutes, JWT-SVIDs of 2 minutes, a CA of 1 hour and a refresh interval
// no test waits for.
func startFilesProvider(t *testing.T, clk *fakeClock, cfg Config) *Provider {
	t.Helper()
	if _, err := workloadapi.NewCgroupAttestor(); err != nil {
		t.Skipf("no cgroup v2 hierarchy: %v", err)
	}
	uid, gid := fileOwner()
	cfg.Dir, cfg.TrustDomain, cfg.UID, cfg.GID, cfg.Clock = t.TempDir(), filesTD, uid, gid, clk.Now
	cfg.X509TTL, cfg.JWTTTL, cfg.CATTL = 10*time.Minute, 2*time.Minute, time.Hour
	if cfg.RefreshInterval == 0 {
		cfg.RefreshInterval = time.Hour
	}
	p, err := Start(context.Background(), cfg)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { p.Close() })
	return p
}

func filesSpec(instance string) worker.EndpointSpec {
	return worker.EndpointSpec{InstanceID: instance, Tenant: "acme", Function: "fn-a"}
}

// svidFiles is one read of an SVID directory through its top-level names.
type svidFiles struct {
	gen    string // where DataLink pointed before and after the read
	svid   *x509svid.SVID
	x509   *x509bundle.Bundle
	jwt    *jwtbundle.Bundle
	token  string
	rawKey []byte
}

// readFiles reads dir as a function would and checks what every
// generation must satisfy: the names are relative links into DataLink,
// the key belongs to the certificate, is PKCS#8 P-256, the bundles parse.
func readFiles(t *testing.T, dir string) svidFiles {
	t.Helper()
	td := spiffeid.RequireTrustDomainFromString(filesTD)
	gen, err := os.Readlink(filepath.Join(dir, DataLink))
	if err != nil {
		t.Fatalf("%s: %v", DataLink, err)
	}
	if !strings.HasPrefix(gen, "..") || strings.Contains(gen, "/") {
		t.Fatalf("%s -> %q, want a hidden sibling directory", DataLink, gen)
	}
	for _, s := range fileSpecs {
		target, err := os.Readlink(filepath.Join(dir, s.name))
		if want := DataLink + "/" + s.name; err != nil || target != want {
			t.Fatalf("%s -> %q (%v), want %q", s.name, target, err, want)
		}
	}
	var r svidFiles
	r.gen = gen
	if r.svid, err = x509svid.Load(filepath.Join(dir, SVIDFile), filepath.Join(dir, SVIDKeyFile)); err != nil {
		t.Fatalf("load svid and key: %v", err)
	}
	if r.rawKey, err = os.ReadFile(filepath.Join(dir, SVIDKeyFile)); err != nil {
		t.Fatal(err)
	}
	blk, _ := pem.Decode(r.rawKey)
	if blk == nil || blk.Type != "PRIVATE KEY" {
		t.Fatalf("%s: not a PKCS#8 PEM block", SVIDKeyFile)
	}
	if k, ok := r.svid.PrivateKey.(*ecdsa.PrivateKey); !ok || k.Curve != elliptic.P256() {
		t.Fatalf("key is %T, want a P-256 ECDSA key", r.svid.PrivateKey)
	}
	if r.x509, err = x509bundle.Load(td, filepath.Join(dir, SVIDBundleFile)); err != nil {
		t.Fatalf("load %s: %v", SVIDBundleFile, err)
	}
	if r.jwt, err = jwtbundle.Load(td, filepath.Join(dir, JWTBundleFile)); err != nil {
		t.Fatalf("load %s: %v", JWTBundleFile, err)
	}
	tok, err := os.ReadFile(filepath.Join(dir, JWTSVIDFile))
	if err != nil {
		t.Fatal(err)
	}
	r.token = string(tok)
	if again, _ := os.Readlink(filepath.Join(dir, DataLink)); again != gen {
		t.Fatalf("%s switched during the read (%s, %s)", DataLink, gen, again)
	}
	return r
}

// TestFilesContents: the directory holds the instance's X.509-SVID for its
// function's ID that chains to svid_bundle.pem, its key, a JWT-SVID for
// the gateway that verifies against jwt_bundle.json (go-spiffe), with
// secrets 0400 owned by the function and nothing group or world writable.
func TestFilesContents(t *testing.T) {
	clk := &fakeClock{t: time.Now()}
	p := startFilesProvider(t, clk, Config{})
	dir, closeFn, err := p.Files(context.Background(), filesSpec("i-contents"))
	if err != nil {
		t.Fatal(err)
	}
	defer closeFn()
	if want := filepath.Join(p.filesDir, "i-contents"); dir != want {
		t.Errorf("dir %s, want %s", dir, want)
	}
	r := readFiles(t, dir)
	const want = "spiffe://files.test/ns/acme/fn/fn-a"
	if r.svid.ID.String() != want {
		t.Errorf("x509-svid id %s, want %s", r.svid.ID, want)
	}
	id, _, err := x509svid.Verify(r.svid.Certificates, r.x509, x509svid.WithTime(clk.Now()))
	if err != nil || id.String() != want {
		t.Errorf("chain against %s: id %s, err %v", SVIDBundleFile, id, err)
	}
	if len(r.x509.X509Authorities()) != 1 || !r.x509.Equal(p.ca.Bundles().X509) {
		t.Errorf("%s holds %d authorities, not the CA's bundle", SVIDBundleFile, len(r.x509.X509Authorities()))
	}
	if strings.HasSuffix(r.token, "\n") {
		t.Errorf("%s ends in a newline", JWTSVIDFile)
	}
	jwt, err := jwtsvid.ParseAndValidate(r.token, r.jwt, []string{"spiffe://files.test/gateway/local"})
	if err != nil {
		t.Fatalf("jwt-svid against %s: %v", JWTBundleFile, err)
	}
	if jwt.ID.String() != want || !slices.Equal(jwt.Audience, []string{"spiffe://files.test/gateway/local"}) {
		t.Errorf("jwt-svid for %s, audience %v", jwt.ID, jwt.Audience)
	}
	if got := jwt.Claims[ca.InstanceClaim]; got != "i-contents" {
		t.Errorf("jwt-svid %s claim %v, want i-contents", ca.InstanceClaim, got)
	}

	uid, gid := fileOwner()
	gen := filepath.Join(dir, r.gen)
	for _, c := range []struct {
		path     string
		mode     fs.FileMode
		uid, gid int
	}{
		{dir, fs.ModeDir | 0o755, os.Geteuid(), os.Getegid()},
		{gen, fs.ModeDir | 0o755, os.Geteuid(), os.Getegid()},
		{filepath.Join(gen, SVIDFile), 0o444, os.Geteuid(), os.Getegid()},
		{filepath.Join(gen, SVIDKeyFile), 0o400, uid, gid},
		{filepath.Join(gen, SVIDBundleFile), 0o444, os.Geteuid(), os.Getegid()},
		{filepath.Join(gen, JWTSVIDFile), 0o400, uid, gid},
		{filepath.Join(gen, JWTBundleFile), 0o444, os.Geteuid(), os.Getegid()},
	} {
		fi, err := os.Lstat(c.path)
		if err != nil {
			t.Fatal(err)
		}
		st := fi.Sys().(*syscall.Stat_t)
		if fi.Mode() != c.mode || int(st.Uid) != c.uid || int(st.Gid) != c.gid {
			t.Errorf("%s: mode %v owner %d:%d, want %v %d:%d", c.path, fi.Mode(), st.Uid, st.Gid, c.mode, c.uid, c.gid)
		}
	}
	// Nothing in the directory is group or world writable.
	err = filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		if fi.Mode().Type() != fs.ModeSymlink && fi.Mode().Perm()&0o022 != 0 {
			t.Errorf("%s is group or world writable (%v)", p, fi.Mode())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
}

// TestFilesAudience: configured audiences replace the gateway's.
func TestFilesAudience(t *testing.T) {
	clk := &fakeClock{t: time.Now()}
	aud := []string{"spiffe://files.test/gateway/edge", "https://api.example.com"}
	p := startFilesProvider(t, clk, Config{JWTAudience: aud})
	dir, closeFn, err := p.Files(context.Background(), filesSpec("i-aud"))
	if err != nil {
		t.Fatal(err)
	}
	defer closeFn()
	r := readFiles(t, dir)
	for _, a := range aud {
		if _, err := jwtsvid.ParseAndValidate(r.token, r.jwt, []string{a}); err != nil {
			t.Errorf("audience %s: %v", a, err)
		}
	}
	if _, err := jwtsvid.ParseAndValidate(r.token, r.jwt, []string{"spiffe://files.test/gateway/local"}); err == nil {
		t.Error("the default gateway audience is still in the token")
	}
}

// TestFilesRotation: nothing changes before half life; past half of the
// JWT-SVID's life a new generation carries a new JWT-SVID and the same
// X.509-SVID; past half of the X.509-SVID's a new key and serial; every
// generation is intact, the previous one stays until the next switch.
func TestFilesRotation(t *testing.T) {
	clk := &fakeClock{t: time.Now()}
	p := startFilesProvider(t, clk, Config{})
	ctx := context.Background()
	dir, closeFn, err := p.Files(ctx, filesSpec("i-rot"))
	if err != nil {
		t.Fatal(err)
	}
	defer closeFn()
	first := readFiles(t, dir)

	// JWT 2 min, X.509 10 min: 50 s is before either half.
	clk.Add(50 * time.Second)
	if err := p.checkFiles(ctx); err != nil {
		t.Fatal(err)
	}
	if r := readFiles(t, dir); r.gen != first.gen || r.token != first.token {
		t.Fatalf("rewritten before half life: %s -> %s", first.gen, r.gen)
	}

	clk.Add(11 * time.Second) // 61 s: past the JWT's half
	if err := p.checkFiles(ctx); err != nil {
		t.Fatal(err)
	}
	second := readFiles(t, dir)
	if second.gen == first.gen || second.token == first.token {
		t.Fatalf("JWT-SVID past half life: generation %s, token changed %v", second.gen, second.token != first.token)
	}
	if !second.svid.Certificates[0].Equal(first.svid.Certificates[0]) || string(second.rawKey) != string(first.rawKey) {
		t.Error("the X.509-SVID changed before its half life")
	}
	if _, err := os.Lstat(filepath.Join(dir, first.gen)); err != nil {
		t.Errorf("previous generation %s removed at once: %v", first.gen, err)
	}

	clk.Add(4*time.Minute + 10*time.Second) // 5 min 11 s: past the X.509-SVID's half
	if err := p.checkFiles(ctx); err != nil {
		t.Fatal(err)
	}
	third := readFiles(t, dir)
	oldLeaf, newLeaf := first.svid.Certificates[0], third.svid.Certificates[0]
	if third.gen == second.gen || newLeaf.SerialNumber.Cmp(oldLeaf.SerialNumber) == 0 || string(third.rawKey) == string(first.rawKey) {
		t.Fatalf("X.509-SVID past half life: generation %s, serial %x (was %x)", third.gen, newLeaf.SerialNumber, oldLeaf.SerialNumber)
	}
	if third.svid.ID != first.svid.ID {
		t.Errorf("id changed: %s -> %s", first.svid.ID, third.svid.ID)
	}
	if _, _, err := x509svid.Verify(third.svid.Certificates, third.x509, x509svid.WithTime(clk.Now())); err != nil {
		t.Errorf("rotated chain: %v", err)
	}
	if !newLeaf.NotBefore.After(oldLeaf.NotBefore) {
		t.Errorf("rotated leaf not before %v, the old one's %v", newLeaf.NotBefore, oldLeaf.NotBefore)
	}
	// Exactly the current and the previous generation remain.
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	var gens []string
	for _, e := range ents {
		if e.IsDir() {
			gens = append(gens, e.Name())
		}
	}
	slices.Sort(gens)
	if want := []string{second.gen, third.gen}; !slices.Equal(gens, want) {
		t.Errorf("generation dirs %v, want %v", gens, want)
	}
}

// TestFilesRotateInBackground: Refresh wakes the writer, which rotates by
// the injected clock without a direct call.
func TestFilesRotateInBackground(t *testing.T) {
	clk := &fakeClock{t: time.Now()}
	p := startFilesProvider(t, clk, Config{})
	dir, closeFn, err := p.Files(context.Background(), filesSpec("i-bg"))
	if err != nil {
		t.Fatal(err)
	}
	defer closeFn()
	first := readFiles(t, dir)
	clk.Add(6 * time.Minute)
	p.Refresh()
	r := waitGeneration(t, dir, first.gen)
	if r.svid.Certificates[0].SerialNumber.Cmp(first.svid.Certificates[0].SerialNumber) == 0 {
		t.Error("same serial after the background rotation")
	}
}

// waitGeneration waits (bounded) until DataLink leaves gen and returns the
// new files.
func waitGeneration(t *testing.T, dir, gen string) svidFiles {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		if cur, err := os.Readlink(filepath.Join(dir, DataLink)); err == nil && cur != gen {
			return readFiles(t, dir)
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s still points at %s after 10 s", DataLink, gen)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestFilesFollowBundleChange: a CA rotation (a successor authority
// published) reaches the files through Issuer.Changed alone: both bundles
// name the new authority and the SVIDs still verify.
func TestFilesFollowBundleChange(t *testing.T) {
	clk := &fakeClock{t: time.Now()}
	p := startFilesProvider(t, clk, Config{})
	dir, closeFn, err := p.Files(context.Background(), filesSpec("i-bundle"))
	if err != nil {
		t.Fatal(err)
	}
	defer closeFn()
	// CA 1 h: a successor is published at half life. Fresh SVIDs just
	// before it, so that only the bundle change can cause the next
	// generation; the refresh interval is an hour, so only Changed can
	// wake the writer.
	clk.Add(29*time.Minute + 55*time.Second)
	if err := p.checkFiles(context.Background()); err != nil {
		t.Fatal(err)
	}
	first := readFiles(t, dir)
	clk.Add(10 * time.Second)
	if err := p.ca.Rotate(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := len(p.ca.Bundles().X509.X509Authorities()); n != 2 {
		t.Fatalf("authorities after rotation: %d, want 2", n)
	}
	r := waitGeneration(t, dir, first.gen)
	if !r.x509.Equal(p.ca.Bundles().X509) || len(r.x509.X509Authorities()) != 2 {
		t.Errorf("%s has %d authorities, want the CA's 2", SVIDBundleFile, len(r.x509.X509Authorities()))
	}
	if !r.jwt.Equal(p.ca.Bundles().JWT) || len(r.jwt.JWTAuthorities()) != 2 {
		t.Errorf("%s has %d keys, want the CA's 2", JWTBundleFile, len(r.jwt.JWTAuthorities()))
	}
	if _, _, err := x509svid.Verify(r.svid.Certificates, r.x509, x509svid.WithTime(clk.Now())); err != nil {
		t.Errorf("chain after the bundle change: %v", err)
	}
}

// TestFilesClose: closeFn removes the directory (once, however often it is
// called); Close removes what is still open and refuses new sets.
func TestFilesClose(t *testing.T) {
	clk := &fakeClock{t: time.Now()}
	p := startFilesProvider(t, clk, Config{})
	ctx := context.Background()
	dirA, closeA, err := p.Files(ctx, filesSpec("i-a"))
	if err != nil {
		t.Fatal(err)
	}
	dirB, _, err := p.Files(ctx, filesSpec("i-b"))
	if err != nil {
		t.Fatal(err)
	}
	if _, _, err := p.Files(ctx, filesSpec("i-a")); err == nil {
		t.Error("a second set for i-a was accepted")
	}
	if _, err := os.Lstat(dirA); err != nil {
		t.Fatalf("a refused duplicate removed the first set: %v", err)
	}
	closeA()
	closeA()
	if _, err := os.Lstat(dirA); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s after close: %v, want it gone", dirA, err)
	}
	if err := p.checkFiles(ctx); err != nil {
		t.Errorf("check after close: %v", err)
	}
	p.Close()
	if _, err := os.Lstat(dirB); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("%s after Close: %v, want it gone", dirB, err)
	}
	if ents, err := os.ReadDir(p.filesDir); err != nil || len(ents) != 0 {
		t.Errorf("files dir after Close: %v (%v)", ents, err)
	}
	if _, _, err := p.Files(ctx, filesSpec("i-c")); err == nil {
		t.Error("Files after Close succeeded")
	}
}

// TestFilesRefusals: names that cannot be an instance directory or a
// function identity are refused without leaving anything behind.
func TestFilesRefusals(t *testing.T) {
	clk := &fakeClock{t: time.Now()}
	p := startFilesProvider(t, clk, Config{})
	for _, spec := range []worker.EndpointSpec{
		{InstanceID: "../escape", Tenant: "acme", Function: "fn-a"},
		{InstanceID: "", Tenant: "acme", Function: "fn-a"},
		{InstanceID: "i-x", Tenant: "Acme", Function: "fn-a"},
	} {
		if _, _, err := p.Files(context.Background(), spec); err == nil {
			t.Errorf("%+v accepted", spec)
		}
	}
	if ents, err := os.ReadDir(p.filesDir); err != nil || len(ents) != 0 {
		t.Errorf("files dir after refusals: %v (%v)", ents, err)
	}
	if _, err := os.Lstat(filepath.Join(filepath.Dir(p.filesDir), "escape")); err == nil {
		t.Error("../escape was created")
	}
}

// TestFilesAreRecorded: SVIDs written as files reach OnIssue like those
// of the Workload API, marked as file delivery.
func TestFilesAreRecorded(t *testing.T) {
	clk := &fakeClock{t: time.Now()}
	var mu sync.Mutex
	var got []Issued
	p := startFilesProvider(t, clk, Config{OnIssue: func(i Issued) {
		mu.Lock()
		got = append(got, i)
		mu.Unlock()
	}})
	dir, closeFn, err := p.Files(context.Background(), filesSpec("i-audit"))
	if err != nil {
		t.Fatal(err)
	}
	defer closeFn()
	r := readFiles(t, dir)
	mu.Lock()
	defer mu.Unlock()
	const id = "spiffe://files.test/ns/acme/fn/fn-a"
	if len(got) != 2 {
		t.Fatalf("records %+v, want an x509 and a jwt", got)
	}
	x, j := got[0], got[1]
	if x.Type != "x509" || x.ID != id || x.Serial != r.svid.Certificates[0].SerialNumber.Text(16) || x.Delivery != DeliveryFiles {
		t.Errorf("x509 record %+v", x)
	}
	if j.Type != "jwt" || j.ID != id || !slices.Equal(j.Audience, []string{"spiffe://files.test/gateway/local"}) || j.Delivery != DeliveryFiles {
		t.Errorf("jwt record %+v", j)
	}
}
