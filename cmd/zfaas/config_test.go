package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/zfaas/zfaas/runtime/worker"
)

func TestConfigFile(t *testing.T) {
	tests := []struct {
		name    string
		yaml    string
		wantErr string
		check   func(upConfig) bool
	}{
		{"empty keeps defaults", "", "", func(c upConfig) bool {
			return c.Gateway.Listen == "127.0.0.1:8443" && c.Gateway.HealthListen == "127.0.0.1:8080" && c.Worker.IdleTimeout == 10*time.Minute &&
				c.Identity.TrustDomain == "zfaas.local" && c.Identity.X509SVIDTTL == time.Hour && c.Identity.JWTSVIDTTL == 5*time.Minute
		}},
		{"overrides", "data_dir: /srv/z\ngateway:\n  listen: 127.0.0.1:9999\n  wait_budget: 250ms\nworker:\n  idle_timeout: 30s\n", "", func(c upConfig) bool {
			return c.DataDir == "/srv/z" && c.Gateway.Listen == "127.0.0.1:9999" && c.Gateway.WaitBudget == 250*time.Millisecond && c.Worker.IdleTimeout == 30*time.Second
		}},
		{"unknown key names its line", "gateway:\n  listen: 127.0.0.1:1\n  lisen: x\n", "line 3", nil},
		{"wrong type names its line", "gateway:\n  wait_budget: soon\n", "line 2", nil},
		{"public mTLS listener", "gateway:\n  listen: 0.0.0.0:8443\n", "", func(c upConfig) bool { return c.Gateway.Listen == "0.0.0.0:8443" }},
		{"tls_listen is gone", "gateway:\n  tls_listen: 127.0.0.1:8443\n", "tls_listen", nil},
		{"same address twice", "gateway:\n  health_listen: 127.0.0.1:8443\n", "own address", nil},
		{"port 0 twice", "gateway:\n  grpc_listen: 127.0.0.1:0\n  health_listen: 127.0.0.1:0\n", "", nil},
		{"identity", "identity:\n  trust_domain: example.org\n  x509_svid_ttl: 2h\n  jwt_svid_ttl: 1m\n  ca_ttl: 48h\n", "", func(c upConfig) bool {
			return c.Identity.TrustDomain == "example.org" && c.Identity.X509SVIDTTL == 2*time.Hour && c.Identity.JWTSVIDTTL == time.Minute
		}},
		{"server names", "gateway:\n  server_names: [gw.example.com, 10.0.0.1]\n", "", func(c upConfig) bool { return len(c.Gateway.ServerNames) == 2 }},
		{"bad server name", "gateway:\n  server_names: [\"https://x\"]\n", "server_names", nil},
		{"bad trust domain", "identity:\n  trust_domain: Not/A/Domain\n", "identity.trust_domain", nil},
		{"ca_ttl too short", "identity:\n  x509_svid_ttl: 12h\n", "ca_ttl", nil},
		{"unknown sandbox", "worker:\n  sandbox: vm\n", "sandbox", nil},
		{"microvm transport", "worker:\n  sandbox: microvm\n  microvm:\n    transport: vsock\n", "", func(c upConfig) bool { return c.Worker.MicroVM.Transport == "vsock" }},
		{"bad microvm transport", "worker:\n  sandbox: microvm\n  microvm:\n    transport: tcp\n", "worker.microvm.transport", nil},
		{"root uid refused", "worker:\n  uid: 0\n", "unprivileged", nil},
		{"bad tenant", "tenant: Acme\n", "tenant", nil},
		{"bad replicas", "store:\n  replicas: 2\n", "replicas", nil},
		{"identity delivery default", "", "", func(c upConfig) bool { return c.Worker.IdentityDelivery == "auto" }},
		{"identity delivery files", "worker:\n  identity_delivery: files\n", "", func(c upConfig) bool { return c.Worker.IdentityDelivery == "files" }},
		{"identity delivery unknown", "worker:\n  identity_delivery: env\n", "worker.identity_delivery", nil},
		{"identity delivery files on microvm", "worker:\n  sandbox: microvm\n  identity_delivery: files\n", "copies mounted directories", nil},
		{"identity delivery socket on kata", "worker:\n  sandbox: container\n  identity_delivery: socket\n  containerd:\n    runtime: io.containerd.kata.v2\n", "cannot cross", nil},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "zfaas.yaml")
			if err := os.WriteFile(path, []byte(tt.yaml), 0o600); err != nil {
				t.Fatal(err)
			}
			cfg := defaultUpConfig(func(string) string { return "" })
			err := loadConfigFile(path, &cfg)
			if err == nil {
				err = cfg.validate()
			}
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %v, want an error containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if tt.check != nil && !tt.check(cfg) {
				t.Fatalf("got %+v", cfg)
			}
		})
	}
}

// TestIdentityDelivery: worker.identity_delivery auto picks files for the
// Kata runtime class only; files and the micro-VM driver, socket and Kata,
// are refused with the reason.
func TestIdentityDelivery(t *testing.T) {
	const kata, runc = "io.containerd.kata.v2", "io.containerd.runc.v2"
	tests := []struct {
		sandbox, runtime, delivery string
		want                       worker.IdentityDelivery
		wantErr                    string
	}{
		{"process", "", "auto", worker.DeliverSocket, ""},
		{"process", "", "", worker.DeliverSocket, ""},
		{"container", "", "auto", worker.DeliverSocket, ""},
		{"container", runc, "auto", worker.DeliverSocket, ""},
		{"container", kata, "auto", worker.DeliverFiles, ""},
		{"microvm", "", "auto", worker.DeliverSocket, ""},
		{"process", "", "files", worker.DeliverFiles, ""},
		{"container", runc, "files", worker.DeliverFiles, ""},
		{"container", kata, "files", worker.DeliverFiles, ""},
		{"process", "", "socket", worker.DeliverSocket, ""},
		{"microvm", "", "socket", worker.DeliverSocket, ""},
		{"microvm", "", "files", "", "worker.sandbox microvm"},
		{"container", kata, "socket", "", "cannot cross into the VM"},
		{"process", "", "Files", "", "want auto, socket or files"},
	}
	for _, tt := range tests {
		t.Run(tt.sandbox+"/"+tt.runtime+"/"+tt.delivery, func(t *testing.T) {
			w := workerConfig{Sandbox: tt.sandbox, IdentityDelivery: tt.delivery, Containerd: containerdConfig{Runtime: tt.runtime}}
			got, why, err := w.identityDelivery()
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("got %q, %v; want an error containing %q", got, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want || why == "" {
				t.Fatalf("got %q (%q), %v; want %q", got, why, err, tt.want)
			}
		})
	}
}

func TestClientConfigRoundTrip(t *testing.T) {
	dir := t.TempDir()
	getenv := func(k string) string {
		if k == "XDG_CONFIG_HOME" {
			return dir
		}
		return ""
	}
	path, err := writeClientConfig("", getenv, clientConfig{Gateway: "http://127.0.0.1:1234"})
	if err != nil {
		t.Fatal(err)
	}
	st, err := os.Stat(path)
	if err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("client config mode %v, %v; want 0600", st.Mode(), err)
	}
	c, err := readClientConfig(getenv)
	if err != nil || c.Gateway != "http://127.0.0.1:1234" {
		t.Fatalf("got %+v, %v", c, err)
	}
}
