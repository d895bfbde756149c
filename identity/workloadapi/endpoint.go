package workloadapi

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"golang.org/x/sys/unix"
	"google.golang.org/grpc/credentials"
)

// EndpointEnv is the environment variable that tells SPIFFE clients where
// the Workload API is.
const EndpointEnv = "SPIFFE_ENDPOINT_SOCKET"

// Instance is one sandboxed function instance and the identity it may get.
type Instance struct {
	// Name tells instances of one function apart; it is carried in the
	// x-zfaas-instance JWT claim and logs.
	Name string
	// ID is the SPIFFE ID the instance is entitled to.
	ID spiffeid.ID
	// CgroupDir is the absolute path of the instance's cgroup v2 directory,
	// e.g. /sys/fs/cgroup/unified/zfaas/acme/fn-a/i-1. Only processes in it
	// or below it are attested as this instance.
	CgroupDir string
	// UID and GID, when not -1, become the owner of the socket file so a
	// sandbox running as that user can connect. Use -1 to leave ownership
	// to the caller (e.g. a bind mount into the sandbox).
	UID, GID int
}

// EndpointAddr returns the SPIFFE_ENDPOINT_SOCKET value for a socket path.
func EndpointAddr(path string) string { return "unix://" + path }

// ListenInstance creates the Unix socket at path that serves exactly one
// instance. The socket file is mode 0600 (owned by UID/GID if set) and
// every connection accepted on it carries inst, which the server's
// Attestor checks against the connecting process (SO_PEERCRED). A stale
// socket at path is replaced; any other file there is an error.
func ListenInstance(path string, inst Instance) (net.Listener, error) {
	if inst.ID.IsZero() {
		return nil, errors.New("listen instance: spiffe id is required")
	}
	if !filepath.IsAbs(inst.CgroupDir) {
		return nil, fmt.Errorf("listen instance %s: cgroup dir %q is not absolute", inst.Name, inst.CgroupDir)
	}
	if fi, err := os.Lstat(path); err == nil {
		if fi.Mode().Type() != fs.ModeSocket {
			return nil, fmt.Errorf("listen instance %s: %s exists and is not a socket", inst.Name, path)
		}
		if err := os.Remove(path); err != nil {
			return nil, fmt.Errorf("listen instance %s: remove stale socket: %w", inst.Name, err)
		}
	}
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("listen instance %s: %w", inst.Name, err)
	}
	l.SetUnlinkOnClose(true)
	if err := os.Chmod(path, 0o600); err != nil {
		l.Close()
		return nil, fmt.Errorf("listen instance %s: chmod socket: %w", inst.Name, err)
	}
	if inst.UID != -1 || inst.GID != -1 {
		if err := os.Lchown(path, inst.UID, inst.GID); err != nil {
			l.Close()
			return nil, fmt.Errorf("listen instance %s: chown socket: %w", inst.Name, err)
		}
	}
	return &instanceListener{UnixListener: l, inst: inst}, nil
}

type instanceListener struct {
	*net.UnixListener
	inst Instance
}

func (l *instanceListener) Accept() (net.Conn, error) {
	c, err := l.AcceptUnix()
	if err != nil {
		return nil, err
	}
	return &instanceConn{UnixConn: c, inst: l.inst}, nil
}

type instanceConn struct {
	*net.UnixConn
	inst Instance
}

// PeerInfo is the gRPC AuthInfo of a Workload API connection: the kernel's
// view of the connecting process (at connect time) and the instance the
// endpoint serves. HasInstance is false for connections that did not come
// through ListenInstance; those are never attested.
type PeerInfo struct {
	credentials.CommonAuthInfo
	PID         int32
	UID, GID    uint32
	Instance    Instance
	HasInstance bool
}

// AuthType implements credentials.AuthInfo.
func (PeerInfo) AuthType() string { return "zfaas-peercred" }

// peerCreds are gRPC transport credentials that add no encryption (the
// transport is a local Unix socket) but record SO_PEERCRED.
type peerCreds struct{}

func (peerCreds) ClientHandshake(_ context.Context, _ string, c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	return nil, nil, errors.New("peercred: client side not supported")
}

func (peerCreds) ServerHandshake(c net.Conn) (net.Conn, credentials.AuthInfo, error) {
	ic, ok := c.(*instanceConn)
	if !ok {
		return c, PeerInfo{CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.NoSecurity}}, nil
	}
	raw, err := ic.SyscallConn()
	if err != nil {
		return nil, nil, fmt.Errorf("peercred: %w", err)
	}
	var cred *unix.Ucred
	var serr error
	if err := raw.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return nil, nil, fmt.Errorf("peercred: %w", err)
	}
	if serr != nil {
		return nil, nil, fmt.Errorf("peercred: SO_PEERCRED: %w", serr)
	}
	return c, PeerInfo{
		CommonAuthInfo: credentials.CommonAuthInfo{SecurityLevel: credentials.PrivacyAndIntegrity},
		PID:            cred.Pid, UID: cred.Uid, GID: cred.Gid,
		Instance: ic.inst, HasInstance: true,
	}, nil
}

func (peerCreds) Info() credentials.ProtocolInfo {
	return credentials.ProtocolInfo{SecurityProtocol: "zfaas-peercred"}
}
func (p peerCreds) Clone() credentials.TransportCredentials { return p }
func (peerCreds) OverrideServerName(string) error           { return nil }
