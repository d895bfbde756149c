//go:build linux

package process

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/zfaas/zfaas/runtime/sandbox"
)

const fakeWorkerEnv = "ZFAAS_TEST_FAKE_WORKER" // value: state dir

// runFakeWorker is the test binary acting as a worker process: it starts
// one instance from a thread that then exits, reports the instance and its
// cgroups on stdout, and waits to be killed.
func runFakeWorker() {
	// Keep the main thread (which Go never terminates) for this goroutine,
	// so the goroutine below runs on a thread that can die.
	runtime.LockOSThread()
	fail := func(err error) {
		fmt.Println("error", err)
		os.Exit(1)
	}
	d, err := New(Config{StateDir: os.Getenv(fakeWorkerEnv), CgroupParent: testCgroupParent})
	if err != nil {
		fail(err)
	}
	code := os.Getenv("ZFAAS_TEST_CODE")
	// Start from a goroutine that exits locked to its thread, which
	// terminates the thread: the instance must survive its caller's
	// thread (the parent-death signal is tied to the forking thread).
	var si sandbox.Instance
	done := make(chan struct{})
	go func() {
		runtime.LockOSThread()
		si, err = d.Start(context.Background(), sandbox.Spec{ID: "orphan", CodeDir: code, Args: []string{"/bin/sleep", "600"}})
		close(done)
	}()
	<-done
	if err != nil {
		fail(err)
	}
	inst := si.(*Instance)
	time.Sleep(200 * time.Millisecond)
	fmt.Println("instance", inst.Pid(), strings.Join(inst.cg.procDirs(), " "))
	select {}
}

// TestWorkerDeathKillsInstances checks that instances do not outlive the
// worker process (parent-death signal), and not the threads it retires.
func TestWorkerDeathKillsInstances(t *testing.T) {
	newTestDriver(t) // skips when unsupported
	state := filepath.Join(t.TempDir(), "state")
	cmd := exec.Command("/proc/self/exe", "-test.run=^$")
	cmd.Env = append(os.Environ(), fakeWorkerEnv+"="+state, "ZFAAS_TEST_CODE="+codeDir(t, nil))
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	fields := strings.Fields(line)
	if err != nil || len(fields) < 3 || fields[0] != "instance" {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		t.Fatalf("fake worker said %q, %v", line, err)
	}
	var pid int
	fmt.Sscan(fields[1], &pid)
	cgroups := fields[2:]
	t.Cleanup(func() {
		for _, dir := range cgroups {
			_ = os.Remove(dir)
			_ = os.Remove(filepath.Dir(dir)) // the fake worker's parent
		}
		_ = os.RemoveAll(state)
	})

	if err := syscall.Kill(pid, 0); err != nil {
		t.Errorf("instance pid %d gone while the worker runs: %v", pid, err)
	}
	_ = cmd.Process.Kill()
	_ = cmd.Wait()
	waitFor(t, 10*time.Second, "the instance to die with its worker", func() bool {
		return errors.Is(syscall.Kill(pid, 0), syscall.ESRCH)
	})
}
