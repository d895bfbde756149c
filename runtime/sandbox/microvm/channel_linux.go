//go:build linux

package microvm

import (
	"context"
	"crypto/rand"
	"encoding/binary"
	"fmt"
	"net"
	"path/filepath"
	"strconv"
	"sync"

	"github.com/zfaas/zfaas/runtime/guestagent"
)

// channel is the host end of one VM's agent channel: its QEMU device, the
// kernel command-line words telling the agent which transport to open,
// and the connection once the agent is there.
type channel interface {
	qemuArgs() []string
	cmdline() string
	// connect returns the channel's connection; it blocks until the guest
	// end is there or ctx ends.
	connect(ctx context.Context) (net.Conn, error)
	// close releases what the channel holds (listener, context ID).
	close()
}

// chooseTransport resolves Config.Transport against the host: "auto" is
// vsock when dev (the vhost-vsock device) opens, else serial.
func chooseTransport(want, dev string) (string, error) {
	switch want {
	case guestagent.TransportSerial:
		return want, nil
	case guestagent.TransportVsock:
		if err := guestagent.VhostVsockAvailable(dev); err != nil {
			return "", fmt.Errorf("%w: transport vsock: %w", ErrUnsupported, err)
		}
		return want, nil
	case transportAuto:
		if guestagent.VhostVsockAvailable(dev) == nil {
			return guestagent.TransportVsock, nil
		}
		return guestagent.TransportSerial, nil
	}
	return "", fmt.Errorf("transport %q: want auto, serial or vsock", want)
}

// newChannel opens the host end of a VM's channel in its state dir.
func (d *Driver) newChannel(dir string) (channel, error) {
	if d.transport == guestagent.TransportVsock {
		cid, err := d.cids.reserve()
		if err != nil {
			return nil, err
		}
		return &vsockChannel{cid: cid, release: d.cids.release}, nil
	}
	sock := filepath.Join(dir, agentSocketName)
	l, err := net.ListenUnix("unix", &net.UnixAddr{Name: sock, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("agent socket: %w", err)
	}
	return &serialChannel{sock: sock, l: l}, nil
}

// serialChannel is a virtio-serial port whose QEMU chardev connects to a
// Unix socket the driver listens on in the VM's state dir.
type serialChannel struct {
	sock string
	l    *net.UnixListener
}

func (s *serialChannel) qemuArgs() []string {
	return []string{
		"-device", "virtio-serial-device",
		"-chardev", "socket,id=agent,path=" + s.sock,
		"-device", "virtserialport,chardev=agent,name=" + guestagent.PortName,
	}
}

func (s *serialChannel) cmdline() string {
	return guestagent.CmdlineTransport + "=" + guestagent.TransportSerial
}

func (s *serialChannel) connect(ctx context.Context) (net.Conn, error) {
	type acc struct {
		c   net.Conn
		err error
	}
	ch := make(chan acc, 1)
	go func() {
		c, err := s.l.Accept()
		s.l.Close() // one connection: QEMU's, at start
		ch <- acc{c, err}
	}()
	select {
	case a := <-ch:
		return a.c, a.err
	case <-ctx.Done():
		s.l.Close() // ends the Accept
		if a := <-ch; a.c != nil {
			a.c.Close()
		}
		return nil, ctx.Err()
	}
}

// close stops listening (when connect did not).
func (s *serialChannel) close() { s.l.Close() }

// vsockChannel is a vhost-vsock device with the VM's own context ID; the
// agent listens on guestagent.VsockPort and the driver dials it.
type vsockChannel struct {
	cid     uint32
	release func(uint32)
	once    sync.Once
}

func (v *vsockChannel) qemuArgs() []string {
	return []string{"-device", "vhost-vsock-device,guest-cid=" + strconv.FormatUint(uint64(v.cid), 10)}
}

func (v *vsockChannel) cmdline() string {
	return guestagent.CmdlineTransport + "=" + guestagent.TransportVsock
}

func (v *vsockChannel) connect(ctx context.Context) (net.Conn, error) {
	return guestagent.DialVsock(ctx, v.cid, guestagent.VsockPort)
}

// close gives the context ID back once the VM is gone.
func (v *vsockChannel) close() { v.once.Do(func() { v.release(v.cid) }) }

// cidSet hands out guest context IDs. They must be unique on the host
// (other hypervisors and other drivers included, which this set cannot
// see), so they are drawn at random from a 2^31 range above the reserved
// ones and never reused while held here; QEMU refuses a context ID in use
// ("Address already in use") and the boot fails with that message.
type cidSet struct {
	mu   sync.Mutex
	held map[uint32]bool
}

const minCID = 1 << 16 // leaves low IDs to hand-configured VMs

func (s *cidSet) reserve() (uint32, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.held == nil {
		s.held = map[uint32]bool{}
	}
	var b [4]byte
	for {
		if _, err := rand.Read(b[:]); err != nil {
			return 0, err
		}
		cid := minCID + binary.LittleEndian.Uint32(b[:])%(1<<31)
		if !s.held[cid] {
			s.held[cid] = true
			return cid, nil
		}
	}
}

func (s *cidSet) release(cid uint32) {
	s.mu.Lock()
	delete(s.held, cid)
	s.mu.Unlock()
}
