// Package swtpm manufactures and runs a software TPM 2.0 (swtpm) on
// loopback: for development workers without a hardware TPM (`zfaas up`
// with worker.attest: swtpm) and for tests.
//
// Manufacture creates the TPM state in a directory once (RSA-2048 and ECC
// EKs, EK certificates in NV signed by a local CA of that directory, a
// platform certificate, NV locked) with its own swtpm_setup and
// swtpm_localca configuration, so nothing global is read or written; Serve
// runs `swtpm socket` on two free loopback ports. A software TPM proves
// nothing about the machine: its "manufacturer" is a file next to it.
package swtpm

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
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2"
	"github.com/google/go-tpm/tpm2/transport"

	"github.com/zfaas/zfaas/runtime/attest"
)

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

// TPM is a software TPM's state directory and, once served, its process.
type TPM struct {
	// Dir holds the TPM state (Dir/state) and its local CA (Dir/ca).
	Dir string
	// Root is the local CA's self-signed root certificate: the
	// "manufacturer root" a verifier must trust for this TPM.
	Root *x509.Certificate
	// Intermediate is the local CA's issuing certificate, which signed
	// the EK certificates.
	Intermediate *x509.Certificate
	// CommandAddr and CtrlAddr are the loopback addresses of the TPM
	// command channel and the swtpm control channel, once served.
	CommandAddr, CtrlAddr string

	mu     sync.Mutex
	proc   *exec.Cmd
	exited chan struct{}
}

// Manufacture creates the TPM in dir (0700) unless it exists there
// already, and loads its CA certificates.
func Manufacture(ctx context.Context, dir string) (*TPM, error) {
	state, ca, tmp := filepath.Join(dir, "state"), filepath.Join(dir, "ca"), filepath.Join(dir, "tmp")
	t := &TPM{Dir: dir}
	if _, err := os.Stat(filepath.Join(ca, "issuercert.pem")); err != nil {
		if ok, why := Available(); !ok {
			return nil, errors.New(why)
		}
		for _, d := range []string{dir, state, ca, tmp} {
			if err := os.MkdirAll(d, 0o700); err != nil {
				return nil, err
			}
		}
		files := map[string]string{
			"swtpm_setup.conf": fmt.Sprintf("create_certs_tool = /usr/bin/swtpm_localca\n"+
				"create_certs_tool_config = %s\ncreate_certs_tool_options = %s\nactive_pcr_banks = sha256\n",
				filepath.Join(dir, "swtpm-localca.conf"), filepath.Join(dir, "swtpm-localca.options")),
			"swtpm-localca.conf": fmt.Sprintf("statedir = %[1]s\nsigningkey = %[1]s/signkey.pem\n"+
				"issuercert = %[1]s/issuercert.pem\ncertserial = %[1]s/certserial\n", ca),
			"swtpm-localca.options": "--platform-manufacturer zfaas-swtpm\n--platform-version 2.1\n--platform-model swtpm\n",
		}
		for name, body := range files {
			if err := os.WriteFile(filepath.Join(dir, name), []byte(body), 0o600); err != nil {
				return nil, err
			}
		}
		ctx, cancel := context.WithTimeout(ctx, 2*time.Minute)
		defer cancel()
		setup := exec.CommandContext(ctx, "swtpm_setup", "--tpm2", "--tpm-state", state,
			"--config", filepath.Join(dir, "swtpm_setup.conf"),
			"--create-ek-cert", "--create-platform-cert", "--ecc", "--lock-nvram",
			"--logfile", filepath.Join(dir, "setup.log"))
		setup.Env = append(os.Environ(), "TMPDIR="+tmp, "XDG_CONFIG_HOME="+tmp, "HOME="+tmp)
		if out, err := setup.CombinedOutput(); err != nil {
			logs, _ := os.ReadFile(filepath.Join(dir, "setup.log"))
			return nil, fmt.Errorf("swtpm_setup: %v\n%s\n%s", err, out, logs)
		}
	}
	var err error
	if t.Root, err = readCert(filepath.Join(ca, "swtpm-localca-rootca-cert.pem")); err != nil {
		return nil, err
	}
	if t.Intermediate, err = readCert(filepath.Join(ca, "issuercert.pem")); err != nil {
		return nil, err
	}
	return t, nil
}

