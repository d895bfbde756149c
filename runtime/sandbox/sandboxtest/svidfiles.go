package sandboxtest

import (
	"context"
	"crypto/x509"
	"errors"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/jwtbundle"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/svid/jwtsvid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/zfaas/zfaas/api"
	"github.com/zfaas/zfaas/identity"
	"github.com/zfaas/zfaas/runtime/svid"
	"github.com/zfaas/zfaas/runtime/worker"
)

// testSVIDFiles runs a function on a worker of its own with file
// delivery: the function reads its SVID files where ZFAAS_SVID_DIR says,
// the files are its function's identity and verify against the bundles
// beside them, it cannot write there, and after the clock passes half of
// the X.509-SVID's life the same running instance reads a new SVID.
func (s *suite) testSVIDFiles(t *testing.T) {
	if !slices.Contains(s.tg.OptIn, SVIDFiles) {
		t.Skipf("driver does not opt in to %q", SVIDFiles)
	}
	if s.noID != "" {
		t.Skip(s.noID)
	}
	// The identity's clock starts 31 minutes behind and is moved to the
	// real time later, past half of the SVIDs' lifetimes (1 h); the CA and
	// the writer both follow it, and every SVID is valid at the real time,
	// which go-spiffe's JWT validation uses.
	var offset atomic.Int64
	offset.Store(int64(-31 * time.Minute))
	clock := func() time.Time { return time.Now().Add(time.Duration(offset.Load())) }
	dir, err := os.MkdirTemp("", "zsvidf")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	p, err := svid.Start(context.Background(), svid.Config{
		Dir: dir, TrustDomain: trustDomain, UID: 65534, GID: 65534, Clock: clock,
		X509TTL: time.Hour, JWTTTL: time.Hour,
		// Only the Refresh below wakes the writer.
		RefreshInterval: time.Hour,
	})
	if err != nil {
		t.Fatalf("svid.Start: %v", err)
	}
	defer p.Close()
	cfg := s.cfg
	cfg.DataDir, cfg.Identity, cfg.IdentityDelivery = t.TempDir(), p, worker.DeliverFiles
	w, err := worker.New(cfg)
	if err != nil {
		t.Fatalf("worker.New: %v", err)
	}
	closed := false
	closeWorker := func() {
		if closed {
			return
		}
		closed = true
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := w.Close(ctx); err != nil {
			t.Errorf("worker Close: %v", err)
		}
	}
	defer closeWorker()

	v := s.fn
	v.Function = filesFn
	want, err := identity.FunctionID(s.td, v.Tenant, v.Function)
	if err != nil {
		t.Fatal(err)
	}
	read := func() (*api.InvocationResult, result) {
		t.Helper()
		res, r, err := s.invokeOn(t, w, v, event{Action: "svidfiles"})
		if err != nil {
			var out string
			if res != nil {
				out = s.logs.of(res.InstanceID)
			}
			t.Fatalf("invoke %s svidfiles: %v\ninstance output:\n%s", filesFn, err, out)
		}
		if r.Err != "" || r.Data != want.String() {
			t.Fatalf("instance read SVID %q from its files (err %q), want %q\ninstance output:\n%s",
				r.Data, r.Err, want, s.logs.of(res.InstanceID))
		}
		return res, r
	}
	res, r := read()
	st := s.instance(t, res)
	first := s.checkSVIDFiles(t, r)

	// The mount is read-only.
	_, rw, err := s.invokeOn(t, w, v, event{Action: "write", Path: path.Join(worker.SVIDMountDir, "planted"), Data: "x"})
	if err != nil {
		t.Fatalf("invoke %s write: %v", filesFn, err)
	}
	if rw.Err == "" {
		t.Errorf("instance wrote into %s", worker.SVIDMountDir)
	}

	// Past half of the SVIDs' life: the writer switches to a new
	// generation, which the running instance sees.
	hostDir := filepath.Join(dir, "files", res.InstanceID)
	gen, err := os.Readlink(filepath.Join(hostDir, svid.DataLink))
	if err != nil {
		t.Fatalf("host side of the instance's svid files: %v", err)
	}
	offset.Store(0)
	p.Refresh()
	deadline := time.Now().Add(10 * time.Second)
	for {
		cur, err := os.Readlink(filepath.Join(hostDir, svid.DataLink))
		if err == nil && cur != gen {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("svid files not rotated 10 s after the clock passed half life (%s -> %s, %v)", gen, cur, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
	res2, r2 := read()
	if res2.InstanceID != res.InstanceID {
		t.Fatalf("rotation read on instance %s, want the running %s", res2.InstanceID, res.InstanceID)
	}
	second := s.checkSVIDFiles(t, r2)
	if second.SerialNumber.Cmp(first.SerialNumber) == 0 {
		t.Errorf("instance still reads serial %x after the rotation", first.SerialNumber)
	}
	if r2.Files[svid.JWTSVIDFile] == r.Files[svid.JWTSVIDFile] {
		t.Error("instance still reads the first JWT-SVID after the rotation")
	}

	closeWorker()
	s.assertGone(t, st)
	if _, err := os.Lstat(hostDir); !errors.Is(err, fs.ErrNotExist) {
		t.Errorf("svid files of %s left after the worker closed (stat err %v)", res.InstanceID, err)
	}
}

// checkSVIDFiles checks what an instance read: an X.509-SVID for filesFn
// with its key, chaining to svid_bundle.pem, and a JWT-SVID for the
// gateway that verifies against jwt_bundle.json. It returns the leaf.
func (s *suite) checkSVIDFiles(t *testing.T, r result) *x509.Certificate {
	t.Helper()
	want, _ := identity.FunctionID(s.td, tenant, filesFn)
	sv, err := x509svid.Parse([]byte(r.Files[svid.SVIDFile]), []byte(r.Files[svid.SVIDKeyFile]))
	if err != nil {
		t.Fatalf("the instance's %s and %s: %v", svid.SVIDFile, svid.SVIDKeyFile, err)
	}
	if sv.ID != want {
		t.Errorf("%s names %s, want %s", svid.SVIDFile, sv.ID, want)
	}
	b, err := x509bundle.Parse(s.td, []byte(r.Files[svid.SVIDBundleFile]))
	if err != nil {
		t.Fatalf("the instance's %s: %v", svid.SVIDBundleFile, err)
	}
	if _, _, err := x509svid.Verify(sv.Certificates, b); err != nil {
		t.Errorf("%s against %s: %v", svid.SVIDFile, svid.SVIDBundleFile, err)
	}
	jb, err := jwtbundle.Parse(s.td, []byte(r.Files[svid.JWTBundleFile]))
	if err != nil {
		t.Fatalf("the instance's %s: %v", svid.JWTBundleFile, err)
	}
	j, err := jwtsvid.ParseAndValidate(r.Files[svid.JWTSVIDFile], jb, []string{"spiffe://" + trustDomain + "/gateway/local"})
	if err != nil {
		t.Errorf("%s against %s: %v", svid.JWTSVIDFile, svid.JWTBundleFile, err)
	} else if j.ID != want {
		t.Errorf("%s names %s, want %s", svid.JWTSVIDFile, j.ID, want)
	}
	return sv.Certificates[0]
}
