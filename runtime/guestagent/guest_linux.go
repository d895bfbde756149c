//go:build linux

package guestagent

import (
	"bufio"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// Guest paths inside the initramfs.
const (
	// ModulesDir holds the kernel modules and ModulesList, the file names
	// to load in order.
	ModulesDir  = "/lib/zfaas/modules"
	ModulesList = "/lib/zfaas/modules.load"
	// TagUsr, TagLib and TagEtc are the virtio-9p mount tags of the host's
	// /usr, /usr/lib and /etc (read-only).
	TagUsr      = "hostusr"
	TagLib      = "hostlib"
	TagEtc      = "hostetc"
	portTimeout = 20 * time.Second
)

func boottime() int64 {
	var ts unix.Timespec
	_ = unix.ClockGettime(unix.CLOCK_BOOTTIME, &ts)
	return ts.Nano()
}

// RunGuest is the agent's main as PID 1. It returns only on a fatal error
// (the caller then powers the VM off).
func RunGuest() error {
	start := boottime()
	setupErr := SetupGuest()
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return fmt.Errorf("read kernel command line: %w", errors.Join(setupErr, err))
	}
	tr, err := TransportFromCmdline(string(cmdline))
	if err != nil {
		return errors.Join(setupErr, err)
	}
	port, err := tr.Open(portTimeout)
	if err != nil {
		return fmt.Errorf("open agent channel (%s): %w", tr.Name(), errors.Join(setupErr, err))
	}
	m := NewMux(port, true)
	ready := Ready{Version: Version, AgentStartNanos: start, Kernel: kernelRelease(), Transport: tr.Name()}
	if setupErr != nil {
		ready.Error = setupErr.Error()
	}
	go m.Run()
	ready.ReadyNanos = boottime()
	if err := m.SendJSON(TReady, ready); err != nil {
		return err
	}
	if setupErr != nil {
		return setupErr
	}
	f, err := m.Next()
	if err != nil {
		return fmt.Errorf("wait for config: %w", err)
	}
	if f.Type != TConfig {
		return fmt.Errorf("want config frame, got type %d", f.Type)
	}
	var cfg Config
	if err := json.Unmarshal(f.Payload, &cfg); err != nil {
		return fmt.Errorf("parse config: %w", err)
	}
	if cfg.UnixNanos > 0 {
		tv := unix.NsecToTimeval(cfg.UnixNanos)
		_ = unix.Settimeofday(&tv)
	}
	if len(cfg.Args) == 0 {
		return nil // probe: power off
	}
	m.OnOpen = func(s *Stream, o Open) {
		if o.Kind != StreamTCP || o.Port <= 0 || o.Port > 65535 {
			s.Reject(errors.New("bad port"))
			return
		}
		c, err := dialFunction(o.Port, functionStartWait)
		if err != nil {
			s.Reject(err)
			return
		}
		if err := s.Accept(); err != nil {
			c.Close()
			return
		}
		Bridge(s, c)
	}
	for i, addr := range cfg.Listen {
		l, err := net.Listen("tcp4", addr)
		if err != nil {
			_ = m.SendJSON(TStarted, Started{Error: fmt.Sprintf("listen %s: %v", addr, err)})
			return err
		}
		go forward(m, l, Open{Forward: i})
	}
	if err := checkSockets(cfg.Sockets); err != nil {
		_ = m.SendJSON(TStarted, Started{Error: err.Error()})
		return err
	}
	for i, p := range cfg.Sockets {
		l, err := listenUnix(p, cfg.UID, cfg.GID)
		if err != nil {
			_ = m.SendJSON(TStarted, Started{Error: err.Error()})
			return err
		}
		go forward(m, l, Open{Kind: StreamUnix, Forward: i})
	}
	cgfd, err := applyLimits(cfg)
	if err != nil {
		_ = m.SendJSON(TStarted, Started{Error: err.Error()})
		return err
	}
	exit := runCommand(m, cfg, cgfd)
	_ = m.SendJSON(TExit, exit)
	// Give the host a moment to read the exit before the VM goes away.
	time.Sleep(50 * time.Millisecond)
	return nil
}

