package ca

import (
	"bytes"
	"context"
	"crypto"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"time"

	"github.com/emmansun/gmsm/smx509"
)

const stateFile = "ca-state.json"

type stateJSON struct {
	Version     int             `json:"version"`
	Authorities []authorityJSON `json:"authorities"`
}

type authorityJSON struct {
	Cert       []byte    `json:"cert"` // DER
	X509Key    string    `json:"x509_key"`
	JWTKey     string    `json:"jwt_key"`
	KeyID      string    `json:"kid"`
	ActivateAt time.Time `json:"activate_at"`
	// The SM2 partner (gm suite). Absent in state written by a standard CA
	// and by versions before the gm suite, which still load.
	GMCert []byte `json:"gm_cert,omitempty"` // DER
	GMKey  string `json:"gm_key,omitempty"`
}

// load reads ca-state.json if present. Expired authorities are kept for
// Rotate to drop (and delete their keys).
func (c *CA) load(ctx context.Context) error {
	f, err := c.dir.Open(stateFile)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("open ca state: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, 1<<20))
	if err != nil {
		return fmt.Errorf("read ca state: %w", err)
	}
	var st stateJSON
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&st); err != nil {
		return fmt.Errorf("parse ca state: %w", err)
	}
	if st.Version != 1 {
		return fmt.Errorf("ca state: unsupported version %d", st.Version)
	}
	for _, aj := range st.Authorities {
		cert, err := x509.ParseCertificate(aj.Cert)
		if err != nil {
			return fmt.Errorf("ca state: parse certificate: %w", err)
		}
		a := &authority{cert: cert, x509KeyName: aj.X509Key, jwtKeyName: aj.JWTKey, kid: aj.KeyID, activateAt: aj.ActivateAt}
		if a.x509Key, err = c.keys.LoadKey(ctx, aj.X509Key); err != nil {
			return fmt.Errorf("ca state: %w", err)
		}
		if a.jwtKey, err = c.keys.LoadKey(ctx, aj.JWTKey); err != nil {
			return fmt.Errorf("ca state: %w", err)
		}
		if !publicKeysEqual(a.x509Key.Public(), cert.PublicKey) {
			return fmt.Errorf("ca state: key %s does not match certificate %s", aj.X509Key, serialHex(cert))
		}
		if kid, err := keyID(a.jwtKey.Public()); err != nil || kid != aj.KeyID {
			return fmt.Errorf("ca state: jwt key %s does not match kid %q", aj.JWTKey, aj.KeyID)
		}
		if !cert.IsCA || cert.CheckSignatureFrom(cert) != nil {
			return fmt.Errorf("ca state: certificate %s is not a self-signed ca", serialHex(cert))
		}
		if len(cert.URIs) != 1 || cert.URIs[0].String() != c.td.ID().String() {
			return fmt.Errorf("%w: the authorities in %s belong to another trust domain (%v), not %s; a trust domain cannot change in place: use a new data directory",
				ErrTrustDomain, c.cfg.Dir, cert.URIs, c.td)
		}
		if err := c.loadGM(ctx, a, aj); err != nil {
			return err
		}
		c.insert(a)
	}
	if act := c.activeLocked(c.now()); act != nil {
		c.active = serialHex(act.cert)
	}
	return nil
}

// loadGM restores a's SM2 partner, if the state has one. It is loaded (and
// kept in the state) whatever the suite, so turning gm off and on again
// keeps the published SM2 authorities.
func (c *CA) loadGM(ctx context.Context, a *authority, aj authorityJSON) error {
	if len(aj.GMCert) == 0 && aj.GMKey == "" {
		return nil
	}
	if len(aj.GMCert) == 0 || aj.GMKey == "" {
		return fmt.Errorf("%w (authority %s)", errGMState, serialHex(a.cert))
	}
	cert, err := smx509.ParseCertificate(aj.GMCert)
	if err != nil {
		return fmt.Errorf("ca state: parse sm2 certificate: %w", err)
	}
	if err := checkGMAuthority(cert, c.td); err != nil {
		return err
	}
	key, err := c.keys.LoadKey(ctx, aj.GMKey)
	if err != nil {
		return fmt.Errorf("ca state: %w", err)
	}
	if !publicKeysEqual(key.Public(), cert.PublicKey) {
		return fmt.Errorf("ca state: key %s does not match sm2 certificate %s", aj.GMKey, cert.SerialNumber.Text(16))
	}
	a.gmCert, a.gmKey, a.gmKeyName = cert, key, aj.GMKey
	return nil
}

func (c *CA) save() error {
	st := stateJSON{Version: 1}
	for _, a := range c.auths {
		aj := authorityJSON{
			Cert: a.cert.Raw, X509Key: a.x509KeyName, JWTKey: a.jwtKeyName, KeyID: a.kid, ActivateAt: a.activateAt.UTC(),
		}
		if a.gmCert != nil {
			aj.GMCert, aj.GMKey = a.gmCert.Raw, a.gmKeyName
		}
		st.Authorities = append(st.Authorities, aj)
	}
	data, err := json.MarshalIndent(st, "", "  ")
	if err != nil {
		return fmt.Errorf("encode ca state: %w", err)
	}
	if err := writeFileAtomic(c.dir, stateFile, data, false); err != nil {
		return fmt.Errorf("write ca state: %w", err)
	}
	return nil
}

func publicKeysEqual(a, b crypto.PublicKey) bool {
	ka, ok := a.(interface{ Equal(x crypto.PublicKey) bool })
	return ok && ka.Equal(b)
}
