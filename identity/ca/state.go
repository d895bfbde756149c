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
		c.insert(a)
	}
	if act := c.activeLocked(c.now()); act != nil {
		c.active = serialHex(act.cert)
	}
	return nil
}

func (c *CA) save() error {
	st := stateJSON{Version: 1}
	for _, a := range c.auths {
		st.Authorities = append(st.Authorities, authorityJSON{
			Cert: a.cert.Raw, X509Key: a.x509KeyName, JWTKey: a.jwtKeyName, KeyID: a.kid, ActivateAt: a.activateAt.UTC(),
		})
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