// checkSockets validates Config.Sockets against the protocol's bounds.
func checkSockets(paths []string) error {
	if len(paths) > MaxSockets {
		return fmt.Errorf("%d sockets, at most %d", len(paths), MaxSockets)
	}
	for _, p := range paths {
		if !filepath.IsAbs(p) || filepath.Clean(p) != p || len(p) > MaxSocketPath {
			return fmt.Errorf("socket path %q: want a clean absolute path of at most %d bytes", p, MaxSocketPath)
		}
	}
	return nil
}

// listenUnix listens on the guest socket p (creating its directory) with
// mode 0600 owned by uid:gid, the command's user.
func listenUnix(p string, uid, gid int) (net.Listener, error) {
	if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
		return nil, fmt.Errorf("socket %s: %w", p, err)
	}
	l, err := net.Listen("unix", p)
	if err != nil {
		return nil, fmt.Errorf("socket %s: %w", p, err)
	}
	if err := os.Chmod(p, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("socket %s: %w", p, err)
	}
	if err := os.Lchown(p, uid, gid); err != nil {
		l.Close()
		return nil, fmt.Errorf("socket %s: %w", p, err)
	}
	return l, nil
}

// forward opens a stream described by o for every connection l accepts
// and bridges the two.
func forward(m *Mux, l net.Listener, o Open) {
	for {
		c, err := l.Accept()
		if err != nil {
			return
		}
		go func() {
			s, err := m.OpenStream(o, 10*time.Second)
			if err != nil {
				c.Close()
				return
			}
			Bridge(s, c)
		}()
	}
}

type frameWriter struct {
	m   *Mux
	typ byte
}

func (w frameWriter) Write(p []byte) (int, error) {
	for off := 0; off < len(p); off += chunk {
		if err := w.m.Send(w.typ, p[off:min(len(p), off+chunk)]); err != nil {
			return off, err
		}
	}
	return len(p), nil
}

// FunctionCgroup is the guest cgroup (under the cgroup2 mount at
// /sys/fs/cgroup) the command runs in when Config sets a memory or PID
// limit.
const FunctionCgroup = "/sys/fs/cgroup/function"

// applyLimits sets up Config's limits: /tmp's size, RLIMIT_NOFILE (on the
// agent itself, so the command inherits it; the agent needs few files) and
// the function's cgroup. It returns an open directory descriptor of the
// cgroup to start the command in, or -1 when there is none.
func applyLimits(cfg Config) (int, error) {
	if cfg.TmpBytes > 0 {
		if err := unix.Mount("tmpfs", "/tmp", "tmpfs", unix.MS_REMOUNT|unix.MS_NOSUID|unix.MS_NODEV,
			"mode=1777,size="+strconv.FormatInt(cfg.TmpBytes, 10)); err != nil {
			return -1, fmt.Errorf("size /tmp: %w", err)
		}
	}
	if cfg.NoFile > 0 {
		// syscall's Setrlimit, not unix's: the runtime then stops restoring
		// its own start-up limit in children.
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &syscall.Rlimit{Cur: cfg.NoFile, Max: cfg.NoFile}); err != nil {
			return -1, fmt.Errorf("nofile limit: %w", err)
		}
	}
	if cfg.MemoryBytes <= 0 && cfg.PIDs <= 0 {
		return -1, nil
	}
	root := filepath.Dir(FunctionCgroup)
	if err := os.MkdirAll(root, 0o755); err != nil {
		return -1, err
	}
	if err := unix.Mount("cgroup2", root, "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil && !errors.Is(err, unix.EBUSY) {
		return -1, fmt.Errorf("mount cgroup2: %w", err)
	}
	if err := os.WriteFile(filepath.Join(root, "cgroup.subtree_control"), []byte("+memory +pids"), 0); err != nil {
		return -1, fmt.Errorf("enable memory and pids controllers: %w", err)
	}
	if err := os.Mkdir(FunctionCgroup, 0o755); err != nil && !errors.Is(err, os.ErrExist) {
		return -1, err
	}
	set := func(file string, v int64) error {
		if v <= 0 {
			return nil
		}
		if err := os.WriteFile(filepath.Join(FunctionCgroup, file), []byte(strconv.FormatInt(v, 10)), 0); err != nil {
			return fmt.Errorf("%s: %w", file, err)
		}
		return nil
	}
	if err := errors.Join(set("memory.max", cfg.MemoryBytes), set("pids.max", cfg.PIDs)); err != nil {
		return -1, err
	}
	fd, err := unix.Open(FunctionCgroup, unix.O_DIRECTORY|unix.O_RDONLY|unix.O_CLOEXEC, 0)
	if err != nil {
		return -1, err
	}
	return fd, nil
}

