package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/google/go-tpm/tpm2"

	"github.com/zfaas/zfaas/api"
	"github.com/zfaas/zfaas/runtime/attest/swtpmtest"
)

// syncWriter is a bytes.Buffer safe for a process's output and the test.
type syncWriter struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncWriter) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// workerProc is a `zfaas worker` process of the cluster test.
type workerProc struct {
	name string
	cmd  *exec.Cmd
	out  *syncWriter
	done chan error
}

// TestRemoteWorkersEndToEnd runs workers as separate processes, each with
// its own swtpm, against a platform: TPM-attested workers get work; a
// worker whose PCRs the admission policy rejects is refused; a PCR change
// revokes a worker at its next re-attestation and its traffic moves to the
// others without a failed invocation; a worker killed mid-invocation gives
// that invocation a clear error and the next one lands on a healthy worker.
func TestRemoteWorkersEndToEnd(t *testing.T) {
	if ok, why := swtpmtest.Available(); !ok {
		t.Skipf("needs swtpm: %s", why)
	}
	if testing.Short() {
		t.Skip("starts worker processes and software TPMs")
	}
	needPlatform(t)
	tpms := []*swtpmtest.TPM{swtpmtest.Start(t), swtpmtest.Start(t), swtpmtest.Start(t)}
	dir := t.TempDir()
	var roots bytes.Buffer
	for _, tpm := range tpms {
		for _, c := range [][]byte{tpm.Root.Raw, tpm.Intermediate.Raw} {
			pem.Encode(&roots, &pem.Block{Type: "CERTIFICATE", Bytes: c})
		}
	}
	rootsFile := filepath.Join(dir, "ek-roots.pem")
	os.WriteFile(rootsFile, roots.Bytes(), 0o600)
	tp := startTest(t, t.TempDir(), func(c *upConfig) {
		c.Store.Listen = "127.0.0.1:0"
		c.Cluster.EKRootsFile = rootsFile
		c.Cluster.WorkerSVIDTTL = time.Minute // re-attestation every 30 s
	})
	bundle, err := tp.p.identity.GetX509BundleForTrustDomain(tp.p.td)
	if err != nil {
		t.Fatal(err)
	}
	bundlePEM, _ := bundle.Marshal()
	bundleFile := filepath.Join(dir, "bundle.pem")
	os.WriteFile(bundleFile, bundlePEM, 0o600)
	bin := buildZfaas(t, dir)
	start := func(name string, tpm *swtpmtest.TPM) *workerProc {
		return startWorkerProc(t, tp, bin, bundleFile, dir, name, tpm)
	}
	workerState := func(name string) (api.WorkerInfo, bool) {
		ws, err := tp.c.Workers(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		for _, w := range ws {
			if w.Node == name {
				return w, true
			}
		}
		return api.WorkerInfo{}, false
	}
	waitState := func(w *workerProc, state string, live bool, within time.Duration) {
		t.Helper()
		deadline := time.Now().Add(within)
		for {
			if info, ok := workerState(w.name); ok && info.State == state && info.Live == live {
				return
			}
			if time.Now().After(deadline) {
				info, _ := workerState(w.name)
				t.Fatalf("worker %s: %+v, want %s (live %v); output:\n%s", w.name, info, state, live, w.out.String())
			}
			time.Sleep(200 * time.Millisecond)
		}
	}

	w1, w2 := start("w1", tpms[0]), start("w2", tpms[1])
	waitState(w1, api.WorkerAdmitted, true, 60*time.Second)
	waitState(w2, api.WorkerAdmitted, true, 60*time.Second)
	if info, _ := workerState("w1"); info.AttestMethod != "tpm" || !strings.HasPrefix(info.EKFingerprint, "sha256:") {
		t.Fatalf("w1 admission: %+v", info)
	}

	// Only the remote workers take work.
	if _, err := tp.c.DrainWorker(context.Background(), localNode, true); err != nil {
		t.Fatal(err)
	}
	tp.deployFixture("fx", nil)
	if r, _ := tp.invokeFixture("fx", nil); r.Instance == "" || r.UID != 65534 {
		t.Fatalf("invoke on a remote worker: %+v", r)
	}

	// Golden PCRs: every quoted PCR must stay as it is now (zero on swtpm).
	// w3's PCR 7 was extended before it joined: refused, no SVID.
	extend := func(tpm *swtpmtest.TPM) {
		t.Helper()
		c := tpm.Open(t)
		defer c.Close()
		d := sha256.Sum256([]byte("a different boot loader"))
		if _, err := (tpm2.PCRExtend{
			PCRHandle: tpm2.AuthHandle{Handle: tpm2.TPMHandle(7), Auth: tpm2.PasswordAuth(nil)},
			Digests:   tpm2.TPMLDigestValues{Digests: []tpm2.TPMTHA{{HashAlg: tpm2.TPMAlgSHA256, Digest: d[:]}}},
		}).Execute(c); err != nil {
			t.Fatalf("extend PCR 7: %v", err)
		}
	}
	pushGoldenPCRs(tp)
	extend(tpms[2])
	w3 := start("w3", tpms[2])
	select {
	case err := <-w3.done:
		if err == nil || !strings.Contains(w3.out.String(), "PCR sha256:7") {
			t.Fatalf("w3 with a changed PCR: exit %v\n%s", err, w3.out.String())
		}
	case <-time.After(60 * time.Second):
		t.Fatalf("w3 with a changed PCR was not refused:\n%s", w3.out.String())
	}
	if info, _ := workerState("w3"); info.State != api.WorkerRefused {
		t.Fatalf("w3: %+v, want refused", info)
	}

	// Traffic runs while w1's PCR changes and its next re-attestation
	// revokes it: no invocation fails.
	var calls, failures atomic.Int64
	var failMsg atomic.Value
	stop := make(chan struct{})
	var traffic sync.WaitGroup
	traffic.Go(func() {
		for {
			select {
			case <-stop:
				return
			case <-time.After(50 * time.Millisecond):
			}
			calls.Add(1)
			code, _, body := tp.rawInvoke("fx", []byte(`{}`))
			if code != 200 {
				failures.Add(1)
				failMsg.Store(fmt.Sprintf("%d %s", code, body))
			}
		}
	})
	extend(tpms[0])
	waitState(w1, api.WorkerRevoked, false, 90*time.Second)
	select {
	case <-w1.done:
	case <-time.After(30 * time.Second):
		t.Fatalf("revoked w1 kept running:\n%s", w1.out.String())
	}
	time.Sleep(time.Second)
	close(stop)
	traffic.Wait()
	if failures.Load() > 0 {
		t.Fatalf("%d of %d invocations failed while w1 was revoked; last: %v", failures.Load(), calls.Load(), failMsg.Load())
	}
	if calls.Load() < 10 {
		t.Fatalf("only %d invocations during the revocation", calls.Load())
	}

	// w2 is killed in the middle of an invocation: that invocation gets a
	// clear error; the next one lands on a healthy worker (local, undrained).
	errc := make(chan string, 1)
	go func() {
		raw, _ := json.Marshal(map[string]any{"action": "sleep", "millis": 3000})
		code, _, body := tp.rawInvoke("fx", raw)
		errc <- fmt.Sprintf("%d %s", code, body)
	}()
	time.Sleep(time.Second)
	w2.cmd.Process.Kill()
	select {
	case got := <-errc:
		if !strings.HasPrefix(got, "502 ") || !strings.Contains(got, "worker_lost") {
			t.Fatalf("invocation on a killed worker: %s, want 502 worker_lost", got)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("the invocation on the killed worker did not end")
	}
	if _, err := tp.c.DrainWorker(context.Background(), localNode, false); err != nil {
		t.Fatal(err)
	}
	if code, _, body := tp.rawInvoke("fx", []byte(`{}`)); code != 200 {
		t.Fatalf("after the kill: %d %s", code, body)
	}
}

// pushGoldenPCRs pushes the shipped policy with admission.golden_pcrs
// requiring PCRs 0-7 (SHA-256) to be zero, as swtpm reports them.
func pushGoldenPCRs(tp *testPlatform) {
	tp.t.Helper()
	zero := strings.Repeat("0", 64)
	golden := map[string]any{}
	for i := range 8 {
		golden[fmt.Sprint(i)] = zero
	}
	tp.pushPolicyData(func(data map[string]any) {
		data["admission"].(map[string]any)["golden_pcrs"] = map[string]any{"sha256": golden}
	})
}

// TestLocalWorkerSWTPM: with worker.attest: swtpm, zfaas up manufactures
// and starts a software TPM, and its in-process worker is admitted by TPM
// attestation like any worker before it gets work.
func TestLocalWorkerSWTPM(t *testing.T) {
	if ok, why := swtpmtest.Available(); !ok {
		t.Skipf("needs swtpm: %s", why)
	}
	dir := t.TempDir()
	tp := startTest(t, dir, func(c *upConfig) { c.Worker.Attest = "swtpm" })
	deadline := time.Now().Add(60 * time.Second)
	for {
		ws, err := tp.c.Workers(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		if len(ws) == 1 && ws[0].Node == localNode && ws[0].State == api.WorkerAdmitted && ws[0].Live &&
			ws[0].AttestMethod == "tpm" && strings.HasPrefix(ws[0].EKFingerprint, "sha256:") && len(ws[0].PCRs) == 8 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the in-process worker was not admitted by its swtpm: %+v", ws)
		}
		time.Sleep(200 * time.Millisecond)
	}
	tp.deployFixture("fx", nil)
	tp.invokeFixture("fx", nil)
	if _, err := os.Stat(filepath.Join(dir, "swtpm", "state")); err != nil {
		t.Fatalf("no swtpm state in the data directory: %v", err)
	}
}

// buildZfaas builds the zfaas binary into dir.
func buildZfaas(t *testing.T, dir string) string {
	t.Helper()
	bin := filepath.Join(dir, "zfaas")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build zfaas: %v\n%s", err, out)
	}
	return bin
}

// startWorkerProc starts `zfaas worker` joining tp with tpm; it is
// stopped (SIGTERM, then SIGKILL) when the test ends.
func startWorkerProc(t *testing.T, tp *testPlatform, bin, bundleFile, dir, name string, tpm *swtpmtest.TPM) *workerProc {
	t.Helper()
	w := &workerProc{name: name, out: &syncWriter{}, done: make(chan error, 1)}
	w.cmd = exec.Command(bin, "worker", "--join", tp.p.grpcAddr, "--trust-bundle", bundleFile, "--store", tp.p.store.ClientURL(),
		"--tpm", "swtpm://"+tpm.CommandAddr, "--node", name, "--listen", "127.0.0.1:0", "--data-dir", filepath.Join(dir, name),
		"--gateway", tp.url, "--capacity-mb", "4096", "--log-level", "debug")
	w.cmd.Stdout, w.cmd.Stderr = w.out, w.out
	w.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := w.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { w.done <- w.cmd.Wait() }()
	t.Cleanup(func() {
		w.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-w.done:
		case <-time.After(20 * time.Second):
			w.cmd.Process.Kill()
		}
		if t.Failed() {
			t.Logf("worker %s output:\n%s", name, w.out.String())
		}
	})
	return w
}

