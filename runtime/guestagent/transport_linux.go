//go:build linux

package guestagent

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"time"

	"github.com/mdlayher/vsock"
	"golang.org/x/sys/unix"
)

// Transports of the agent channel. The driver picks one per VM and names it
// on the guest kernel command line (CmdlineTransport); the Mux protocol on
// top is the same.
const (
	// TransportSerial is a virtio-serial port named PortName: works on
	// every QEMU, needs nothing of the host kernel.
	TransportSerial = "serial"
	// TransportVsock is AF_VSOCK: the agent listens on VsockPort and the
	// driver dials the VM's context ID. Needs /dev/vhost-vsock on the host.
	TransportVsock = "vsock"
	// CmdlineTransport is the guest kernel command-line key choosing the
	// transport ("zfaas.transport=vsock"); absent means serial.
	CmdlineTransport = "zfaas.transport"
	// VsockPort is the AF_VSOCK port the agent listens on in the guest.
	VsockPort uint32 = 1024
	// VsockCIDHost is VMADDR_CID_HOST, the context ID connections from the
	// host carry; VsockCIDLocal is VMADDR_CID_LOCAL (loopback in one
	// kernel).
	VsockCIDHost  uint32 = unix.VMADDR_CID_HOST
	VsockCIDLocal uint32 = unix.VMADDR_CID_LOCAL
)

// GuestTransport is the agent's end of its channel to the driver.
type GuestTransport interface {
	// Name is TransportSerial or TransportVsock.
	Name() string
	// Open returns the channel once the host end is there, or an error
	// after timeout.
	Open(timeout time.Duration) (io.ReadWriteCloser, error)
}

// TransportFromCmdline returns the transport a kernel command line asks
// for: TransportSerial when it names none.
func TransportFromCmdline(cmdline string) (GuestTransport, error) {
	for _, w := range strings.Fields(cmdline) {
		k, v, ok := strings.Cut(w, "=")
		if !ok || k != CmdlineTransport {
			continue
		}
		switch v {
		case TransportSerial:
			return SerialPort{}, nil
		case TransportVsock:
			return VsockListener{Port: VsockPort, Peer: VsockCIDHost}, nil
		default:
			return nil, fmt.Errorf("%s=%q: want %s or %s", CmdlineTransport, v, TransportSerial, TransportVsock)
		}
	}
	return SerialPort{}, nil
}

// SerialPort is the virtio-serial port named PortName.
type SerialPort struct{}

// Name implements GuestTransport.
func (SerialPort) Name() string { return TransportSerial }

// Open finds the port and opens it once the host end is connected (reads
// return EOF until then).
func (SerialPort) Open(timeout time.Duration) (io.ReadWriteCloser, error) {
	deadline := time.Now().Add(timeout)
	for {
		dev := findPort()
		if dev != "" {
			f, err := os.OpenFile(dev, os.O_RDWR, 0)
			if err == nil {
				if connected(f) {
					return f, nil
				}
				f.Close()
			}
		}
		if time.Now().After(deadline) {
			return nil, fmt.Errorf("virtio-serial port %s not connected after %v", PortName, timeout)
		}
		time.Sleep(5 * time.Millisecond)
	}
}

// VsockListener accepts the one AF_VSOCK connection of the channel on
// Port, from context ID Peer only (VsockCIDHost: the host's end), and then
// stops listening, so nothing in the guest can connect afterwards.
type VsockListener struct {
	Port uint32
	Peer uint32
}

// Name implements GuestTransport.
func (VsockListener) Name() string { return TransportVsock }

// Open listens on every local context ID and returns the first connection
// whose source is Peer; connections from elsewhere are closed.
func (v VsockListener) Open(timeout time.Duration) (io.ReadWriteCloser, error) {
	l, err := vsock.ListenContextID(unix.VMADDR_CID_ANY, v.Port, nil)
	if err != nil {
		return nil, fmt.Errorf("vsock listen on port %d: %w", v.Port, err)
	}
	defer l.Close()
	if err := l.SetDeadline(time.Now().Add(timeout)); err != nil {
		return nil, err
	}
	for {
		c, err := l.Accept()
		if err != nil {
			return nil, fmt.Errorf("vsock port %d: no connection from context %d: %w", v.Port, v.Peer, err)
		}
		if a, ok := c.RemoteAddr().(*vsock.Addr); ok && a.ContextID == v.Peer {
			return c, nil
		}
		c.Close()
	}
}

// DialVsock connects to port on the VM with context ID cid, retrying while
// the guest is not listening yet (the VM is still booting), until ctx ends.
func DialVsock(ctx context.Context, cid, port uint32) (net.Conn, error) {
	var last error
	for {
		c, err := vsock.DialContext(ctx, cid, port, nil)
		if err == nil {
			return c, nil
		}
		last = err
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("vsock dial %d:%d: %w (last: %w)", cid, port, ctx.Err(), last)
		case <-time.After(10 * time.Millisecond):
		}
	}
}

// VhostVsockAvailable reports whether dev (normally /dev/vhost-vsock) can
// be opened for reading and writing, which QEMU's vhost-vsock device needs.
func VhostVsockAvailable(dev string) error {
	f, err := os.OpenFile(dev, os.O_RDWR, 0)
	if err != nil {
		return err
	}
	return f.Close()
}
