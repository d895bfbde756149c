package main

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// svidDir is an X.509-SVID and trust bundle kept as files in one directory
// (svid.pem, svid-key.pem, bundle.pem: what `zfaas identity issue-policyd`
// writes). It implements x509svid.Source and x509bundle.Source and rereads
// the files when they change, so replacing them rotates the SVID without a
// restart.
type svidDir struct {
	dir string
	now func() time.Time

	mu      sync.Mutex
	checked time.Time
	stamp   string
	svid    *x509svid.SVID
	bundle  *x509bundle.Bundle
}

// svidRecheck bounds how often the files are stat'ed.
const svidRecheck = 5 * time.Second

// openSVIDDir loads the files once, so a broken directory is reported at
// start.
func openSVIDDir(dir string) (*svidDir, error) {
	d := &svidDir{dir: dir, now: time.Now}
	if _, _, err := d.load(); err != nil {
		return nil, err
	}
	return d, nil
}

func (d *svidDir) paths() (cert, key, bundle string) {
	return filepath.Join(d.dir, "svid.pem"), filepath.Join(d.dir, "svid-key.pem"), filepath.Join(d.dir, "bundle.pem")
}

// load returns the current SVID and bundle, rereading the files when their
// sizes or modification times changed.
func (d *svidDir) load() (*x509svid.SVID, *x509bundle.Bundle, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	now := d.now()
	if d.svid != nil && now.Sub(d.checked) < svidRecheck {
		return d.svid, d.bundle, nil
	}
	cert, key, bundle := d.paths()
	var stamp string
	for _, p := range []string{cert, key, bundle} {
		fi, err := os.Stat(p)
		if err != nil {
			return d.fallback(err)
		}
		stamp += fmt.Sprintf("%d/%d;", fi.Size(), fi.ModTime().UnixNano())
	}
	d.checked = now
	if stamp == d.stamp && d.svid != nil {
		return d.svid, d.bundle, nil
	}
	s, err := x509svid.Load(cert, key)
	if err != nil {
		return d.fallback(fmt.Errorf("load %s: %w", cert, err))
	}
	b, err := x509bundle.Load(s.ID.TrustDomain(), bundle)
	if err != nil {
		return d.fallback(fmt.Errorf("load %s: %w", bundle, err))
	}
	d.svid, d.bundle, d.stamp = s, b, stamp
	return s, b, nil
}

// fallback keeps serving the last good SVID while files are being replaced.
func (d *svidDir) fallback(err error) (*x509svid.SVID, *x509bundle.Bundle, error) {
	if d.svid != nil {
		return d.svid, d.bundle, nil
	}
	return nil, nil, err
}

// GetX509SVID implements x509svid.Source.
func (d *svidDir) GetX509SVID() (*x509svid.SVID, error) {
	s, _, err := d.load()
	return s, err
}

// GetX509BundleForTrustDomain implements x509bundle.Source.
func (d *svidDir) GetX509BundleForTrustDomain(td spiffeid.TrustDomain) (*x509bundle.Bundle, error) {
	_, b, err := d.load()
	if err != nil {
		return nil, err
	}
	if b.TrustDomain() != td {
		return nil, errors.New("no bundle for trust domain " + td.String())
	}
	return b, nil
}
