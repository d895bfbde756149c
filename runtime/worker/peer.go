package worker

import (
	"bufio"
	"bytes"
	"encoding/hex"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// errPeerNotInInstance is returned when the process on the other end of a
// loopback TCP connection does not belong to the expected instance.
var errPeerNotInInstance = errors.New("peer does not belong to the instance")

// acceptWait bounds how long a peer may leave a new connection unaccepted.
const acceptWait = 2 * time.Second

// checkLoopbackPeer verifies that the socket at the other end of conn (a
// loopback TCP connection) is held by a process in the cgroup v2 directory
// cgroupDir. It finds the peer socket's inode in /proc/net/tcp{,6} and then
// looks for that inode among the file descriptors of the cgroup's processes.
//
// This is how the worker keeps one instance from talking to another
// instance's Runtime API or impersonating its HTTP server: without network
// namespaces, loopback ports are shared, but sockets are owned.
func checkLoopbackPeer(conn net.Conn, cgroupDir string) error {
	local, remote, err := connAddrs(conn.LocalAddr(), conn.RemoteAddr())
	if err != nil {
		return err
	}
	inode, err := peerInode(local, remote)
	if err != nil {
		return err
	}
	held, err := cgroupHoldsSocket(cgroupDir, inode)
	if err != nil {
		return err
	}
	if !held {
		return fmt.Errorf("%w: socket %s held outside %s", errPeerNotInInstance, inode, cgroupDir)
	}
	return nil
}

func connAddrs(l, r net.Addr) (local, remote netip.AddrPort, err error) {
	local, err1 := netip.ParseAddrPort(l.String())
	remote, err2 := netip.ParseAddrPort(r.String())
	if err1 != nil || err2 != nil {
		return local, remote, fmt.Errorf("%w: not a TCP connection", errPeerNotInInstance)
	}
	return local, remote, nil
}

// peerInode returns the inode of the socket at the other end of the
// loopback TCP connection local→remote.
func peerInode(local, remote netip.AddrPort) (string, error) {
	// The peer's socket has local=our remote and remote=our local. A
	// connection still in the peer's accept queue has no file yet (inode
	// 0), so wait briefly for the peer to accept it.
	var inode string
	var err error
	for wait, waited := 100*time.Microsecond, time.Duration(0); ; wait *= 2 {
		inode, err = findSocketInode(remote, local)
		if err != nil {
			return "", err
		}
		if inode != "0" {
			break
		}
		if waited > acceptWait {
			return "", fmt.Errorf("%w: connection not accepted within %s", errPeerNotInInstance, acceptWait)
		}
		time.Sleep(wait)
		waited += wait
	}
	return inode, nil
}

// cgroupHoldsSocket reports whether a process of the cgroup holds the socket.
func cgroupHoldsSocket(cgroupDir, inode string) (bool, error) {
	procs, err := os.ReadFile(filepath.Join(cgroupDir, "cgroup.procs"))
	if err != nil {
		return false, fmt.Errorf("read instance processes: %w", err)
	}
	want := "socket:[" + inode + "]"
	for _, pid := range strings.Fields(string(procs)) {
		fdDir := filepath.Join("/proc", pid, "fd")
		ents, err := os.ReadDir(fdDir)
		if err != nil {
			continue // exited meanwhile
		}
		for _, e := range ents {
			if l, err := os.Readlink(filepath.Join(fdDir, e.Name())); err == nil && l == want {
				return true, nil
			}
		}
	}
	return false, nil
}

// findSocketInode returns the inode of the TCP socket whose local address is
// loc and remote address is rem. It asks the kernel through sock_diag for
// that one socket, and scans /proc/net/tcp only when netlink is unavailable
// (a scan costs milliseconds once thousands of sockets exist).
func findSocketInode(loc, rem netip.AddrPort) (string, error) {
	s, err := netlink.SocketGet(net.TCPAddrFromAddrPort(loc), net.TCPAddrFromAddrPort(rem))
	if err == nil {
		return strconv.FormatUint(uint64(s.INode), 10), nil
	}
	if errors.Is(err, unix.ENOENT) {
		return "", fmt.Errorf("%w: no socket %s -> %s", errPeerNotInInstance, loc, rem)
	}
	return scanSocketInode(loc, rem)
}

// scanSocketInode is findSocketInode by reading /proc/net/tcp{,6}.
func scanSocketInode(loc, rem netip.AddrPort) (string, error) {
	file := "/proc/net/tcp"
	if loc.Addr().Is6() && !loc.Addr().Is4In6() {
		file = "/proc/net/tcp6"
	}
	f, err := os.Open(file)
	if err != nil {
		return "", fmt.Errorf("read sockets: %w", err)
	}
	defer f.Close()
	wantLoc, wantRem := procNetAddr(loc), procNetAddr(rem)
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		fields := bytes.Fields(sc.Bytes())
		if len(fields) < 10 {
			continue
		}
		if string(fields[1]) == wantLoc && string(fields[2]) == wantRem {
			return string(fields[9]), nil
		}
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read sockets: %w", err)
	}
	return "", fmt.Errorf("%w: no socket %s -> %s", errPeerNotInInstance, loc, rem)
}

// procNetAddr formats an address the way /proc/net/tcp does: the IPv4 address
// as a little-endian 32-bit hex word, then the port in hex.
func procNetAddr(ap netip.AddrPort) string {
	a := ap.Addr().Unmap()
	var hexAddr string
	if a.Is4() {
		b := a.As4()
		hexAddr = strings.ToUpper(hex.EncodeToString([]byte{b[3], b[2], b[1], b[0]}))
	} else {
		b := a.As16()
		var out []byte
		for i := 0; i < 16; i += 4 {
			out = append(out, b[i+3], b[i+2], b[i+1], b[i])
		}
		hexAddr = strings.ToUpper(hex.EncodeToString(out))
	}
	return hexAddr + ":" + fmt.Sprintf("%04X", ap.Port())
}

// IsInstancePeer reports whether the other end of a loopback TCP connection
// (given by its local and remote address as the server sees them) may be a
// process of one of this worker's live instances. The gateway uses it to
// refuse to treat a function as the local administrator, so it fails
// closed: a peer whose socket cannot be found or has no owner any more (it
// was closed after sending) counts as an instance.
func (w *Worker) IsInstancePeer(local, remote net.Addr) bool {
	l, r, err := connAddrs(local, remote)
	if err != nil {
		return true
	}
	if !r.Addr().Unmap().IsLoopback() {
		return false // instances share the host's loopback only
	}
	inode, err := findSocketInode(r, l)
	if err != nil || inode == "0" {
		return true
	}
	held := false
	w.live.Range(func(_, dir any) bool {
		if ok, err := cgroupHoldsSocket(dir.(string), inode); ok || err != nil {
			held = true // an unreadable instance counts as holding it
			return false
		}
		return true
	})
	return held
}
