//go:build linux

package microvm

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"math"
	"net"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/zfaas/zfaas/runtime/guestagent"
	"github.com/zfaas/zfaas/runtime/sandbox"
)

// Driver starts micro-VM sandboxes. It is safe for concurrent use; its
// configuration is immutable after New.
type Driver struct {
	cfg    Config
	qemu   string
	log    *slog.Logger
	cg     *cgroupHost
	base   []byte // initramfs part shared by every VM: agent, modules, /dev/console
	tscKHz int

	accelOnce sync.Once
	accel     string

	transport string // guestagent.TransportSerial or TransportVsock
	cids      cidSet // context IDs of running VMs (vsock)

	active sandbox.IDs // IDs started and not yet stopped
}

// New validates cfg and checks the host (failures wrap ErrUnsupported). It
// does not boot anything; the accelerator probe runs on the first Start
// (or [Driver.Accel]).
func New(cfg Config) (*Driver, error) {
	if cfg.StateDir == "" || !filepath.IsAbs(cfg.StateDir) {
		return nil, fmt.Errorf("microvm driver: state dir %q must be an absolute path", cfg.StateDir)
	}
	if cfg.AgentPath == "" {
		return nil, fmt.Errorf("microvm driver: %w: no agent binary configured", ErrUnsupported)
	}
	def := func(v *string, d string) {
		if *v == "" {
			*v = d
		}
	}
	def(&cfg.KernelDir, DefaultKernelDir)
	def(&cfg.QEMUPath, DefaultQEMU)
	def(&cfg.Accel, accelAuto)
	def(&cfg.Transport, transportAuto)
	def(&cfg.CgroupParent, DefaultCgroupParent)
	switch cfg.Accel {
	case accelAuto, accelKVM, accelTCG:
	default:
		return nil, fmt.Errorf("microvm driver: accel %q: want auto, kvm or tcg", cfg.Accel)
	}
	if cfg.Limits.MemoryBytes == 0 {
		cfg.Limits.MemoryBytes = DefaultMemoryBytes
	}
	if cfg.Limits.CPUs == 0 {
		cfg.Limits.CPUs = DefaultCPUs
	}
	if cfg.Limits.PIDs == 0 {
		cfg.Limits.PIDs = DefaultPIDs
	}
	if cfg.Limits.NoFile == 0 {
		cfg.Limits.NoFile = DefaultNoFile
	}
	if cfg.MinCPUs == 0 {
		cfg.MinCPUs = DefaultCPUs
	}
	switch {
	case cfg.UID == 0 && cfg.GID == 0:
		cfg.UID, cfg.GID = 65534, 65534
	case cfg.UID < 0 || cfg.GID < 0:
		cfg.UID, cfg.GID = 0, 0
	}
	if cfg.OverheadBytes == 0 {
		cfg.OverheadBytes = DefaultOverheadBytes
	}
	if cfg.TCGCacheMiB == 0 {
		cfg.TCGCacheMiB = DefaultTCGCacheMiB
	}
	if cfg.BootTimeout == 0 {
		cfg.BootTimeout = DefaultBootTimeout
	}
	if cfg.ProbeTimeout == 0 {
		cfg.ProbeTimeout = DefaultProbeTimeout
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	log = log.With("component", componentName)
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("microvm driver: %w: must run as root", ErrUnsupported)
	}
	qemu, err := exec.LookPath(cfg.QEMUPath)
	if err != nil {
		return nil, fmt.Errorf("microvm driver: %w: qemu: %w", ErrUnsupported, err)
	}
	if _, err := os.Stat(filepath.Join(cfg.KernelDir, "vmlinux")); err != nil {
		return nil, fmt.Errorf("microvm driver: %w: kernel (run make vmkernel): %w", ErrUnsupported, err)
	}
	base, err := buildBase(cfg.AgentPath, cfg.KernelDir)
	if err != nil {
		return nil, fmt.Errorf("microvm driver: %w: %w", ErrUnsupported, err)
	}
	if err := sandbox.PrepareStateDir(cfg.StateDir); err != nil {
		return nil, fmt.Errorf("microvm driver: %w", err)
	}
	cg, err := detectCgroups(cfg.CgroupParent)
	if err != nil {
		return nil, fmt.Errorf("microvm driver: %w", err)
	}
	transport, err := chooseTransport(cfg.Transport, vhostVsockDev)
	if err != nil {
		return nil, fmt.Errorf("microvm driver: %w", err)
	}
	khz := cfg.TSCKHz
	if khz == 0 {
		khz = hostTSCKHz()
	}
	d := &Driver{cfg: cfg, qemu: qemu, log: log, cg: cg, base: base, tscKHz: khz, transport: transport}
	if cfg.Accel != accelAuto {
		d.accelOnce.Do(func() { d.accel = cfg.Accel })
	}
	log.Info("microvm sandbox driver ready", "qemu", qemu, "kernel_dir", cfg.KernelDir, "accel", cfg.Accel, "transport", transport)
	return d, nil
}