// TestRemoteWorkerOverTLCP: on a platform of the gm suite a joined worker
// gets an SM2 pair from the control plane and serves its worker API over
// TLCP, and the gateway reaches it only over TLCP.
func TestRemoteWorkerOverTLCP(t *testing.T) {
	if ok, why := swtpmtest.Available(); !ok {
		t.Skipf("needs swtpm: %s", why)
	}
	if testing.Short() {
		t.Skip("starts a worker process and a software TPM")
	}
	needPlatform(t)
	tpm := swtpmtest.Start(t)
	dir := t.TempDir()
	var roots bytes.Buffer
	pem.Encode(&roots, &pem.Block{Type: "CERTIFICATE", Bytes: tpm.Root.Raw})
	pem.Encode(&roots, &pem.Block{Type: "CERTIFICATE", Bytes: tpm.Intermediate.Raw})
	rootsFile := filepath.Join(dir, "ek-roots.pem")
	os.WriteFile(rootsFile, roots.Bytes(), 0o600)
	tp := startTest(t, t.TempDir(), func(c *upConfig) {
		c.Identity.Suite = "gm"
		c.Store.Listen = "127.0.0.1:0"
		c.Cluster.EKRootsFile = rootsFile
	})
	bundle, _ := tp.p.identity.GetX509BundleForTrustDomain(tp.p.td)
	bundlePEM, _ := bundle.Marshal()
	bundleFile := filepath.Join(dir, "bundle.pem")
	os.WriteFile(bundleFile, bundlePEM, 0o600)
	w := startWorkerProc(t, tp, buildZfaas(t, dir), bundleFile, dir, "g1", tpm)
	deadline := time.Now().Add(60 * time.Second)
	for {
		ws, _ := tp.c.Workers(context.Background())
		live := false
		for _, x := range ws {
			live = live || (x.Node == "g1" && x.State == api.WorkerAdmitted && x.Live)
		}
		if live {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("g1 not admitted: %+v\n%s", ws, w.out.String())
		}
		time.Sleep(200 * time.Millisecond)
	}
	if !strings.Contains(w.out.String(), "worker API serves TLCP") {
		t.Fatalf("the worker does not serve TLCP:\n%s", w.out.String())
	}
	if _, err := tp.c.DrainWorker(context.Background(), localNode, true); err != nil {
		t.Fatal(err)
	}
	tp.deployFixture("fx", nil)
	if r, _ := tp.invokeFixture("fx", nil); r.Instance == "" {
		t.Fatalf("invoke on the TLCP worker: %+v", r)
	}
}

