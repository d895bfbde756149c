//go:build linux

package guestagent

import (
	"encoding/json"
	"fmt"
	"net"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// ProxyRequest is one request from the driver to the host proxy.
type ProxyRequest struct {
	ID uint64 `json:"id"`
	Op string `json:"op"` // "dial" or "listen"
	// Net is "" (tcp4) or, for "dial" only, "unix": Addr is then a host
	// socket path. The driver sends only paths it found in the instance's
	// mounts (the Workload API endpoint), never one the guest named; the
	// server at that path sees this process, in the instance's cgroup, as
	// its peer (SO_PEERCRED), and attests it as the instance.
	Net  string `json:"net,omitempty"`
	Addr string `json:"addr"`
}

// ProxyReply answers a request (Op "") or announces a connection accepted
// on a listener (Op "conn", ID of the listen request). A reply without Err
// to a dial, and every "conn", carry one stream socket: the driver's end of
// the relayed connection.
type ProxyReply struct {
	ID  uint64 `json:"id"`
	Op  string `json:"op,omitempty"`
	Err string `json:"err,omitempty"`
}

// RunHostProxy serves proxy requests on ctl, a SOCK_SEQPACKET Unix socket
// shared with the driver, until it is closed. The process runs inside the
// instance's cgroup: it dials and listens itself and relays every TCP (or
// Unix, for dials) connection to a socket pair whose other end it hands to
// the driver, so the host sockets are created and held inside the cgroup.
func RunHostProxy(ctl *os.File) error {
	fd := int(ctl.Fd())
	var wmu sync.Mutex
	send := func(r ProxyReply, f *os.File) error {
		b, _ := json.Marshal(r)
		var oob []byte
		if f != nil {
			oob = unix.UnixRights(int(f.Fd()))
		}
		wmu.Lock()
		defer wmu.Unlock()
		return unix.Sendmsg(fd, b, oob, nil, 0)
	}
	buf := make([]byte, 4096)
	for {
		n, _, _, _, err := unix.Recvmsg(fd, buf, nil, 0)
		if err != nil {
			return fmt.Errorf("host proxy: read request: %w", err)
		}
		if n == 0 {
			return nil // driver closed
		}
		var req ProxyRequest
		if err := json.Unmarshal(buf[:n], &req); err != nil {
			return fmt.Errorf("host proxy: bad request: %w", err)
		}
		switch req.Op {
		case "dial":
			network := "tcp4"
			switch req.Net {
			case "":
			case "unix":
				network = "unix"
			default:
				_ = send(ProxyReply{ID: req.ID, Err: "unknown net"}, nil)
				continue
			}
			go func() {
				c, err := net.DialTimeout(network, req.Addr, 10*time.Second)
				if err != nil {
					_ = send(ProxyReply{ID: req.ID, Err: err.Error()}, nil)
					return
				}
				relay(c, func(f *os.File) error { return send(ProxyReply{ID: req.ID}, f) })
			}()
		case "listen":
			if req.Net != "" {
				_ = send(ProxyReply{ID: req.ID, Err: "listen is tcp4 only"}, nil)
				continue
			}
			l, err := net.Listen("tcp4", req.Addr)
			if err != nil {
				_ = send(ProxyReply{ID: req.ID, Err: err.Error()}, nil)
				continue
			}
			_ = send(ProxyReply{ID: req.ID}, nil)
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					go relay(c, func(f *os.File) error { return send(ProxyReply{ID: req.ID, Op: "conn"}, f) })
				}
			}()
		default:
			_ = send(ProxyReply{ID: req.ID, Err: "unknown op"}, nil)
		}
	}
}

// relay makes a socket pair, hands one end over with give and copies
// between c and the other end.
func relay(c net.Conn, give func(*os.File) error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_STREAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		c.Close()
		return
	}
	theirs := os.NewFile(uintptr(fds[1]), "proxy-peer")
	err = give(theirs)
	theirs.Close()
	mine := os.NewFile(uintptr(fds[0]), "proxy")
	if err != nil {
		mine.Close()
		c.Close()
		return
	}
	pc, err := net.FileConn(mine)
	mine.Close()
	if err != nil {
		c.Close()
		return
	}
	pipeConns(c, pc)
}

// pipeConns copies both ways, half-closing as each direction ends.
func pipeConns(a, b net.Conn) {
	var wg sync.WaitGroup
	cp := func(dst, src net.Conn) {
		defer wg.Done()
		buf := make([]byte, 32<<10)
		for {
			n, err := src.Read(buf)
			if n > 0 {
				if _, werr := dst.Write(buf[:n]); werr != nil {
					break
				}
			}
			if err != nil {
				break
			}
		}
		if cw, ok := dst.(interface{ CloseWrite() error }); ok && cw.CloseWrite() == nil {
			return
		}
		dst.Close()
	}
	wg.Add(2)
	go cp(a, b)
	go cp(b, a)
	wg.Wait()
	a.Close()
	b.Close()
}
