//go:build linux

package container

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sync"
	"syscall"

	containersapi "github.com/containerd/containerd/api/services/containers/v1"
	tasksapi "github.com/containerd/containerd/api/services/tasks/v1"
	versionapi "github.com/containerd/containerd/api/services/version/v1"
	"github.com/containerd/fifo"
	specs "github.com/opencontainers/runtime-spec/specs-go"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/types/known/anypb"
)

// The driver speaks containerd's gRPC API directly (the API module's
// generated stubs) rather than through containerd's Go client: the 1.7
// client's oci package does not build against the runtime-spec version
// this module uses, and the driver needs only a handful of calls.

// specTypeURL is the type URL containerd registers for an OCI runtime spec
// carried in a protobuf Any (JSON-encoded).
const specTypeURL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"

// namespaceHeader is the gRPC metadata key carrying the containerd namespace.
const namespaceHeader = "containerd-namespace"

// api is a connection to containerd's gRPC services, bound to one
// namespace. It is safe for concurrent use.
type api struct {
	conn       *grpc.ClientConn
	ns         string
	containers containersapi.ContainersClient
	tasks      tasksapi.TasksClient
	version    versionapi.VersionClient
}

func dialAPI(address, ns string) (*api, error) {
	conn, err := grpc.NewClient("unix://"+address,
		grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		return nil, err
	}
	return &api{
		conn:       conn,
		ns:         ns,
		containers: containersapi.NewContainersClient(conn),
		tasks:      tasksapi.NewTasksClient(conn),
		version:    versionapi.NewVersionClient(conn),
	}, nil
}

func (a *api) close() error { return a.conn.Close() }

// ctx adds the namespace header to ctx.
func (a *api) ctx(ctx context.Context) context.Context {
	return metadata.AppendToOutgoingContext(ctx, namespaceHeader, a.ns)
}

// serverVersion returns containerd's version; it also proves the socket
// answers.
func (a *api) serverVersion(ctx context.Context) (string, error) {
	r, err := a.version.Version(a.ctx(ctx), nil, grpc.WaitForReady(true))
	if err != nil {
		return "", err
	}
	return r.GetVersion(), nil
}

// createContainer stores a container with the given spec and runtime.
func (a *api) createContainer(ctx context.Context, id, runtime string, labels map[string]string, spec *specs.Spec) error {
	b, err := json.Marshal(spec)
	if err != nil {
		return fmt.Errorf("encode spec: %w", err)
	}
	_, err = a.containers.Create(a.ctx(ctx), &containersapi.CreateContainerRequest{
		Container: &containersapi.Container{
			ID:      id,
			Labels:  labels,
			Runtime: &containersapi.Container_Runtime{Name: runtime},
			Spec:    &anypb.Any{TypeUrl: specTypeURL, Value: b},
		},
	})
	return err
}

func (a *api) deleteContainer(ctx context.Context, id string) error {
	_, err := a.containers.Delete(a.ctx(ctx), &containersapi.DeleteContainerRequest{ID: id})
	return err
}

// createTask creates the container's task (the runtime sets up the
// container; its init waits for startTask) with output to the given FIFOs,
// and returns the init's host PID.
func (a *api) createTask(ctx context.Context, id, stdout, stderr string) (uint32, error) {
	r, err := a.tasks.Create(a.ctx(ctx), &tasksapi.CreateTaskRequest{
		ContainerID: id, Stdout: stdout, Stderr: stderr,
	})
	if err != nil {
		return 0, err
	}
	return r.GetPid(), nil
}

func (a *api) startTask(ctx context.Context, id string) error {
	_, err := a.tasks.Start(a.ctx(ctx), &tasksapi.StartRequest{ContainerID: id})
	return err
}

// waitTask blocks until the task exits and returns its exit status.
func (a *api) waitTask(ctx context.Context, id string) (uint32, error) {
	r, err := a.tasks.Wait(a.ctx(ctx), &tasksapi.WaitRequest{ContainerID: id})
	if err != nil {
		return 0, err
	}
	return r.GetExitStatus(), nil
}

// killTask sends SIGKILL to every process of the task.
func (a *api) killTask(ctx context.Context, id string) error {
	_, err := a.tasks.Kill(a.ctx(ctx), &tasksapi.KillRequest{
		ContainerID: id, Signal: uint32(syscall.SIGKILL), All: true,
	})
	return err
}

func (a *api) deleteTask(ctx context.Context, id string) error {
	_, err := a.tasks.Delete(a.ctx(ctx), &tasksapi.DeleteTaskRequest{ContainerID: id})
	return err
}

// notFound reports containerd errors meaning the object is already gone.
func notFound(err error) bool { return status.Code(err) == codes.NotFound }

// outputPipes copies a task's stdout and stderr FIFOs to writers.
type outputPipes struct {
	stdout, stderr string // FIFO paths handed to containerd
	closers        []io.Closer
	cancel         context.CancelFunc // aborts opens still pending
	wg             sync.WaitGroup
}

// openOutput creates the FIFOs under dir and starts copying them to the
// writers once containerd's shim opens their write ends. The copies end
// when every writer has closed them (the container's processes are gone).
func openOutput(ctx context.Context, dir string, stdout, stderr io.Writer) (*outputPipes, error) {
	if err := os.Mkdir(dir, 0o700); err != nil {
		return nil, fmt.Errorf("create output dir: %w", err)
	}
	octx, cancel := context.WithCancel(context.WithoutCancel(ctx))
	p := &outputPipes{stdout: filepath.Join(dir, "stdout"), stderr: filepath.Join(dir, "stderr"), cancel: cancel}
	for _, s := range []struct {
		path string
		w    io.Writer
	}{{p.stdout, stdout}, {p.stderr, stderr}} {
		// O_NONBLOCK makes OpenFifo return at once; the read end is opened
		// in the background, and reads block until a writer opened it.
		f, err := fifo.OpenFifo(octx, s.path, syscall.O_CREAT|syscall.O_RDONLY|syscall.O_NONBLOCK, 0o600)
		if err != nil {
			p.close()
			return nil, fmt.Errorf("open output fifo: %w", err)
		}
		p.closers = append(p.closers, f)
		w := s.w
		if w == nil {
			w = io.Discard
		}
		p.wg.Add(1)
		go func() {
			defer p.wg.Done()
			_, _ = io.Copy(w, f)
		}()
	}
	return p, nil
}

// wait blocks until both copies ended.
func (p *outputPipes) wait() { p.wg.Wait() }

// close closes the read ends, which ends the copies.
func (p *outputPipes) close() {
	p.cancel()
	var errs []error
	for _, c := range p.closers {
		errs = append(errs, c.Close())
	}
	_ = errors.Join(errs...)
}
