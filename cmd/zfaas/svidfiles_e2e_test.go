package main

import (
	"bytes"
	"crypto/tls"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"

	"github.com/zfaas/zfaas/api"
	"github.com/zfaas/zfaas/crypto/mtls"
)

// TestFunctionSVIDFiles: with worker.identity_delivery files a function
// finds its SVID files where ZFAAS_SVID_DIR says (and no Workload API
// socket), and calls another function through the gateway with them: the
// JWT-SVID as a bearer token (its audience is the gateway) and the
// X.509-SVID over mutual TLS. The SVIDs are in the audit trail as file
// deliveries, and nothing of the files is left once the instances stop.
func TestFunctionSVIDFiles(t *testing.T) {
	tp := startTest(t, t.TempDir(), func(c *upConfig) { c.Worker.IdentityDelivery = "files" })
	tp.deployFixture("files-a", nil)
	tp.deployDir("hello", built.hello, api.FunctionConfig{Runtime: api.RuntimeGo})
	const id = "spiffe://zfaas.local/ns/default/fn/files-a"

	if r, _ := tp.invokeFixture("files-a", map[string]any{"action": "env", "path": "ZFAAS_SVID_DIR"}); r.Data != "/run/zfaas/svid" {
		t.Fatalf("ZFAAS_SVID_DIR=%q, want /run/zfaas/svid", r.Data)
	}
	if r, _ := tp.invokeFixture("files-a", map[string]any{"action": "env", "path": "SPIFFE_ENDPOINT_SOCKET"}); r.Data != "" {
		t.Fatalf("SPIFFE_ENDPOINT_SOCKET=%q under file delivery", r.Data)
	}
	read := func(name string) string {
		t.Helper()
		r, _ := tp.invokeFixture("files-a", map[string]any{"action": "read", "path": "/run/zfaas/svid/" + name})
		if !r.Exists || r.Err != "" {
			t.Fatalf("function reads %s: %s", name, r.Err)
		}
		return r.Data
	}
	token := read("jwt_svid.token")
	sv, err := x509svid.Parse([]byte(read("svid.pem")), []byte(read("svid_key.pem")))
	if err != nil {
		t.Fatalf("the function's X.509-SVID files: %v", err)
	}
	if sv.ID.String() != id {
		t.Fatalf("svid.pem names %s, want %s", sv.ID, id)
	}

	gw := spiffeid.RequireFromString(tp.p.gatewayID)
	invokeHello := func(cfg *tls.Config, bearer string) (int, string) {
		t.Helper()
		hc := &http.Client{Transport: &http.Transport{TLSClientConfig: cfg}, Timeout: 10 * time.Second}
		req, err := http.NewRequest(http.MethodPost, tp.url+"/v1/functions/hello/invoke", bytes.NewReader([]byte(`{"name":"files"}`)))
		if err != nil {
			t.Fatal(err)
		}
		if bearer != "" {
			req.Header.Set("Authorization", "Bearer "+bearer)
		}
		resp, err := hc.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	if code, body := invokeHello(mtls.ClientConfig(nil, tp.p.identity, gw), token); code != http.StatusOK {
		t.Fatalf("hello with the function's JWT-SVID file: %d %s", code, body)
	}
	if code, body := invokeHello(mtls.ClientConfig(sv, tp.p.identity, gw), ""); code != http.StatusOK {
		t.Fatalf("hello over mTLS with the function's X.509-SVID files: %d %s", code, body)
	}
	if code, _ := invokeHello(mtls.ClientConfig(nil, tp.p.identity, gw), token[:len(token)-4]+"AAAA"); code != http.StatusUnauthorized {
		t.Fatalf("a tampered token: %d, want 401", code)
	}

	// The trail records both SVIDs of the files, as files.
	dir := t.TempDir()
	export := filepath.Join(dir, "trail.jsonl")
	var x509, jwt bool
	if _, ok := tp.exportTrailUntil(t, export, func(trail string) bool {
		x509, jwt = false, false
		for l := range strings.Lines(trail) {
			if strings.Contains(l, `"kind":"svid.issued"`) && strings.Contains(l, id) && strings.Contains(l, `"action":"files"`) {
				x509 = x509 || strings.Contains(l, `"type":"x509"`)
				jwt = jwt || strings.Contains(l, `"type":"jwt"`)
			}
		}
		return x509 && jwt
	}); !ok {
		t.Fatalf("trail lacks svid.issued records with action files for %s (x509 %v, jwt %v)", id, x509, jwt)
	}

	filesDir := filepath.Join(tp.dataDir, "identity", "files")
	if ents, err := os.ReadDir(filesDir); err != nil || len(ents) == 0 {
		t.Fatalf("svid files on the host while instances run: %v, %v", ents, err)
	}
	tp.stop()
	if ents, err := os.ReadDir(filesDir); err != nil || len(ents) != 0 {
		t.Fatalf("svid files after stop: %v, %v", ents, err)
	}
}
