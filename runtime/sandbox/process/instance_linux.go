//go:build linux

package process

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/zfaas/zfaas/runtime/sandbox"
)

var _ sandbox.Instance = (*Instance)(nil)

// Instance is one running process sandbox. Its methods are safe for
// concurrent use.
type Instance struct {
	id  string
	drv *Driver
	log *slog.Logger
	dir string // state dir of this instance
	cg  *instanceCgroups
	cmd *exec.Cmd // nil until spawned

	done     chan struct{}
	err      error       // written before done is closed
	stopping atomic.Bool // set when Stop starts killing
	stopSem  chan struct{}
	stopped  bool // guarded by stopSem
}

// ID returns Spec.ID.
func (i *Instance) ID() string { return i.id }

// Done is closed when the instance's main process (PID 1 of its PID
// namespace) has exited; the kernel has then killed the rest of it.
func (i *Instance) Done() <-chan struct{} { return i.done }

// Err reports why the main process exited, once Done is closed: nil for
// exit status 0, an error wrapping ErrStopped if Stop killed it,
// ErrOOMKilled if it failed after an OOM kill in its memory cgroup, and
// otherwise an error wrapping the *exec.ExitError. Before Done it is nil.
func (i *Instance) Err() error {
	select {
	case <-i.done:
		return i.err
	default:
		return nil
	}
}

// CgroupV2Path returns the instance's cgroup v2 directory,
// <cgroup2 mount>/<CgroupParent>/<ID>. It exists from Start until Stop.
func (i *Instance) CgroupV2Path() string { return i.cg.v2Path }

// Pid returns the host PID of the instance's main process.
func (i *Instance) Pid() int { return i.cmd.Process.Pid }

func (i *Instance) wait() {
	err := i.cmd.Wait()
	switch {
	case err == nil:
	case i.stopping.Load():
		err = fmt.Errorf("%w: %w", ErrStopped, err)
	default:
		if n, oerr := i.cg.oomKills(); oerr == nil && n > 0 {
			err = fmt.Errorf("%w (%d OOM kills): %w", ErrOOMKilled, n, err)
		} else {
			err = fmt.Errorf("instance exited: %w", err)
		}
	}
	i.log.Debug("instance exited", "err", err)
	i.err = err
	close(i.done)
}

// Stop kills every process of the instance, waits for them, and removes
// its cgroups (v1 and v2) and state directory. It is idempotent and safe to
// call concurrently; it returns early with ctx's error when ctx ends, and
// a later call continues the cleanup.
func (i *Instance) Stop(ctx context.Context) error {
	select {
	case i.stopSem <- struct{}{}:
	case <-ctx.Done():
		return fmt.Errorf("stop instance %s: %w", i.id, ctx.Err())
	}
	defer func() { <-i.stopSem }()
	if i.stopped {
		return nil
	}
	if err := i.teardown(ctx); err != nil {
		return fmt.Errorf("stop instance %s: %w", i.id, err)
	}
	i.stopped = true
	i.drv.active.Release(i.id)
	i.log.Info("instance stopped")
	return nil
}

// teardown kills, waits and removes everything of the instance.
func (i *Instance) teardown(ctx context.Context) error {
	i.stopping.Store(true)
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for n := 0; ; n++ {
		var killErr error
		if n%5 == 0 {
			// Killing PID 1 of the PID namespace makes the kernel kill
			// the rest; the cgroup catches anything else.
			if i.cmd != nil && !closed(i.done) {
				if err := i.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
					killErr = err
				}
			}
			killErr = errors.Join(killErr, i.cg.kill())
		}
		busy, perr := i.cg.populated()
		if (i.cmd == nil || closed(i.done)) && !busy && perr == nil {
			break
		}
		select {
		case <-ctx.Done():
			return errors.Join(fmt.Errorf("wait for processes to exit: %w", ctx.Err()), killErr, perr)
		case <-tick.C:
		case <-i.done:
		}
	}
	for {
		err := i.cg.remove()
		if err == nil {
			break
		}
		select {
		case <-ctx.Done():
			return errors.Join(ctx.Err(), err)
		case <-tick.C:
		}
	}
	return removeStateDir(i.dir)
}

func closed(c <-chan struct{}) bool {
	select {
	case <-c:
		return true
	default:
		return false
	}
}

// removeStateDir removes an instance's state directory. The sandbox's
// mounts live in its own mount namespace and vanish with it; anything
// still mounted under dir in ours is detached first. The directory is
// expected to hold only the empty rootfs mount point, so it is removed
// non-recursively: nothing mounted or unexpected is ever deleted.
func removeStateDir(dir string) error {
	mounts, err := readMountinfo("/proc/self/mountinfo")
	if err != nil {
		return err
	}
	var under []string
	for _, m := range mounts {
		if m.mountPoint == dir || strings.HasPrefix(m.mountPoint, dir+"/") {
			under = append(under, m.mountPoint)
		}
	}
	// Deepest first.
	slices.SortFunc(under, func(a, b string) int { return len(b) - len(a) })
	for _, mp := range under {
		if err := unix.Unmount(mp, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) {
			return fmt.Errorf("unmount %s: %w", mp, err)
		}
	}
	for _, p := range []string{filepath.Join(dir, "rootfs"), dir} {
		if err := os.Remove(p); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("remove state dir: %w", err)
		}
	}
	return nil
}

// spawner forks sandbox inits from one OS thread that never exits. The
// kernel sends a child's parent-death signal when the forking *thread*
// exits, so forking from arbitrary runtime threads could kill instances
// whenever the Go runtime retires a thread.
type spawner struct {
	reqs chan spawnReq
}

type spawnReq struct {
	cmd *exec.Cmd
	res chan<- error
}

// newSpawner starts the spawner's goroutine; it lives as long as the
// process (a few KiB and one parked thread per Driver).
func newSpawner() *spawner {
	s := &spawner{reqs: make(chan spawnReq)}
	go func() {
		runtime.LockOSThread() // never unlocked: the thread dies with the process
		for r := range s.reqs {
			r.res <- r.cmd.Start()
		}
	}()
	return s
}

func (s *spawner) start(cmd *exec.Cmd) error {
	res := make(chan error, 1)
	s.reqs <- spawnReq{cmd: cmd, res: res}
	return <-res
}
