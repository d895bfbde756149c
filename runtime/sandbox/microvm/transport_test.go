//go:build linux

package microvm

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/zfaas/zfaas/runtime/guestagent"
	"github.com/zfaas/zfaas/runtime/sandbox"
)

func TestChooseTransport(t *testing.T) {
	missing := filepath.Join(t.TempDir(), "no-vhost-vsock")
	present := filepath.Join(t.TempDir(), "vhost-vsock")
	if err := os.WriteFile(present, nil, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct {
		want, dev, got string
		unsupported    bool
	}{
		{"auto", missing, "serial", false},
		{"auto", present, "vsock", false},
		{"serial", present, "serial", false},
		{"vsock", present, "vsock", false},
		{"vsock", missing, "", true},
	} {
		got, err := chooseTransport(c.want, c.dev)
		switch {
		case c.unsupported && !errors.Is(err, ErrUnsupported):
			t.Errorf("%s with %s: err %v, want ErrUnsupported", c.want, filepath.Base(c.dev), err)
		case !c.unsupported && (err != nil || got != c.got):
			t.Errorf("%s with %s: %q, %v; want %q", c.want, filepath.Base(c.dev), got, err, c.got)
		}
	}
	if _, err := chooseTransport("tcp", present); err == nil || !strings.Contains(err.Error(), "want auto, serial or vsock") {
		t.Errorf("unknown transport: %v", err)
	}
}

func TestQEMUArgsPerTransport(t *testing.T) {
	var cids cidSet
	cid, err := cids.reserve()
	if err != nil {
		t.Fatal(err)
	}
	vs := &vsockChannel{cid: cid, release: cids.release}
	args := qemuArgs("tcg", 64, 128<<20, 0, "/k", "/i", "/s", vs)
	joined := strings.Join(args, " ")
	if !slices.Contains(args, "vhost-vsock-device,guest-cid="+itoa(cid)) {
		t.Errorf("vsock args lack the device with cid %d: %s", cid, joined)
	}
	if strings.Contains(joined, "virtserialport") || strings.Contains(joined, "chardev") {
		t.Errorf("vsock args still have the serial channel: %s", joined)
	}
	if !strings.Contains(args[slices.Index(args, "-append")+1], "zfaas.transport=vsock") {
		t.Errorf("kernel command line does not select vsock: %s", joined)
	}
	vs.close()
	vs.close() // idempotent
	if len(cids.held) != 0 {
		t.Errorf("context ID still held after close: %v", cids.held)
	}

	ch, err := (&Driver{transport: guestagent.TransportSerial}).newChannel(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	defer ch.close()
	args = qemuArgs("tcg", 64, 128<<20, 0, "/k", "/i", "/s", ch)
	joined = strings.Join(args, " ")
	if !strings.Contains(joined, "virtserialport,chardev=agent,name="+guestagent.PortName) || strings.Contains(joined, "vsock") {
		t.Errorf("serial args: %s", joined)
	}
}

func TestCIDSetUniqueAndOutsideReserved(t *testing.T) {
	var s cidSet
	seen := map[uint32]bool{}
	for range 2000 {
		cid, err := s.reserve()
		if err != nil {
			t.Fatal(err)
		}
		if cid < minCID || cid == ^uint32(0) {
			t.Fatalf("context ID %d in the reserved range", cid)
		}
		if seen[cid] {
			t.Fatalf("context ID %d handed out twice", cid)
		}
		seen[cid] = true
	}
}

func itoa(v uint32) string { return strconv.FormatUint(uint64(v), 10) }

// TestVsockTransportInGuest runs the vsock transport's two ends in one TCG
// guest over vsock_loopback (this host has no /dev/vhost-vsock, so no VM
// can reach the host over AF_VSOCK): the agent's listener, its peer check,
// the driver's dial with retry, and the agent protocol over the pair. The
// guest's init is testdata/vsockinit; it prints its verdict on the serial
// console.
func TestVsockTransportInGuest(t *testing.T) {
	d, _ := newDriver(t) // skips without root, QEMU or the kernel cache
	kdir := d.cfg.KernelDir
	extra, err := os.ReadFile(filepath.Join(kdir, "modules.extra"))
	if err != nil || !strings.Contains(string(extra), "vsock_loopback.ko") {
		t.Fatalf("kernel cache %s lacks vsock_loopback in modules.extra (scripts/vmkernel.sh layout 3): %v", kdir, err)
	}
	// A kernel dir whose modules.load adds the loopback transport.
	tk := t.TempDir()
	load, err := os.ReadFile(filepath.Join(kdir, "modules.load"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(tk, "modules.load"), append(load, extra...), 0o644); err != nil {
		t.Fatal(err)
	}
	for _, n := range []string{"vmlinux", "modules"} {
		if err := os.Symlink(filepath.Join(kdir, n), filepath.Join(tk, n)); err != nil {
			t.Fatal(err)
		}
	}
	initBin := filepath.Join(t.TempDir(), "vsockinit")
	goBuild(t, "./testdata/vsockinit", initBin)
	base, err := buildBase(initBin, tk)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	initrd := filepath.Join(dir, initrdName)
	if err := os.WriteFile(initrd, base, 0o600); err != nil {
		t.Fatal(err)
	}
	serial := filepath.Join(dir, serialLogName)
	args := qemuArgs(accelTCG, d.cfg.TCGCacheMiB, 128<<20, d.tscKHz, kdir, initrd, serial, loopbackVsock{})
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	var stderr bytes.Buffer
	cmd := exec.CommandContext(ctx, d.qemu, args...)
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		t.Fatalf("qemu: %v (ctx %v): %s", err, ctx.Err(), stderr.String())
	}
	out, _ := os.ReadFile(serial)
	if !strings.Contains(string(out), "VSOCK-SELFTEST OK") {
		t.Fatalf("guest did not report success; serial console:\n%s", lastLines(string(out), 20))
	}
}

// loopbackVsock is a channel with no device: the kernel command line asks
// for vsock, and testdata/vsockinit provides both ends itself.
type loopbackVsock struct{}

func (loopbackVsock) qemuArgs() []string { return nil }
func (loopbackVsock) cmdline() string {
	return guestagent.CmdlineTransport + "=" + guestagent.TransportVsock
}
func (loopbackVsock) connect(context.Context) (net.Conn, error) { return nil, errors.New("not used") }
func (loopbackVsock) close()                                    {}

// TestAccelAutoFollowsTheProbe runs the "auto" accelerator choice for
// real. On a host whose KVM cannot boot the guest (this one: kvm-pvm) it
// must fall back to TCG and say why, and a second KVM probe must fail as
// well; where KVM works, a VM must boot under it. The probe leaves no
// state behind.
func TestAccelAutoFollowsTheProbe(t *testing.T) {
	d0, code := newDriver(t)
	var logs syncBuffer
	d, err := New(Config{
		KernelDir: d0.cfg.KernelDir, AgentPath: d0.cfg.AgentPath, StateDir: filepath.Join(t.TempDir(), "state"),
		CgroupParent: d0.cfg.CgroupParent, ProbeTimeout: 30 * time.Second,
		Logger: slog.New(slog.NewTextHandler(&logs, nil)),
	})
	if err != nil {
		t.Fatal(err)
	}
	accel := d.Accel()
	t.Logf("auto chose %s: %s", accel, strings.TrimSpace(logs.String()))
	switch accel {
	case accelTCG:
		if _, err := os.Stat("/dev/kvm"); err != nil {
			if !strings.Contains(logs.String(), "no /dev/kvm") {
				t.Errorf("TCG without /dev/kvm not logged: %s", logs.String())
			}
			break
		}
		if !strings.Contains(logs.String(), "KVM probe boot failed") {
			t.Errorf("fallback to TCG not logged with its reason: %s", logs.String())
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := d.probe(ctx, accelKVM); err == nil {
			t.Errorf("auto chose TCG but a second KVM probe boot succeeded")
		}
	case accelKVM:
		ctx := context.Background()
		var out syncBuffer
		inst, err := d.Start(ctx, sandbox.Spec{ID: "vm-kvm", CodeDir: code, Args: []string{"/var/task/fn", "hello"}, Stdout: &out})
		if err != nil {
			t.Fatalf("Start under KVM: %v", err)
		}
		defer inst.Stop(ctx)
		waitDone(t, inst)
		if b := inst.(*Instance).Boot; b.Accel != accelKVM || !strings.Contains(out.String(), "hello from the guest") {
			t.Errorf("KVM instance: accel %s, stdout %q", b.Accel, out.String())
		}
	default:
		t.Fatalf("Accel() = %q", accel)
	}
	if left, _ := os.ReadDir(d.cfg.StateDir); len(left) != 0 {
		t.Errorf("state dir keeps %d entries after the probe", len(left))
	}
}