func runCommand(m *Mux, cfg Config, cgroupFD int) Exit {
	cmd := exec.Command(cfg.Args[0], cfg.Args[1:]...)
	cmd.Env = cfg.Env
	cmd.Dir = cfg.WorkDir
	cmd.Stdout = frameWriter{m, TStdout}
	cmd.Stderr = frameWriter{m, TStderr}
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if cgroupFD >= 0 {
		cmd.SysProcAttr.UseCgroupFD, cmd.SysProcAttr.CgroupFD = true, cgroupFD
	}
	if cfg.UID != 0 || cfg.GID != 0 {
		cmd.SysProcAttr.Credential = &syscall.Credential{Uid: uint32(cfg.UID), Gid: uint32(cfg.GID)}
	}
	if err := cmd.Start(); err != nil {
		_ = m.SendJSON(TStarted, Started{Error: err.Error()})
		return Exit{Code: -1, Error: err.Error()}
	}
	_ = m.SendJSON(TStarted, Started{Pid: cmd.Process.Pid})
	err := cmd.Wait()
	var ee *exec.ExitError
	switch {
	case err == nil:
		return Exit{}
	case errors.As(err, &ee):
		ws, _ := ee.Sys().(syscall.WaitStatus)
		if ws.Signaled() {
			return Exit{Code: -1, Signal: ws.Signal().String()}
		}
		return Exit{Code: ws.ExitStatus()}
	default:
		return Exit{Code: -1, Error: err.Error()}
	}
}

// SetupGuest mounts the pseudo file systems, loads the modules in
// ModulesList, mounts the host's shares and brings up the loopback
// interface. RunGuest calls it first; it must run as PID 1 of a guest.
func SetupGuest() error {
	var errs []error
	for _, mt := range []struct {
		src, dst, fs string
		flags        uintptr
		data         string
	}{
		{"proc", "/proc", "proc", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"sysfs", "/sys", "sysfs", unix.MS_NOSUID | unix.MS_NODEV | unix.MS_NOEXEC, ""},
		{"devtmpfs", "/dev", "devtmpfs", unix.MS_NOSUID, "mode=0755"},
		{"tmpfs", "/tmp", "tmpfs", unix.MS_NOSUID | unix.MS_NODEV, "mode=1777"},
	} {
		if err := os.MkdirAll(mt.dst, 0o755); err != nil {
			errs = append(errs, err)
			continue
		}
		if err := unix.Mount(mt.src, mt.dst, mt.fs, mt.flags, mt.data); err != nil && !errors.Is(err, unix.EBUSY) {
			errs = append(errs, fmt.Errorf("mount %s: %w", mt.dst, err))
		}
	}
	if err := loadModules(); err != nil {
		errs = append(errs, err)
	}
	// After the modules (9p comes from them, and /lib/zfaas is hidden
	// once the host's /usr/lib is mounted on /lib): the host's system
	// directories, read-only. A share the host did not offer is skipped.
	for _, sh := range []struct{ tag, dst string }{{TagUsr, "/usr"}, {TagLib, "/lib"}, {TagEtc, "/etc"}} {
		if err := os.MkdirAll(sh.dst, 0o755); err != nil {
			errs = append(errs, err)
			continue
		}
		err := unix.Mount(sh.tag, sh.dst, "9p", unix.MS_RDONLY|unix.MS_NOSUID|unix.MS_NODEV, "trans=virtio,version=9p2000.L,msize=262144,cache=loose")
		if err != nil && !errors.Is(err, unix.ENOENT) && !errors.Is(err, unix.ENODEV) {
			errs = append(errs, fmt.Errorf("mount %s (%s): %w", sh.dst, sh.tag, err))
		}
	}
	for link, target := range map[string]string{"/bin": "usr/bin", "/sbin": "usr/sbin", "/lib64": "usr/lib64"} {
		if _, err := os.Lstat(link); errors.Is(err, os.ErrNotExist) {
			_ = os.Symlink(target, link)
		}
	}
	if err := loopbackUp(); err != nil {
		errs = append(errs, fmt.Errorf("loopback: %w", err))
	}
	return errors.Join(errs...)
}

