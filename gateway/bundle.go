package gateway

import "net/http"

// TrustBundler serves the trust domain's bundle: the SPIFFE bundle as JWKS
// and the X.509 authorities as PEM. Bundles are public.
type TrustBundler interface {
	TrustBundle() (jwks, pemCerts []byte, err error)
}

// handleBundle serves GET /v1/identity/bundle[?format=pem]: the SPIFFE trust
// bundle, without authentication (it holds only public keys), so clients
// can bootstrap trust in the platform's SVIDs.
func (g *Gateway) handleBundle(w http.ResponseWriter, r *http.Request) {
	jwks, pemCerts, err := g.cfg.Bundle.TrustBundle()
	if err != nil {
		g.writeError(w, r, err)
		return
	}
	switch r.URL.Query().Get("format") {
	case "", "jwks":
		w.Header().Set("Content-Type", "application/json")
		_, _ = w.Write(jwks)
	case "pem":
		w.Header().Set("Content-Type", "application/x-pem-file")
		_, _ = w.Write(pemCerts)
	default:
		g.writeError(w, r, errf(http.StatusBadRequest, CodeBadRequest, "format must be jwks or pem"))
	}
}