// buildBase writes the shared initramfs part.
func buildBase(agent, kernelDir string) ([]byte, error) {
	var buf bytes.Buffer
	c := newCpio(&buf, maxInitramfsBytes)
	for _, dir := range []string{"dev", "proc", "sys", "tmp", "var/task", "opt/zfaas"} {
		if err := c.mkdirAll(dir, 0o755); err != nil {
			return nil, err
		}
	}
	if err := c.charDev("dev/console", 0o600, 5, 1); err != nil {
		return nil, err
	}
	if err := c.hostFile("init", agent, 0o755); err != nil {
		return nil, fmt.Errorf("agent: %w", err)
	}
	list, err := os.ReadFile(filepath.Join(kernelDir, "modules.load"))
	if err != nil {
		return nil, fmt.Errorf("modules list (run make vmkernel): %w", err)
	}
	for _, name := range strings.Fields(string(list)) {
		if strings.Contains(name, "/") {
			return nil, fmt.Errorf("bad module name %q", name)
		}
		if err := c.hostFile(strings.TrimPrefix(guestagent.ModulesDir, "/")+"/"+name, filepath.Join(kernelDir, "modules", name), 0o644); err != nil {
			return nil, fmt.Errorf("module: %w", err)
		}
	}
	if err := c.file(strings.TrimPrefix(guestagent.ModulesList, "/"), 0o644, bytes.NewReader(list), int64(len(list))); err != nil {
		return nil, err
	}
	if err := c.close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

func hostTSCKHz() int {
	f, err := os.Open("/proc/cpuinfo")
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(sc.Text(), ":")
		if ok && strings.TrimSpace(k) == "cpu MHz" {
			mhz, err := strconv.ParseFloat(strings.TrimSpace(v), 64)
			if err == nil {
				return int(math.Round(mhz * 1000))
			}
		}
	}
	return 0
}

// Accel returns the accelerator VMs use, running the KVM probe boot first
// when the configuration says "auto" and no probe ran yet.
func (d *Driver) Accel() string {
	d.accelOnce.Do(func() {
		d.accel = accelTCG
		if _, err := os.Stat("/dev/kvm"); err != nil {
			d.log.Info("no /dev/kvm: using TCG")
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), d.cfg.ProbeTimeout)
		defer cancel()
		start := time.Now()
		if err := d.probe(ctx, accelKVM); err != nil {
			d.log.Warn("KVM probe boot failed: using TCG", "err", err, "after", time.Since(start))
			return
		}
		d.log.Info("KVM probe boot succeeded", "after", time.Since(start))
		d.accel = accelKVM
	})
	return d.accel
}

// Transport returns the agent channel VMs use: guestagent.TransportSerial
// or TransportVsock.
func (d *Driver) Transport() string { return d.transport }

