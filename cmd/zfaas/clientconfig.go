package main

import (
	"bytes"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"time"

	"github.com/emmansun/gmsm/smx509"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"gopkg.in/yaml.v3"

	"github.com/zfaas/zfaas/crypto/dualstack"
	"github.com/zfaas/zfaas/crypto/mtls"
	"github.com/zfaas/zfaas/crypto/tlcp"
)

// clientConfig is what the CLI needs to reach the platform. `zfaas up`
// writes it (0600) so the CLI on the same machine works without flags.
type clientConfig struct {
	// Gateway is the gateway's URL, e.g. https://127.0.0.1:8443.
	Gateway string `yaml:"gateway"`
	// GatewayID is the SPIFFE ID the gateway's certificate must carry.
	GatewayID string `yaml:"gateway_id,omitempty"`
	// Cert and Key are the user's X.509-SVID (PEM chain, PEM key 0600):
	// `zfaas up` writes and refreshes them for the local administrator,
	// `zfaas identity issue-user` for others.
	Cert string `yaml:"cert,omitempty"`
	Key  string `yaml:"key,omitempty"`
	// Bundle is the trust domain's X.509 bundle (PEM) that verifies the
	// gateway.
	Bundle string `yaml:"bundle,omitempty"`
	// GMSignCert, GMSignKey, GMEncCert, GMEncKey and GMBundle are the
	// user's SM2 signing and encryption certificates (PEM, keys PKCS#8
	// 0600) and the SM2 authorities, for TLCP (--tls gm or auto) with a
	// platform of the gm suite.
	GMSignCert string `yaml:"gm_sign_cert,omitempty"`
	GMSignKey  string `yaml:"gm_sign_key,omitempty"`
	GMEncCert  string `yaml:"gm_enc_cert,omitempty"`
	GMEncKey   string `yaml:"gm_enc_key,omitempty"`
	GMBundle   string `yaml:"gm_bundle,omitempty"`
}

// withGMFiles names the SM2 files in dir.
func (c *clientConfig) withGMFiles(dir string) {
	c.GMSignCert, c.GMSignKey = filepath.Join(dir, "svid-gm-sign.pem"), filepath.Join(dir, "svid-gm-sign-key.pem")
	c.GMEncCert, c.GMEncKey = filepath.Join(dir, "svid-gm-enc.pem"), filepath.Join(dir, "svid-gm-enc-key.pem")
	c.GMBundle = filepath.Join(dir, "bundle-gm.pem")
}

// writeGMFiles writes an SM2 signing and encryption pair and the SM2
// authorities as PEM (keys PKCS#8, 0600), each replaced atomically.
func writeGMFiles(c clientConfig, sign, enc *tlcp.Certificate, roots []*smx509.Certificate) error {
	files := map[string][]byte{}
	for _, f := range []struct {
		cert, key string
		c         *tlcp.Certificate
	}{{c.GMSignCert, c.GMSignKey, sign}, {c.GMEncCert, c.GMEncKey, enc}} {
		var certs []byte
		for _, der := range f.c.Certificate {
			certs = append(certs, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})...)
		}
		key, err := smx509.MarshalPKCS8PrivateKey(f.c.PrivateKey)
		if err != nil {
			return err
		}
		files[f.cert] = certs
		files[f.key] = pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: key})
	}
	var b []byte
	for _, r := range roots {
		b = append(b, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: r.Raw})...)
	}
	files[c.GMBundle] = b
	for path, data := range files {
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, data, 0o600); err != nil {
			return err
		}
		if err := os.Rename(tmp, path); err != nil {
			return err
		}
	}
	return nil
}

// tlcpClientConfig builds the TLCP side of the CLI's client from the GM
// files: it presents the user's SM2 pair and accepts only the gateway's ID.
func (c clientConfig) tlcpClientConfig(gw spiffeid.ID) (*tlcp.Config, error) {
	if c.GMSignCert == "" || c.GMEncCert == "" || c.GMBundle == "" {
		return nil, errors.New("the client config has no SM2 certificates: TLCP needs a platform of the gm suite (zfaas up --suite gm), whose zfaas up writes them")
	}
	load := func(cert, key string) (*tlcp.Certificate, error) {
		cp, err := os.ReadFile(cert)
		if err != nil {
			return nil, err
		}
		kp, err := os.ReadFile(key)
		if err != nil {
			return nil, err
		}
		return tlcp.X509KeyPair(cp, kp)
	}
	sign, err := load(c.GMSignCert, c.GMSignKey)
	if err != nil {
		return nil, fmt.Errorf("load the SM2 signing certificate: %w", err)
	}
	enc, err := load(c.GMEncCert, c.GMEncKey)
	if err != nil {
		return nil, fmt.Errorf("load the SM2 encryption certificate: %w", err)
	}
	roots, err := os.ReadFile(c.GMBundle)
	if err != nil {
		return nil, err
	}
	pool := smx509.NewCertPool()
	if !pool.AppendCertsFromPEM(roots) {
		return nil, fmt.Errorf("%s holds no SM2 certificates", c.GMBundle)
	}
	src := dualstack.TLCPSourceFunc(func() (*tlcp.Certificate, *tlcp.Certificate, error) { return sign, enc, nil })
	return dualstack.TLCPClientConfig(src, pool, gw), nil
}

