//go:build linux

package microvm

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"os"
	"sync"

	"golang.org/x/sys/unix"

	"github.com/zfaas/zfaas/runtime/guestagent"
)

var errProxyClosed = errors.New("host proxy closed")

// proxyClient talks to the instance's host proxy (guestagent.RunHostProxy)
// over a SOCK_SEQPACKET socket pair.
type proxyClient struct {
	fd   int
	wmu  sync.Mutex
	mu   sync.Mutex
	next uint64
	wait map[uint64]chan proxyResult
	lis  map[uint64]func(net.Conn)
	done chan struct{}
}

type proxyResult struct {
	err  error
	conn net.Conn
}

// newProxyPair returns the driver's end (wrapped) and the file to pass to
// the proxy process as fd 3.
func newProxyPair() (*proxyClient, *os.File, error) {
	fds, err := unix.Socketpair(unix.AF_UNIX, unix.SOCK_SEQPACKET|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return nil, nil, fmt.Errorf("proxy socket pair: %w", err)
	}
	p := &proxyClient{fd: fds[0], wait: map[uint64]chan proxyResult{}, lis: map[uint64]func(net.Conn){}, done: make(chan struct{})}
	return p, os.NewFile(uintptr(fds[1]), "proxy-ctl"), nil
}

func (p *proxyClient) run() {
	defer close(p.done)
	buf := make([]byte, 4096)
	oob := make([]byte, unix.CmsgSpace(4*4))
	for {
		n, oobn, _, _, err := unix.Recvmsg(p.fd, buf, oob, unix.MSG_CMSG_CLOEXEC)
		if err != nil || n == 0 {
			p.failAll()
			return
		}
		var conn net.Conn
		if oobn > 0 {
			msgs, _ := unix.ParseSocketControlMessage(oob[:oobn])
			for _, m := range msgs {
				fds, err := unix.ParseUnixRights(&m)
				if err != nil {
					continue
				}
				for i, fd := range fds {
					f := os.NewFile(uintptr(fd), "proxied")
					if i == 0 && conn == nil {
						conn, _ = net.FileConn(f)
					}
					f.Close()
				}
			}
		}
		var r guestagent.ProxyReply
		if err := json.Unmarshal(buf[:n], &r); err != nil {
			if conn != nil {
				conn.Close()
			}
			continue
		}
		p.mu.Lock()
		if r.Op == "conn" {
			h := p.lis[r.ID]
			p.mu.Unlock()
			if h != nil && conn != nil {
				go h(conn)
			} else if conn != nil {
				conn.Close()
			}
			continue
		}
		ch := p.wait[r.ID]
		delete(p.wait, r.ID)
		p.mu.Unlock()
		res := proxyResult{conn: conn}
		if r.Err != "" {
			res.err = errors.New(r.Err)
		} else if conn == nil && ch != nil && cap(ch) == 2 { // dial without a socket
			res.err = errors.New("host proxy sent no socket")
		}
		if ch != nil {
			ch <- res
		} else if conn != nil {
			conn.Close()
		}
	}
}

func (p *proxyClient) failAll() {
	p.mu.Lock()
	defer p.mu.Unlock()
	for id, ch := range p.wait {
		ch <- proxyResult{err: errProxyClosed}
		delete(p.wait, id)
	}
}

func (p *proxyClient) call(ctx context.Context, op, network, addr string, onConn func(net.Conn)) (net.Conn, error) {
	p.mu.Lock()
	p.next++
	id := p.next
	capacity := 1
	if op == "dial" {
		capacity = 2 // marks a dial for run
	}
	ch := make(chan proxyResult, capacity)
	p.wait[id] = ch
	if onConn != nil {
		p.lis[id] = onConn
	}
	p.mu.Unlock()
	b, _ := json.Marshal(guestagent.ProxyRequest{ID: id, Op: op, Net: network, Addr: addr})
	p.wmu.Lock()
	err := unix.Sendmsg(p.fd, b, nil, nil, 0)
	p.wmu.Unlock()
	if err != nil {
		p.mu.Lock()
		delete(p.wait, id)
		p.mu.Unlock()
		return nil, fmt.Errorf("host proxy: %w", err)
	}
	select {
	case r := <-ch:
		return r.conn, r.err
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-p.done:
		return nil, errProxyClosed
	}
}

// dial connects to the TCP address addr from inside the instance's cgroup.
func (p *proxyClient) dial(ctx context.Context, addr string) (net.Conn, error) {
	return p.call(ctx, "dial", "", addr, nil)
}

// dialUnix connects to the host Unix socket path from inside the
// instance's cgroup, so the server's SO_PEERCRED sees the instance.
func (p *proxyClient) dialUnix(ctx context.Context, path string) (net.Conn, error) {
	return p.call(ctx, "dial", "unix", path, nil)
}

// listen listens on addr inside the instance's cgroup; every accepted
// connection is passed to onConn.
func (p *proxyClient) listen(ctx context.Context, addr string, onConn func(net.Conn)) error {
	_, err := p.call(ctx, "listen", "", addr, onConn)
	return err
}

func (p *proxyClient) close() {
	_ = unix.Shutdown(p.fd, unix.SHUT_RDWR) // wakes run and ends the proxy
	<-p.done
	unix.Close(p.fd)
}
