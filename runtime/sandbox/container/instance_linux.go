//go:build linux

package container

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"os"
	"path/filepath"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/zfaas/zfaas/runtime/sandbox"
)

var _ sandbox.Instance = (*Instance)(nil)

// Instance is one running container sandbox. Its methods are safe for
// concurrent use.
type Instance struct {
	id     string
	drv    *Driver
	log    *slog.Logger
	dir    string // state dir of this instance
	cgPath string // cgroup v2 directory; empty until created
	pid    uint32 // host PID of the main process; set before Start returns

	created    bool               // the container exists in containerd
	hasTask    bool               // the task exists in containerd
	out        *outputPipes       // nil until created
	cancelWait context.CancelFunc // ends the wait call; nil until waiting

	done     chan struct{}
	err      error       // written before done is closed
	waiting  atomic.Bool // the exit watcher runs
	stopping atomic.Bool // set when Stop starts killing
	stopSem  chan struct{}
	stopped  bool // guarded by stopSem
}

// ID returns Spec.ID.
func (i *Instance) ID() string { return i.id }

// Done is closed when the container's main process has exited (its PID
// namespace, and so every process of the instance, is gone) and its output
// has been copied to Spec.Stdout and Spec.Stderr.
func (i *Instance) Done() <-chan struct{} { return i.done }

// Err reports why the main process exited, once Done is closed: nil for
// exit status 0, an error wrapping ErrStopped if Stop killed it,
// ErrOOMKilled if it failed after an OOM kill in its memory cgroup, and
// otherwise an error wrapping an *ExitError (or containerd's error when the
// exit status could not be learnt). Before Done it is nil.
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
func (i *Instance) CgroupV2Path() string { return i.cgPath }

// Pid returns the host PID of the container's main process.
func (i *Instance) Pid() int { return int(i.pid) }

// wait turns the task's exit into Err and closes done. The caller sets
// waiting before it starts wait.
func (i *Instance) wait(exitC <-chan exitResult) {
	st := <-exitC
	code, werr := st.code, st.err
	var err error
	switch {
	case werr != nil:
		err = fmt.Errorf("wait for instance: %w", werr)
	case code == 0:
	case i.stopping.Load():
		err = fmt.Errorf("%w: %w", ErrStopped, &ExitError{Code: code})
	default:
		if n, oerr := i.drv.cg.oomKills(i.id); oerr == nil && n > 0 {
			err = fmt.Errorf("%w (%d OOM kills): %w", ErrOOMKilled, n, &ExitError{Code: code})
		} else {
			err = fmt.Errorf("instance exited: %w", &ExitError{Code: code})
		}
	}
	// The shim closes the output FIFOs once every process holding them is
	// gone; wait for the copy, bounded.
	copied := make(chan struct{})
	go func() {
		i.out.wait()
		close(copied)
	}()
	t := time.NewTimer(ioDrainTimeout)
	select {
	case <-copied:
	case <-t.C:
		i.log.Warn("output not drained after exit", "timeout", ioDrainTimeout)
	}
	t.Stop()
	i.log.Debug("instance exited", "err", err)
	i.err = err
	close(i.done)
}

// Stop kills the container's processes, deletes its task and container in
// containerd, and removes its cgroups (v1 and v2) and state directory. It
// is idempotent and safe to call concurrently; it returns early with ctx's
// error when ctx ends, and a later call continues the cleanup.
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

// teardown kills, waits and removes everything of the instance that
// exists; it serves Stop and failed starts alike.
func (i *Instance) teardown(ctx context.Context) error {
	i.stopping.Store(true)
	a := i.drv.api
	if i.hasTask {
		if err := a.killTask(ctx, i.id); err != nil && !notFound(err) {
			i.log.Debug("kill task", "err", err)
		}
		if i.waiting.Load() {
			select {
			case <-i.done:
			case <-ctx.Done():
				return fmt.Errorf("wait for exit: %w", ctx.Err())
			}
		}
		// Delete refuses a running task; the kill may still be landing.
		tick := time.NewTicker(10 * time.Millisecond)
		for {
			err := a.deleteTask(ctx, i.id)
			if err == nil || notFound(err) {
				break
			}
			select {
			case <-ctx.Done():
				tick.Stop()
				return fmt.Errorf("delete task: %w", errors.Join(err, ctx.Err()))
			case <-tick.C:
			}
		}
		tick.Stop()
		i.hasTask = false
	}
	if i.cancelWait != nil {
		i.cancelWait()
	}
	if i.out != nil {
		i.out.close()
	}
	if i.created {
		if err := a.deleteContainer(ctx, i.id); err != nil && !notFound(err) {
			return fmt.Errorf("delete container: %w", err)
		}
		i.created = false
	}
	// runc removed its cgroups on delete; the v2 directory is ours, and a
	// failed start may have left any. Removal fails with EBUSY while the
	// kernel still accounts exiting tasks: retry briefly.
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for {
		err := i.drv.cg.remove(i.id)
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

// removeStateDir removes an instance's state directory: the root file
// system skeleton (mount points runc created in it; the container's mounts
// lived in its own mount namespace) and the output FIFOs. Nothing in it is
// mounted in the host's namespace, and it is never a mount point, so a
// recursive removal cannot reach into anything bound there; it refuses to
// cross into another file system all the same.
func removeStateDir(dir string) error {
	root, err := os.Lstat(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("remove state dir: %w", err)
	}
	dev := root.Sys().(*syscall.Stat_t).Dev
	err = filepath.WalkDir(dir, func(p string, de fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		fi, err := os.Lstat(p)
		if err != nil {
			return err
		}
		if fi.Sys().(*syscall.Stat_t).Dev != dev {
			return fmt.Errorf("%s is on another file system (still mounted?)", p)
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("remove state dir: %w", err)
	}
	if err := os.RemoveAll(dir); err != nil {
		return fmt.Errorf("remove state dir: %w", err)
	}
	return nil
}
