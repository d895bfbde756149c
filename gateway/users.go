package gateway

import (
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"io"
	"net/http"
	"regexp"
	"time"

	"github.com/zfaas/zfaas/audit"
)

// SVIDIssuer signs X.509-SVIDs over the key of a PKCS#10 request for
// people and CI (kind "user": spiffe://TD/user/NAME) and standalone policy
// engines (kind "policyd": spiffe://TD/policyd/NODE).
type SVIDIssuer interface {
	IssueSVID(ctx context.Context, kind, name string, csrDER []byte) ([]*x509.Certificate, error)
}

// issuableKinds maps the path segment of POST /v1/identity/{kind}/{name}
// to the identity kind.
var issuableKinds = map[string]string{"users": "user", "policyd": "policyd"}

var userNameRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,62}$`)

// handleIssue serves POST /v1/identity/users/{name} and
// /v1/identity/policyd/{name}: the body is a PEM "CERTIFICATE REQUEST"; the
// answer is the signed chain as PEM. Only what the policy allows (action
// "identity.issue", admins in the shipped policy) may issue identities.
func (g *Gateway) handleIssue(w http.ResponseWriter, r *http.Request) {
	kind, ok := issuableKinds[r.PathValue("kind")]
	if !ok {
		g.writeError(w, r, errf(http.StatusNotFound, CodeNotFound, "identities are issued for users (/v1/identity/users/NAME) and policy engines (/v1/identity/policyd/NODE)"))
		return
	}
	name := r.PathValue("name")
	if !userNameRE.MatchString(name) {
		g.writeError(w, r, errf(http.StatusBadRequest, CodeBadRequest, "name must be 1-63 lower-case letters, digits, '.', '_' or '-'"))
		return
	}
	c, err := g.authenticateControl(r, "identity.issue", "")
	if err != nil {
		g.writeError(w, r, err)
		return
	}
	raw, err := io.ReadAll(http.MaxBytesReader(w, r.Body, 16<<10))
	if err != nil {
		g.writeError(w, r, errf(http.StatusRequestEntityTooLarge, CodePayloadTooLarge, "certificate request over 16 KiB"))
		return
	}
	block, _ := pem.Decode(raw)
	if block == nil || block.Type != "CERTIFICATE REQUEST" {
		g.writeError(w, r, errf(http.StatusBadRequest, CodeBadRequest, "body must be a PEM CERTIFICATE REQUEST"))
		return
	}
	chain, err := g.cfg.Users.IssueSVID(r.Context(), kind, name, block.Bytes)
	if err != nil {
		var xe x509.UnhandledCriticalExtension
		if errors.As(err, &xe) || errors.Is(err, x509.ErrUnsupportedAlgorithm) {
			g.writeError(w, r, errf(http.StatusBadRequest, CodeBadRequest, "unsupported certificate request"))
			return
		}
		g.log.Info("identity issue refused", "kind", kind, "name", name, "err", err)
		g.writeError(w, r, errf(http.StatusBadRequest, CodeBadRequest, "certificate request refused: it must be a valid, self-signed ECDSA P-256 request"))
		return
	}
	w.Header().Set("Content-Type", "application/x-pem-file")
	w.WriteHeader(http.StatusCreated)
	for _, c := range chain {
		_ = pem.Encode(w, &pem.Block{Type: "CERTIFICATE", Bytes: c.Raw})
	}
	g.log.Info("issued identity", "kind", kind, "name", name)
	if len(chain) > 0 {
		leaf := chain[0]
		var id string
		if len(leaf.URIs) == 1 {
			id = leaf.URIs[0].String()
		}
		g.recordControl(audit.KindSVIDIssued, c, id, "identity.issue", map[string]any{
			"type": "x509", "serial": leaf.SerialNumber.Text(16), "not_after": leaf.NotAfter.UTC().Format(time.RFC3339)})
	}
}
