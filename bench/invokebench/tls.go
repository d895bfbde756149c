package main

import (
	"bytes"
	"crypto/tls"
	"fmt"
	"os"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
	"gopkg.in/yaml.v3"

	"github.com/zfaas/zfaas/crypto/mtls"
)

// gatewayTLS is the mutual-TLS configuration of every gateway client: the
// administrator's X.509-SVID, verifying the gateway's SPIFFE ID.
var gatewayTLS *tls.Config

// loadClientTLS reads the client config `zfaas up` wrote (see
// docs/cli.md) and builds the gateway's client TLS configuration from it.
func loadClientTLS(path string) (*tls.Config, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var cc struct {
		Gateway   string `yaml:"gateway"`
		GatewayID string `yaml:"gateway_id"`
		Cert      string `yaml:"cert"`
		Key       string `yaml:"key"`
		Bundle    string `yaml:"bundle"`
	}
	if err := yaml.NewDecoder(bytes.NewReader(raw)).Decode(&cc); err != nil {
		return nil, fmt.Errorf("client config %s: %w", path, err)
	}
	gw, err := spiffeid.FromString(cc.GatewayID)
	if err != nil {
		return nil, fmt.Errorf("client config %s: gateway_id: %w", path, err)
	}
	svid, err := x509svid.Load(cc.Cert, cc.Key)
	if err != nil {
		return nil, err
	}
	bundle, err := x509bundle.Load(gw.TrustDomain(), cc.Bundle)
	if err != nil {
		return nil, err
	}
	return mtls.ClientConfig(svid, bundle, gw), nil
}