// TestExamplesInMicroVMs: with worker.sandbox microvm every instance is a
// QEMU micro-VM (TCG here); a Go and a Python example answer, and the
// caller example fetches its SVID inside its VM and calls hello (in
// another VM) through the gateway.
func TestExamplesInMicroVMs(t *testing.T) {
	if testing.Short() {
		t.Skip("boots micro-VMs")
	}
	needPlatform(t)
	if _, err := exec.LookPath("qemu-system-x86_64"); err != nil {
		t.Skip("qemu-system-x86_64 missing (apt-get install qemu-system-x86)")
	}
	kdir := "/var/cache/zfaas/vmkernel"
	if out, err := exec.Command("bash", "../../scripts/vmkernel.sh", kdir).CombinedOutput(); err != nil {
		if _, serr := os.Stat(filepath.Join(kdir, "vmlinux")); serr != nil {
			t.Skipf("no micro-VM kernel: %v\n%s", err, out)
		}
	}
	buildFunctions(t)
	dir := t.TempDir()
	agent := filepath.Join(dir, "zfaas-agent")
	cmd := exec.Command("go", "build", "-o", agent, "../../runtime/guestagent/cmd/zfaas-agent")
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build the agent: %v\n%s", err, out)
	}
	tp := startTest(t, t.TempDir(), func(c *upConfig) {
		c.Worker.Sandbox = "microvm"
		c.Worker.MicroVM = microVMConfig{KernelDir: kdir, Agent: agent, Accel: "tcg"}
		c.Worker.InitTimeout = 2 * time.Minute
	})
	tp.deployDir("hello", built.hello, api.FunctionConfig{Runtime: api.RuntimeGo})
	tp.deployDir("python-hello", built.python, api.FunctionConfig{Runtime: api.RuntimePython3, Handler: "handler.handle"})
	tp.deployDir("caller", built.caller, api.FunctionConfig{Runtime: api.RuntimeGo})
	for fn, want := range map[string]string{"hello": `"Hello, vm!"`, "python-hello": "Hello, vm from Python!"} {
		out, _, err := tp.c.Invoke(context.Background(), fn, []byte(`{"name":"vm"}`))
		if err != nil || !strings.Contains(string(out), want) {
			t.Fatalf("%s in a micro-VM: %s %v", fn, out, err)
		}
	}
	out, _, err := tp.c.Invoke(context.Background(), "caller", []byte(`{"target":"hello","payload":{"name":"peer"}}`))
	if err != nil || !strings.Contains(string(out), `"caller":"spiffe://zfaas.local/ns/default/fn/caller"`) || !strings.Contains(string(out), "Hello, peer!") {
		t.Fatalf("caller in a micro-VM: %s %v", out, err)
	}
}
