// Package swtpmtest runs a software TPM 2.0 (swtpm) on loopback for tests
// of the attester and the verifier.
//
// Each Start manufactures a fresh TPM with swtpm_setup (RSA-2048 and ECC
// EKs, EK certificates in NV signed by a per-TPM local CA, a platform
// certificate, NV locked) in a test temp directory, with its own
// swtpm_setup and swtpm_localca configuration so nothing global is read
// or written, and serves it with `swtpm socket` on loopback sockets the
// test process created and handed over, so no port is guessed. The
// process is killed and the directory removed when the test ends.
//
// This package is for tests only; production code must never import it.
package swtpmtest

import (
	"bytes"
	"context"
	"crypto/x509"
	"encoding/pem"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/zfaas/zfaas/runtime/attest"
)

// TPM is one running swtpm instance.
type TPM struct {
	// Dir holds the TPM state and its local CA.
	Dir string
	// CommandAddr and CtrlAddr are the loopback addresses of the TPM
	// command channel and the swtpm control channel.
	CommandAddr, CtrlAddr string
	// Root is the local CA's self-signed root certificate: the
	// "manufacturer root" the verifier must trust for this TPM.
	Root *x509.Certificate
	// Intermediate is the local CA's issuing certificate, which signed
	// the EK certificates.
	Intermediate *x509.Certificate
}

// Available reports whether swtpm and swtpm_setup are on PATH, and if
// not, why.
func Available() (bool, string) {
	for _, bin := range []string{"swtpm", "swtpm_setup", "swtpm_localca"} {
		if _, err := exec.LookPath(bin); err != nil {
			return false, fmt.Sprintf("%s not on PATH (install the Debian packages swtpm and swtpm-tools)", bin)
		}
	}
	return true, ""
}

// Start manufactures and starts a new swtpm, skipping the test when swtpm
// is not installed. It fails the test on any other error.
func Start(tb testing.TB) *TPM {
	tb.Helper()
	if ok, why := Available(); !ok {
		tb.Skip(why)
	}
	dir := tb.TempDir()
	state := filepath.Join(dir, "state")
	ca := filepath.Join(dir, "ca")
	tmp := filepath.Join(dir, "tmp")
	for _, d := range []string{state, ca, tmp} {
		if err := os.Mkdir(d, 0o700); err != nil {
			tb.Fatal(err)
		}
	}
	files := map[string]string{
		"swtpm_setup.conf": fmt.Sprintf("create_certs_tool = /usr/bin/swtpm_localca\n"+
			"create_certs_tool_config = %s\ncreate_certs_tool_options = %s\nactive_pcr_banks = sha256\n",
			filepath.Join(dir, "swtpm-localca.conf"), filepath.Join(dir, "swtpm-localca.options")),
		"swtpm-localca.conf": fmt.Sprintf("statedir = %[1]s\nsigningkey = %[1]s/signkey.pem\n"+
			"issuercert = %[1]s/issuercert.pem\ncertserial = %[1]s/certserial\n", ca),
		"swtpm-localca.options": "--platform-manufacturer zfaas-test\n--platform-version 2.1\n--platform-model swtpm\n",
	}
	for name, body := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
			tb.Fatal(err)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	setup := exec.CommandContext(ctx, "swtpm_setup", "--tpm2", "--tpm-state", state,
		"--config", filepath.Join(dir, "swtpm_setup.conf"),
		"--create-ek-cert", "--create-platform-cert", "--ecc", "--lock-nvram",
		"--logfile", filepath.Join(dir, "setup.log"))
	setup.Env = append(os.Environ(), "TMPDIR="+tmp, "XDG_CONFIG_HOME="+tmp, "HOME="+tmp)
	if out, err := setup.CombinedOutput(); err != nil {
		logs, _ := os.ReadFile(filepath.Join(dir, "setup.log"))
		tb.Fatalf("swtpm_setup: %v\n%s\n%s", err, out, logs)
	}
	t := &TPM{Dir: dir}
	var err error
	if t.Root, err = readCert(filepath.Join(ca, "swtpm-localca-rootca-cert.pem")); err != nil {
		tb.Fatal(err)
	}
	if t.Intermediate, err = readCert(filepath.Join(ca, "issuercert.pem")); err != nil {
		tb.Fatal(err)
	}

	// swtpm's fd= option wants a connected socket, not a listener, so
	// ports are picked free and swtpm is restarted on others if it lost
	// the race for one.
	var lastErr string
	for attempt := 0; attempt < 5; attempt++ {
		ok, why := t.serve(tb, state, tmp)
		if ok {
			return t
		}
		lastErr = why
	}
	tb.Fatalf("swtpm did not start: %s", lastErr)
	return nil
}

// serve starts swtpm on two free loopback ports and waits until it
// answers. On failure it reports why and leaves nothing running.
func (t *TPM) serve(tb testing.TB, state, tmp string) (bool, string) {
	tb.Helper()
	cmdPort, err1 := freePort()
	ctrlPort, err2 := freePort()
	if err := errors.Join(err1, err2); err != nil {
		tb.Fatal(err)
	}
	t.CommandAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(cmdPort))
	t.CtrlAddr = net.JoinHostPort("127.0.0.1", strconv.Itoa(ctrlPort))
	var stderr bytes.Buffer
	proc := exec.Command("swtpm", "socket", "--tpm2",
		"--tpmstate", "dir="+state,
		"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", cmdPort),
		"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", ctrlPort),
		"--flags", "not-need-init,startup-clear",
		"--log", "file="+filepath.Join(t.Dir, "swtpm.log"))
	proc.Stdout, proc.Stderr = &stderr, &stderr
	proc.Env = append(os.Environ(), "TMPDIR="+tmp)
	if err := proc.Start(); err != nil {
		tb.Fatalf("start swtpm: %v", err)
	}
	exited := make(chan struct{})
	go func() { proc.Wait(); close(exited) }()
	stop := func() {
		proc.Process.Kill()
		<-exited
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		tpm, err := t.open()
		if err == nil {
			_, err = tpm2.GetRandom{BytesRequested: 8}.Execute(tpm)
			tpm.Close()
			if err == nil {
				tb.Cleanup(stop)
				return true, ""
			}
		}
		select {
		case <-exited:
			logs, _ := os.ReadFile(filepath.Join(t.Dir, "swtpm.log"))
			return false, fmt.Sprintf("swtpm exited: %s %s", strings.TrimSpace(stderr.String()), logs)
		default:
		}
		if time.Now().After(deadline) {
			stop()
			return false, fmt.Sprintf("swtpm did not answer: %v; %s", err, strings.TrimSpace(stderr.String()))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
}

func (t *TPM) open() (transport.TPMCloser, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	return attest.DialTCP(ctx, t.CommandAddr, 30*time.Second)
}

// Open connects to the TPM; the connection is closed when the test ends.
// swtpm serves one connection at a time: close it before opening another.
func (t *TPM) Open(tb testing.TB) transport.TPMCloser {
	tb.Helper()
	tpm, err := t.open()
	if err != nil {
		tb.Fatalf("open swtpm: %v", err)
	}
	tb.Cleanup(func() { tpm.Close() })
	return tpm
}

// Roots returns a pool holding only this TPM's local CA root.
func (t *TPM) Roots() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(t.Root)
	return p
}

func readCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	blk, _ := pem.Decode(b)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("%s: no PEM certificate", path)
	}
	return x509.ParseCertificate(blk.Bytes)
}