// Serve starts swtpm on two free loopback ports and waits until it
// answers; Close stops it. swtpm wants a connected socket for fd=, not a
// listener, so ports are picked free and tried again when swtpm lost the
// race for one.
func (t *TPM) Serve(ctx context.Context) error {
	var last error
	for range 5 {
		if last = t.serve(ctx); last == nil {
			return nil
		}
		if ctx.Err() != nil {
			break
		}
	}
	return fmt.Errorf("swtpm did not start: %w", last)
}

func (t *TPM) serve(ctx context.Context) error {
	cmdPort, err1 := freePort()
	ctrlPort, err2 := freePort()
	if err := errors.Join(err1, err2); err != nil {
		return err
	}
	cmdAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(cmdPort))
	ctrlAddr := net.JoinHostPort("127.0.0.1", strconv.Itoa(ctrlPort))
	var stderr bytes.Buffer
	proc := exec.Command("swtpm", "socket", "--tpm2",
		"--tpmstate", "dir="+filepath.Join(t.Dir, "state"),
		"--server", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", cmdPort),
		"--ctrl", fmt.Sprintf("type=tcp,port=%d,bindaddr=127.0.0.1", ctrlPort),
		"--flags", "not-need-init,startup-clear",
		"--log", "file="+filepath.Join(t.Dir, "swtpm.log"))
	proc.Stdout, proc.Stderr = &stderr, &stderr
	proc.Env = append(os.Environ(), "TMPDIR="+filepath.Join(t.Dir, "tmp"))
	if err := os.MkdirAll(filepath.Join(t.Dir, "tmp"), 0o700); err != nil {
		return err
	}
	if err := proc.Start(); err != nil {
		return fmt.Errorf("start swtpm: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = proc.Wait(); close(exited) }()
	stop := func() {
		_ = proc.Process.Kill()
		<-exited
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		tpm, err := dial(ctx, cmdAddr)
		if err == nil {
			_, err = tpm2.GetRandom{BytesRequested: 8}.Execute(tpm)
			tpm.Close()
			if err == nil {
				t.mu.Lock()
				t.proc, t.exited, t.CommandAddr, t.CtrlAddr = proc, exited, cmdAddr, ctrlAddr
				t.mu.Unlock()
				return nil
			}
		}
		select {
		case <-exited:
			logs, _ := os.ReadFile(filepath.Join(t.Dir, "swtpm.log"))
			return fmt.Errorf("swtpm exited: %s %s", strings.TrimSpace(stderr.String()), logs)
		case <-ctx.Done():
			stop()
			return ctx.Err()
		default:
		}
		if time.Now().After(deadline) {
			stop()
			return fmt.Errorf("swtpm did not answer: %v; %s", err, strings.TrimSpace(stderr.String()))
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Open connects to the served TPM. swtpm serves one connection at a time:
// close it before opening another.
func (t *TPM) Open(ctx context.Context) (transport.TPMCloser, error) {
	t.mu.Lock()
	addr := t.CommandAddr
	t.mu.Unlock()
	if addr == "" {
		return nil, errors.New("swtpm: not served")
	}
	return dial(ctx, addr)
}

// Close stops the swtpm process; the state stays in Dir.
func (t *TPM) Close() error {
	t.mu.Lock()
	proc, exited := t.proc, t.exited
	t.proc = nil
	t.mu.Unlock()
	if proc == nil {
		return nil
	}
	_ = proc.Process.Kill()
	<-exited
	return nil
}

// Roots returns a pool holding only this TPM's local CA root.
func (t *TPM) Roots() *x509.CertPool {
	p := x509.NewCertPool()
	p.AddCert(t.Root)
	return p
}

func dial(ctx context.Context, addr string) (transport.TPMCloser, error) {
	ctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	return attest.DialTCP(ctx, addr, 30*time.Second)
}

func freePort() (int, error) {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	return ln.Addr().(*net.TCPAddr).Port, nil
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
