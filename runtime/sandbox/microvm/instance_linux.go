//go:build linux

package microvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"sync"
	"time"

	"github.com/zfaas/zfaas/runtime/guestagent"
	"github.com/zfaas/zfaas/runtime/sandbox"
)

// BootTimes is where one instance's cold start went.
type BootTimes struct {
	Total        time.Duration // Start call to agent Ready
	QEMU         time.Duration // Start call to QEMU process running (initramfs, cgroup, proxy)
	KernelToInit time.Duration // guest kernel start to agent main (guest clock)
	InitToReady  time.Duration // agent main to Ready (mounts, modules, channel)
	Accel        string
	Transport    string // the agent channel: guestagent.TransportSerial or TransportVsock
}

// Instance is one running micro-VM. It is safe for concurrent use.
type Instance struct {
	id       string
	d        *Driver
	dir      string
	cg       *vmCgroup
	vm       *vm
	proxy    *proxyClient
	proxyCmd *exec.Cmd
	forwards []string // host TCP addresses, by Config.Listen index
	sockets  []string // host Unix socket paths from Spec.Mounts, by Config.Sockets index
	stdout   io.Writer
	stderr   io.Writer
	// Boot is the instance's cold-start breakdown; immutable.
	Boot BootTimes

	done     chan struct{}
	mu       sync.Mutex
	err      error
	exit     *guestagent.Exit
	stopped  bool
	stopOnce sync.Once
	stopErr  error
}

var _ sandbox.Instance = (*Instance)(nil)

// ID returns Spec.ID.
func (i *Instance) ID() string { return i.id }

// Done is closed when the function's process exited and the VM ended.
func (i *Instance) Done() <-chan struct{} { return i.done }

// CgroupV2Path returns the cgroup v2 directory QEMU and the proxy run in.
func (i *Instance) CgroupV2Path() string { return i.cg.v2 }

// QEMUPid returns the QEMU process id.
func (i *Instance) QEMUPid() int { return i.vm.cmd.Process.Pid }

// Err reports why the instance ended: nil for exit status 0, an error with
// the status or signal, ErrStopped, or ErrVMExited.
func (i *Instance) Err() error {
	i.mu.Lock()
	defer i.mu.Unlock()
	return i.err
}

// run consumes agent frames until the VM exits.
func (i *Instance) run() {
	consumed := make(chan struct{})
	go func() {
		defer close(consumed)
		for {
			f, err := i.vm.mux.Next()
			if err != nil {
				return
			}
			switch f.Type {
			case guestagent.TStdout:
				if i.stdout != nil {
					_, _ = i.stdout.Write(f.Payload)
				}
			case guestagent.TStderr:
				if i.stderr != nil {
					_, _ = i.stderr.Write(f.Payload)
				}
			case guestagent.TExit:
				var e guestagent.Exit
				if json.Unmarshal(f.Payload, &e) == nil {
					i.mu.Lock()
					i.exit = &e
					i.mu.Unlock()
				}
			}
		}
	}()
	<-i.vm.exited
	// Deliver the frames QEMU sent before it ended (output, exit).
	select {
	case <-consumed:
	case <-time.After(time.Second):
		i.vm.mux.Close()
		<-consumed
	}
	i.mu.Lock()
	switch {
	case i.stopped && i.exit == nil:
		i.err = ErrStopped
	case i.exit == nil:
		i.err = fmt.Errorf("%w: %v", ErrVMExited, i.vm.waitErr)
	case i.exit.Signal != "":
		i.err = fmt.Errorf("function killed by signal %s", i.exit.Signal)
	case i.exit.Error != "":
		i.err = fmt.Errorf("function: %s", i.exit.Error)
	case i.exit.Code != 0:
		i.err = fmt.Errorf("function exit status %d", i.exit.Code)
	}
	i.mu.Unlock()
	close(i.done)
}

// fromGuest serves a stream the agent opened for a connection accepted on
// a forwarded guest address or socket: dial the host address, or the host
// socket the index stands for, from the cgroup. The guest only names an
// index; the host paths come from Spec.Mounts.
func (i *Instance) fromGuest(s *guestagent.Stream, o guestagent.Open) {
	var dial func(context.Context) (net.Conn, error)
	switch {
	case o.Kind == guestagent.StreamTCP && o.Forward >= 0 && o.Forward < len(i.forwards):
		addr := i.forwards[o.Forward]
		dial = func(ctx context.Context) (net.Conn, error) { return i.proxy.dial(ctx, addr) }
	case o.Kind == guestagent.StreamUnix && o.Forward >= 0 && o.Forward < len(i.sockets):
		path := i.sockets[o.Forward]
		dial = func(ctx context.Context) (net.Conn, error) { return i.proxy.dialUnix(ctx, path) }
	default:
		s.Reject(errNoForward)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	c, err := dial(ctx)
	cancel()
	if err != nil {
		// The detail names host addresses and paths: log it, tell the
		// guest only that the dial failed.
		i.d.log.Warn("forward from guest failed", "id", i.id, "kind", o.Kind, "forward", o.Forward, "err", err)
		s.Reject(errForwardFailed)
		return
	}
	if err := s.Accept(); err != nil {
		c.Close()
		return
	}
	guestagent.Bridge(s, c)
}

// toGuest tunnels a host connection accepted by the proxy to the guest's
// loopback port.
func (i *Instance) toGuest(c net.Conn, port int) {
	s, err := i.vm.mux.OpenStream(guestagent.Open{Port: port}, 10*time.Second)
	if err != nil {
		c.Close()
		return
	}
	guestagent.Bridge(s, c)
}

// Stop kills QEMU and the proxy, removes the cgroups and the state
// directory. It is idempotent.
func (i *Instance) Stop(ctx context.Context) error {
	i.stopOnce.Do(func() {
		i.mu.Lock()
		i.stopped = true
		i.mu.Unlock()
		_ = i.vm.cmd.Process.Kill()
		i.cg.kill()
		select {
		case <-i.done:
		case <-ctx.Done():
		}
		i.proxy.close()
		_ = i.proxyCmd.Process.Kill()
		_ = i.proxyCmd.Wait()
		var errs []error
		if err := i.cg.remove(); err != nil {
			errs = append(errs, err)
		}
		if err := os.RemoveAll(i.dir); err != nil {
			errs = append(errs, err)
		}
		i.d.active.Release(i.id)
		i.stopErr = errors.Join(errs...)
	})
	return i.stopErr
}