func clientConfigPath(getenv env) (string, error) {
	if p := getenv("ZFAAS_CLIENT_CONFIG"); p != "" {
		return p, nil
	}
	dir := getenv("XDG_CONFIG_HOME")
	if dir == "" {
		home := getenv("HOME")
		if home == "" {
			return "", errors.New("neither XDG_CONFIG_HOME nor HOME is set")
		}
		dir = filepath.Join(home, ".config")
	}
	return filepath.Join(dir, "zfaas", "config.yaml"), nil
}

func writeClientConfig(path string, getenv env, c clientConfig) (string, error) {
	if path == "" {
		var err error
		if path, err = clientConfigPath(getenv); err != nil {
			return "", err
		}
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return "", err
	}
	raw, err := yaml.Marshal(c)
	if err != nil {
		return "", err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, raw, 0o600); err != nil {
		return "", err
	}
	return path, os.Rename(tmp, path)
}

// readClientConfig returns the config, or a zero one when none exists.
func readClientConfig(getenv env) (clientConfig, error) {
	var c clientConfig
	path, err := clientConfigPath(getenv)
	if err != nil {
		return c, nil
	}
	raw, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return c, nil
	}
	if err != nil {
		return c, err
	}
	dec := yaml.NewDecoder(bytes.NewReader(raw))
	dec.KnownFields(true)
	if err := dec.Decode(&c); err != nil {
		return c, fmt.Errorf("client config %s: %w", path, err)
	}
	return c, nil
}

// writeSVIDFiles writes an X.509-SVID (chain, key 0600) and the trust
// bundle as PEM files, each replaced atomically.
func writeSVIDFiles(certPath, keyPath, bundlePath string, svid *x509svid.SVID, bundle *x509bundle.Bundle) error {
	certs, key, err := svid.Marshal()
	if err != nil {
		return err
	}
	b, err := bundle.Marshal()
	if err != nil {
		return err
	}
	for path, data := range map[string][]byte{certPath: certs, keyPath: key, bundlePath: b} {
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, data, 0o600); err != nil {
			return err
		}
		if err := os.Rename(tmp, path); err != nil {
			return err
		}
	}
	return nil
}

// httpClient builds the CLI's HTTP client. It verifies the gateway by its SPIFFE ID against the trust bundle, presents the user's
// X.509-SVID when the config names one, and sends token (a JWT-SVID) as a
// bearer token when it is not empty.
func (c clientConfig) httpClient(token, mode string) (*http.Client, error) {
	u, err := url.Parse(c.Gateway)
	if err != nil || u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("gateway %q: want https://HOST:PORT (the gateway serves its API over mutual TLS only)", c.Gateway)
	}
	if c.Bundle == "" || c.GatewayID == "" {
		return nil, fmt.Errorf("no trust bundle or gateway ID to verify %s: run `zfaas up` on this machine, or point ZFAAS_CLIENT_CONFIG at the config.yaml that `zfaas identity issue-user` wrote", c.Gateway)
	}
	gw, err := spiffeid.FromString(c.GatewayID)
	if err != nil {
		return nil, fmt.Errorf("gateway_id: %w", err)
	}
	bundle, err := x509bundle.Load(gw.TrustDomain(), c.Bundle)
	if err != nil {
		return nil, fmt.Errorf("load the trust bundle: %w", err)
	}
	var src x509svid.Source
	if c.Cert != "" {
		svid, err := x509svid.Load(c.Cert, c.Key)
		if err != nil {
			return nil, fmt.Errorf("load the CLI's SVID: %w", err)
		}
		src = svid
	}
	tr := &http.Transport{
		Proxy:             http.ProxyFromEnvironment,
		TLSClientConfig:   mtls.ClientConfig(src, bundle, gw),
		ForceAttemptHTTP2: true,
	}
	switch mode {
	case "", "standard":
	case "gm", "auto":
		tc, err := c.tlcpClientConfig(gw)
		if err != nil {
			return nil, err
		}
		d := &dualstack.Dialer{Config: dualstack.Config{Mode: dualstack.Mode(mode), TLS: tr.TLSClientConfig, TLCP: tc}}
		tr.DialTLSContext = d.DialContext
	default:
		return nil, fmt.Errorf("--tls %q: want standard, gm or auto", mode)
	}
	var rt http.RoundTripper = tr
	if token != "" {
		rt = bearerTransport{token: token, next: rt}
	}
	return &http.Client{Timeout: 16 * time.Minute, Transport: rt}, nil
}

// bearerTransport adds "Authorization: Bearer TOKEN" to every request.
type bearerTransport struct {
	token string
	next  http.RoundTripper
}

func (b bearerTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+b.token)
	return b.next.RoundTrip(r)
}