// probe boots a VM with only the base initramfs under accel and waits for
// the agent's Ready.
func (d *Driver) probe(ctx context.Context, accel string) error {
	dir, err := os.MkdirTemp(d.cfg.StateDir, "probe-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	vm, err := d.boot(ctx, dir, accel, 128<<20, nil, nil)
	if err != nil {
		return err
	}
	defer vm.kill()
	_, err = vm.waitReady(ctx)
	return err
}

func (d *Driver) validate(spec *sandbox.Spec) error {
	return sandbox.ValidateSpec(spec, d.cfg.UID, d.cfg.GID, func(l sandbox.Limits) error {
		return l.Check(minMemoryBytes, minPIDs)
	})
}

// Start boots a VM for spec and starts spec.Args in it. It returns once the
// agent reports the command started, or an error: sandbox.ErrInvalidSpec,
// ErrInstanceExists, ErrBootFailed. On error nothing of the instance
// remains.
func (d *Driver) Start(ctx context.Context, spec sandbox.Spec) (_ sandbox.Instance, err error) {
	if err := d.validate(&spec); err != nil {
		return nil, err
	}
	if err := d.active.Reserve(spec.ID); err != nil {
		return nil, err
	}
	var cleanups []func()
	defer func() {
		if err != nil {
			for i := len(cleanups) - 1; i >= 0; i-- {
				cleanups[i]()
			}
			d.active.Release(spec.ID)
		}
	}()
	accel := d.Accel()
	t0 := time.Now()
	lim := spec.Limits.WithDefaults(d.cfg.Limits)
	// The function's memory limit is enforced in the guest (its own
	// cgroup); the VM gets at least what the kernel and agent boot in.
	mem := max(lim.MemoryBytes, MinGuestMemoryBytes)
	// A VM's single vCPU is one host thread; a quota below MinCPUs (the
	// worker gives small functions half a core) mostly stretches the boot.
	cpus := max(lim.CPUs, d.cfg.MinCPUs)
	dir := filepath.Join(d.cfg.StateDir, spec.ID)
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, fmt.Errorf("%w: state dir: %w", ErrInstanceExists, err)
	}
	cleanups = append(cleanups, func() { os.RemoveAll(dir) })
	sockets, err := d.writeInitrd(dir, &spec)
	if err != nil {
		return nil, fmt.Errorf("%w: initramfs: %w", ErrBootFailed, err)
	}
	cg, err := d.cg.create(spec.ID, mem+d.cfg.OverheadBytes, cpus, DefaultHostPIDs)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBootFailed, err)
	}
	cleanups = append(cleanups, func() { _ = cg.remove() })
	if spec.BeforeStart != nil {
		if err := spec.BeforeStart(ctx, cg.v2); err != nil {
			return nil, fmt.Errorf("start instance %s: before start: %w", spec.ID, err)
		}
	}
	proxy, proxyCmd, err := d.startProxy(cg)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBootFailed, err)
	}
	cleanups = append(cleanups, func() { proxy.close(); _ = proxyCmd.Process.Kill(); _ = proxyCmd.Wait() })
	bootCtx, cancel := context.WithTimeout(ctx, d.cfg.BootTimeout)
	defer cancel()
	vm, err := d.boot(bootCtx, dir, accel, mem, cg, nil)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBootFailed, err)
	}
	cleanups = append(cleanups, vm.kill)
	ready, err := vm.waitReady(bootCtx)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", ErrBootFailed, err)
	}
	readyAt := time.Now()

	inst := &Instance{
		id: spec.ID, d: d, dir: dir, cg: cg, vm: vm, proxy: proxy, proxyCmd: proxyCmd,
		stdout: spec.Stdout, stderr: spec.Stderr, done: make(chan struct{}),
		Boot: BootTimes{
			Total:        readyAt.Sub(t0),
			QEMU:         vm.started.Sub(t0),
			KernelToInit: time.Duration(ready.AgentStartNanos),
			InitToReady:  time.Duration(ready.ReadyNanos - ready.AgentStartNanos),
			Accel:        accel,
			Transport:    ready.Transport,
		},
	}
	gcfg := guestagent.Config{Args: spec.Args, Env: spec.Env, WorkDir: spec.WorkDir, UnixNanos: time.Now().UnixNano(),
		UID: d.cfg.UID, GID: d.cfg.GID,
		MemoryBytes: lim.MemoryBytes, PIDs: lim.PIDs, NoFile: lim.NoFile, TmpBytes: lim.TmpBytes}
	if gcfg.WorkDir == "" {
		gcfg.WorkDir = sandbox.TaskRoot
	}
	var forwards []string
	for _, e := range spec.Env {
		k, v, _ := strings.Cut(e, "=")
		switch k {
		case "AWS_LAMBDA_RUNTIME_API", "ZFAAS_GATEWAY_GRPC":
			if _, _, err := net.SplitHostPort(v); err == nil {
				gcfg.Listen = append(gcfg.Listen, v)
				forwards = append(forwards, v)
			}
		case "ZFAAS_GATEWAY":
			// Calls to other functions: the guest has no NIC, so the
			// gateway's loopback address is served in the guest and dialled
			// by the host proxy, inside the instance's cgroup (egress rules
			// apply). A gateway on another host is not reachable from a VM.
			if u, err := url.Parse(v); err == nil && u.Port() != "" {
				if ip := net.ParseIP(u.Hostname()); ip != nil && ip.IsLoopback() {
					gcfg.Listen = append(gcfg.Listen, u.Host)
					forwards = append(forwards, u.Host)
				}
			}
		case "PORT":
			port, err := strconv.Atoi(v)
			if err != nil || port <= 0 || port > 65535 {
				continue
			}
			addr := net.JoinHostPort("127.0.0.1", v)
			if err := proxy.listen(ctx, addr, func(c net.Conn) { inst.toGuest(c, port) }); err != nil {
				return nil, fmt.Errorf("%w: listen %s: %w", ErrBootFailed, addr, err)
			}
		}
	}
	inst.forwards = forwards
	for _, s := range sockets {
		gcfg.Sockets = append(gcfg.Sockets, s.guest)
		inst.sockets = append(inst.sockets, s.host)
	}
	vm.mux.OnOpen = inst.fromGuest
	if err := vm.mux.SendJSON(guestagent.TConfig, gcfg); err != nil {
		return nil, fmt.Errorf("%w: send config: %w", ErrBootFailed, err)
	}
	f, err := vm.next(bootCtx)
	if err != nil {
		return nil, fmt.Errorf("%w: wait for start: %w", ErrBootFailed, err)
	}
	var st guestagent.Started
	if f.Type != guestagent.TStarted || json.Unmarshal(f.Payload, &st) != nil {
		return nil, fmt.Errorf("%w: unexpected frame %d", ErrBootFailed, f.Type)
	}
	if st.Error != "" {
		return nil, fmt.Errorf("%w: start %s in the guest: %s", ErrBootFailed, spec.Args[0], st.Error)
	}
	go inst.run()
	d.log.Info("micro-VM started", "id", spec.ID, "accel", accel, "boot", inst.Boot.Total,
		"kernel_to_init", inst.Boot.KernelToInit, "init_to_ready", inst.Boot.InitToReady)
	return inst, nil
}