func loadModules() error {
	f, err := os.Open(ModulesList)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	} else if err != nil {
		return err
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		name := strings.TrimSpace(sc.Text())
		if name == "" || strings.Contains(name, "/") {
			continue
		}
		mf, err := os.Open(filepath.Join(ModulesDir, name))
		if err != nil {
			return fmt.Errorf("module %s: %w", name, err)
		}
		err = unix.FinitModule(int(mf.Fd()), "", 0)
		mf.Close()
		if err != nil && !errors.Is(err, unix.EEXIST) {
			return fmt.Errorf("load module %s: %w", name, err)
		}
	}
	return sc.Err()
}

func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return err
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return err
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return err
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	return unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr)
}

func kernelRelease() string {
	var u unix.Utsname
	if unix.Uname(&u) != nil {
		return ""
	}
	return unix.ByteSliceToString(u.Release[:])
}

func findPort() string {
	ports, _ := filepath.Glob("/sys/class/virtio-ports/vport*")
	for _, p := range ports {
		b, err := os.ReadFile(filepath.Join(p, "name"))
		if err == nil && strings.TrimSpace(string(b)) == PortName {
			return "/dev/" + filepath.Base(p)
		}
	}
	return ""
}

// connected reports whether the host end is open: poll says POLLHUP while
// it is not.
func connected(f *os.File) bool {
	fds := []unix.PollFd{{Fd: int32(f.Fd()), Events: unix.POLLOUT}}
	n, err := unix.Poll(fds, 0)
	return err == nil && n > 0 && fds[0].Revents&unix.POLLHUP == 0
}

// PowerOff ends the VM: the driver runs QEMU with -no-reboot, so a reboot
// request stops it.
func PowerOff() {
	unix.Sync()
	_ = unix.Reboot(unix.LINUX_REBOOT_CMD_RESTART)
	os.Exit(1)
}

// functionStartWait bounds how long a connection from the host waits for
// the function to listen on its port: the host side accepts on the
// function's behalf as soon as the VM runs, before the function in the
// guest has opened the port.
const functionStartWait = 30 * time.Second

// dialFunction connects to the function's port in the guest, retrying
// while the port refuses connections (the function is still starting), up
// to wait.
func dialFunction(port int, wait time.Duration) (net.Conn, error) {
	addr := net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	deadline := time.Now().Add(wait)
	for {
		c, err := net.DialTimeout("tcp4", addr, 5*time.Second)
		if err == nil || !errors.Is(err, syscall.ECONNREFUSED) || time.Now().After(deadline) {
			return c, err
		}
		time.Sleep(20 * time.Millisecond)
	}
}
