package workloadapi

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"google.golang.org/grpc/peer"
)

// ErrNotAttested is returned (wrapped) by an Attestor that cannot tie the
// caller to an identity; the server answers PermissionDenied.
var ErrNotAttested = errors.New("caller not attested")

// Identity is what an attested caller is entitled to.
type Identity struct {
	ID       spiffeid.ID
	Instance string
}

// Attestor tells who is calling from the gRPC peer in ctx.
type Attestor interface {
	Attest(ctx context.Context) (Identity, error)
}

// CgroupAttestor attests a caller on an instance endpoint by checking that
// the connecting pid (SO_PEERCRED, in the server's pid namespace) is in the
// instance's cgroup v2 directory or below it, reading /proc/<pid>/cgroup on
// every call. It assumes the server runs in the initial cgroup namespace.
//
// Known limit: the pid is the one that connected; if that process exits and
// the pid is reused by a process in the same cgroup, the reuser is attested
// as the same instance, which grants nothing new. A reuser in another cgroup
// fails the check.
type CgroupAttestor struct {
	// Mount is the cgroup v2 mount point, e.g. /sys/fs/cgroup or, on a
	// hybrid host, /sys/fs/cgroup/unified.
	Mount string
	// Proc is the procfs of the server's pid namespace; empty means /proc.
	Proc string
	// InsecureAllowRootCgroup lets an instance whose CgroupDir is the
	// cgroup root match; every process on the host would match it. For
	// tests only.
	InsecureAllowRootCgroup bool
}

var _ Attestor = (*CgroupAttestor)(nil)

// NewCgroupAttestor finds the cgroup v2 mount in /proc/self/mountinfo.
func NewCgroupAttestor() (*CgroupAttestor, error) {
	m, err := FindCgroup2Mount("/proc/self/mountinfo")
	if err != nil {
		return nil, err
	}
	return &CgroupAttestor{Mount: m}, nil
}

// FindCgroup2Mount returns the mount point of the cgroup2 file system listed
// in a mountinfo file. It fails if none is mounted or the mount does not show
// the hierarchy's root.
func FindCgroup2Mount(mountinfo string) (string, error) {
	f, err := os.Open(mountinfo)
	if err != nil {
		return "", fmt.Errorf("find cgroup2 mount: %w", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		pre, post, ok := strings.Cut(sc.Text(), " - ")
		if !ok {
			continue
		}
		fields, tail := strings.Fields(pre), strings.Fields(post)
		if len(fields) < 5 || len(tail) < 1 || tail[0] != "cgroup2" {
			continue
		}
		if fields[3] != "/" {
			return "", fmt.Errorf("find cgroup2 mount: %s mounts %s, not the root", fields[4], fields[3])
		}
		return fields[4], nil
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("find cgroup2 mount: %w", err)
	}
	return "", errors.New("find cgroup2 mount: no cgroup2 file system mounted")
}

// Attest implements Attestor.
func (a *CgroupAttestor) Attest(ctx context.Context) (Identity, error) {
	p, ok := peer.FromContext(ctx)
	if !ok {
		return Identity{}, fmt.Errorf("%w: no peer", ErrNotAttested)
	}
	info, ok := p.AuthInfo.(PeerInfo)
	if !ok || !info.HasInstance {
		return Identity{}, fmt.Errorf("%w: not an instance endpoint", ErrNotAttested)
	}
	if info.PID <= 0 {
		return Identity{}, fmt.Errorf("%w: peer pid not visible", ErrNotAttested)
	}
	want, err := a.relative(info.Instance.CgroupDir)
	if err != nil {
		return Identity{}, fmt.Errorf("%w: %v", ErrNotAttested, err)
	}
	if want == "/" && !a.InsecureAllowRootCgroup {
		return Identity{}, fmt.Errorf("%w: instance %s has the root cgroup", ErrNotAttested, info.Instance.Name)
	}
	proc := a.Proc
	if proc == "" {
		proc = "/proc"
	}
	got, err := ProcessCgroup(proc, int(info.PID))
	if err != nil {
		return Identity{}, fmt.Errorf("%w: pid %d: %v", ErrNotAttested, info.PID, err)
	}
	if !within(got, want) {
		return Identity{}, fmt.Errorf("%w: pid %d in cgroup %s, instance %s wants %s", ErrNotAttested, info.PID, got, info.Instance.Name, want)
	}
	return Identity{ID: info.Instance.ID, Instance: info.Instance.Name}, nil
}

// relative turns an absolute cgroup directory into the path /proc/<pid>/cgroup
// shows.
func (a *CgroupAttestor) relative(dir string) (string, error) {
	if a.Mount == "" {
		return "", errors.New("cgroup attestor has no mount")
	}
	rel, err := filepath.Rel(filepath.Clean(a.Mount), filepath.Clean(dir))
	if err != nil || rel == ".." || strings.HasPrefix(rel, "../") {
		return "", fmt.Errorf("cgroup dir %s is outside %s", dir, a.Mount)
	}
	return path.Clean("/" + filepath.ToSlash(rel)), nil
}

func within(got, want string) bool {
	return want == "/" || got == want || strings.HasPrefix(got, want+"/")
}

// ProcessCgroup returns the cgroup v2 path ("0::" line) of pid as listed in
// procRoot/<pid>/cgroup.
func ProcessCgroup(procRoot string, pid int) (string, error) {
	f, err := os.Open(filepath.Join(procRoot, strconv.Itoa(pid), "cgroup"))
	if err != nil {
		return "", err
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, 64<<10))
	if err != nil {
		return "", err
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if p, ok := strings.CutPrefix(line, "0::"); ok {
			if !strings.HasPrefix(p, "/") || strings.HasSuffix(p, " (deleted)") {
				return "", fmt.Errorf("unusable cgroup %q", p)
			}
			return path.Clean(p), nil
		}
	}
	return "", errors.New("no cgroup v2 entry")
}