// unixForward is a host Unix socket found in Spec.Mounts and the guest
// path the agent serves it at.
type unixForward struct {
	host, guest string
}

// writeInitrd writes the shared part followed by the instance's code and
// mounts. It returns the Unix sockets found in the mounts (not in the code
// dir), which the agent serves in the guest and the driver forwards.
func (d *Driver) writeInitrd(dir string, spec *sandbox.Spec) ([]unixForward, error) {
	f, err := os.OpenFile(filepath.Join(dir, initrdName), os.O_CREATE|os.O_EXCL|os.O_WRONLY, 0o600)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if _, err := f.Write(d.base); err != nil {
		return nil, err
	}
	c := newCpio(f, maxInitramfsBytes-int64(len(d.base)))
	if err := c.tree(spec.CodeDir, sandbox.TaskRoot, nil); err != nil {
		return nil, fmt.Errorf("code dir: %w", err)
	}
	var sockets []unixForward
	seen := map[string]bool{}
	onSocket := func(host, guest string) error {
		switch {
		case len(sockets) == guestagent.MaxSockets:
			return fmt.Errorf("more than %d sockets in the mounts", guestagent.MaxSockets)
		case len(guest) > guestagent.MaxSocketPath:
			return fmt.Errorf("socket %s: guest path over %d bytes", guest, guestagent.MaxSocketPath)
		case seen[guest]:
			return fmt.Errorf("socket %s mounted twice", guest)
		}
		seen[guest] = true
		sockets = append(sockets, unixForward{host: host, guest: guest})
		return nil
	}
	for _, m := range spec.Mounts {
		fi, err := os.Stat(m.Source)
		if err != nil {
			return nil, err
		}
		switch {
		case fi.IsDir():
			err = c.tree(m.Source, m.Target, onSocket)
		case fi.Mode().IsRegular():
			err = c.hostFile(strings.TrimPrefix(m.Target, "/"), m.Source, uint32(fi.Mode().Perm())&^0o222)
		case fi.Mode().Type() == fs.ModeSocket:
			err = onSocket(m.Source, m.Target)
		}
		if err != nil {
			return nil, fmt.Errorf("mount %s: %w", m.Source, err)
		}
	}
	if err := c.close(); err != nil {
		return nil, err
	}
	return sockets, f.Close()
}

// startProxy runs "agent host-proxy" inside cg.
func (d *Driver) startProxy(cg *vmCgroup) (*proxyClient, *exec.Cmd, error) {
	p, theirs, err := newProxyPair()
	if err != nil {
		return nil, nil, err
	}
	defer theirs.Close()
	cmd := exec.Command(d.cfg.AgentPath, "host-proxy")
	cmd.ExtraFiles = []*os.File{theirs}
	if err := startInCgroup(cmd, cg); err != nil {
		p.close()
		return nil, nil, fmt.Errorf("start host proxy: %w", err)
	}
	go p.run()
	return p, cmd, nil
}

// startInCgroup starts cmd directly in cg's v2 directory and adds it to
// the v1 ones.
func startInCgroup(cmd *exec.Cmd, cg *vmCgroup) error {
	if cg == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL}
		return cmd.Start()
	}
	dirf, err := os.Open(cg.v2)
	if err != nil {
		return err
	}
	defer dirf.Close()
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true, Pdeathsig: syscall.SIGKILL, UseCgroupFD: true, CgroupFD: int(dirf.Fd())}
	if err := cmd.Start(); err != nil {
		return err
	}
	if err := cg.addV1(cmd.Process.Pid); err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return err
	}
	return nil
}

// vm is one running QEMU with its agent channel.
type vm struct {
	cmd     *exec.Cmd
	started time.Time
	ch      channel
	mux     *guestagent.Mux
	exited  chan struct{}
	waitErr error
	stderr  *bytes.Buffer // QEMU's; read only after exited is closed
	log     string
}

// boot starts QEMU for the initramfs in dir (or the base one when dir has
// none) and accepts the agent channel.
func (d *Driver) boot(ctx context.Context, dir, accel string, mem int64, cg *vmCgroup, _ []string) (*vm, error) {
	initrd := filepath.Join(dir, initrdName)
	if _, err := os.Stat(initrd); err != nil {
		if err := os.WriteFile(initrd, d.base, 0o600); err != nil {
			return nil, err
		}
	}
	ch, err := d.newChannel(dir)
	if err != nil {
		return nil, err
	}
	args := qemuArgs(accel, d.cfg.TCGCacheMiB, mem, d.tscKHz, d.cfg.KernelDir, initrd, filepath.Join(dir, serialLogName), ch)
	cmd := exec.Command(d.qemu, args...)
	cmd.Stdout = io.Discard
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	v := &vm{cmd: cmd, ch: ch, exited: make(chan struct{}), stderr: &stderr, log: filepath.Join(dir, serialLogName)}
	if err := startInCgroup(cmd, cg); err != nil {
		ch.close()
		return nil, fmt.Errorf("start qemu: %w", err)
	}
	v.started = time.Now()
	// The channel (its context ID) is released once QEMU is gone.
	go func() { v.waitErr = cmd.Wait(); ch.close(); close(v.exited) }()
	type conn struct {
		c   net.Conn
		err error
	}
	connCtx, cancel := context.WithCancel(ctx)
	defer cancel()
	res := make(chan conn, 1)
	go func() { c, err := ch.connect(connCtx); res <- conn{c, err} }()
	select {
	case r := <-res:
		if r.err != nil {
			v.kill()
			return nil, fmt.Errorf("connect agent channel: %w", r.err)
		}
		v.mux = guestagent.NewMux(r.c, false)
		go v.mux.Run()
		return v, nil
	case <-v.exited:
		cancel()
		if r := <-res; r.c != nil {
			r.c.Close()
		}
		return nil, fmt.Errorf("qemu exited: %v: %s", v.waitErr, strings.TrimSpace(lastLines(stderr.String(), 5)))
	case <-ctx.Done():
		v.kill()
		return nil, fmt.Errorf("qemu did not connect the agent channel: %w", ctx.Err())
	}
}

func qemuArgs(accel string, tbMiB int, mem int64, tscKHz int, kernelDir, initrd, serial string, ch channel) []string {
	acc := accel
	cpu := "max"
	if accel == accelTCG {
		acc = fmt.Sprintf("tcg,tb-size=%d", tbMiB)
	} else {
		cpu = "host"
	}
	cmdline := "console=ttyS0 quiet reboot=t panic=-1 tsc=reliable rdinit=/init"
	if tscKHz > 0 {
		cmdline += " tsc_early_khz=" + strconv.Itoa(tscKHz)
	}
	cmdline += " " + ch.cmdline()
	return append([]string{
		"-M", "microvm,x-option-roms=off,rtc=off",
		"-accel", acc,
		"-cpu", cpu,
		"-smp", "1",
		"-m", strconv.FormatInt(mem>>20, 10) + "M",
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-serial", "file:" + serial,
		"-kernel", filepath.Join(kernelDir, "vmlinux"),
		"-initrd", initrd,
		"-append", cmdline,
		// The host's system directories, read-only over virtio-9p, as the
		// process driver binds them: interpreters and their libraries.
		"-fsdev", "local,id=hostusr,path=/usr,security_model=none,readonly=on",
		"-device", "virtio-9p-device,fsdev=hostusr,mount_tag=" + guestagent.TagUsr,
		"-fsdev", "local,id=hostlib,path=/usr/lib,security_model=none,readonly=on",
		"-device", "virtio-9p-device,fsdev=hostlib,mount_tag=" + guestagent.TagLib,
		"-fsdev", "local,id=hostetc,path=/etc,security_model=none,readonly=on",
		"-device", "virtio-9p-device,fsdev=hostetc,mount_tag=" + guestagent.TagEtc,
	}, ch.qemuArgs()...)
}

func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, " | ")
}

// next returns the next control frame or fails when ctx ends or QEMU exits.
func (v *vm) next(ctx context.Context) (guestagent.Frame, error) {
	type res struct {
		f   guestagent.Frame
		err error
	}
	ch := make(chan res, 1)
	go func() { f, err := v.mux.Next(); ch <- res{f, err} }()
	select {
	case r := <-ch:
		return r.f, r.err
	case <-ctx.Done():
		return guestagent.Frame{}, ctx.Err()
	}
}

func (v *vm) waitReady(ctx context.Context) (guestagent.Ready, error) {
	var r guestagent.Ready
	f, err := v.next(ctx)
	if err != nil {
		return r, fmt.Errorf("wait for agent ready: %w (serial: %s%s)", err, v.serialTail(), v.exitDetail())
	}
	if f.Type != guestagent.TReady || json.Unmarshal(f.Payload, &r) != nil {
		return r, fmt.Errorf("agent sent frame %d, want ready", f.Type)
	}
	if r.Version != guestagent.Version {
		return r, fmt.Errorf("agent speaks protocol %d, want %d (rebuild the agent)", r.Version, guestagent.Version)
	}
	if r.Error != "" {
		return r, fmt.Errorf("agent setup: %s", r.Error)
	}
	return r, nil
}

// exitDetail describes QEMU's end when it has ended (after a short grace:
// the channel usually closes just before the process is reaped).
func (v *vm) exitDetail() string {
	select {
	case <-v.exited:
	case <-time.After(100 * time.Millisecond):
		return ""
	}
	return fmt.Sprintf("; qemu: %v: %s", v.waitErr, lastLines(v.stderr.String(), 3))
}

func (v *vm) serialTail() string {
	b, _ := os.ReadFile(v.log)
	return lastLines(string(b), 5)
}

func (v *vm) kill() {
	_ = v.cmd.Process.Kill()
	<-v.exited
	if v.mux != nil {
		v.mux.Close()
	}
}

// Reasons sent to the guest when a stream it opened is refused.
var (
	errNoForward     = errors.New("no such forward")
	errForwardFailed = errors.New("host dial failed")
)
