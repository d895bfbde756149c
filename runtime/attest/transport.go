package attest

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"net"
	"sync"
	"time"

	"github.com/google/go-tpm/tpm2/transport"
	"github.com/google/go-tpm/tpm2/transport/linuxtpm"
)

// DefaultDevice is the kernel's TPM resource manager, the device a worker
// uses in production.
const DefaultDevice = "/dev/tpmrm0"

// maxResponse bounds a TPM response read from a socket. TPM 2.0
// responses are at most a few KiB (TPM_PT_MAX_RESPONSE_SIZE is typically
// 4096); anything larger is a broken or hostile peer.
const maxResponse = 64 << 10

// OpenDevice opens a TPM character device, normally DefaultDevice.
func OpenDevice(path string) (transport.TPMCloser, error) {
	tpm, err := linuxtpm.Open(path)
	if err != nil {
		return nil, fmt.Errorf("open TPM %s: %w", path, err)
	}
	return tpm, nil
}

// DialTCP connects to a TPM that speaks raw TPM 2.0 command/response
// frames over TCP: swtpm's `--server type=tcp`, for tests and
// development. (go-tpm's tpm2/transport/tcp speaks the Microsoft/IBM
// simulator framing instead, which swtpm's server socket does not.)
// timeout bounds each command; zero means 30 seconds.
func DialTCP(ctx context.Context, addr string, timeout time.Duration) (transport.TPMCloser, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("dial TPM %s: %w", addr, err)
	}
	if timeout <= 0 {
		timeout = 30 * time.Second
	}
	return &tcpTPM{conn: c, timeout: timeout}, nil
}

type tcpTPM struct {
	mu      sync.Mutex
	conn    net.Conn
	timeout time.Duration
}

// Send writes one command and reads exactly one response frame: the
// 10-byte header (tag, size, response code) and then size-10 bytes.
func (t *tcpTPM) Send(cmd []byte) ([]byte, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if err := t.conn.SetDeadline(time.Now().Add(t.timeout)); err != nil {
		return nil, fmt.Errorf("tpm tcp: %w", err)
	}
	if _, err := t.conn.Write(cmd); err != nil {
		return nil, fmt.Errorf("tpm tcp: write command: %w", err)
	}
	hdr := make([]byte, 10)
	if _, err := io.ReadFull(t.conn, hdr); err != nil {
		return nil, fmt.Errorf("tpm tcp: read response header: %w", err)
	}
	size := binary.BigEndian.Uint32(hdr[2:6])
	if size < 10 || size > maxResponse {
		return nil, fmt.Errorf("tpm tcp: response size %d out of range [10, %d]", size, maxResponse)
	}
	rsp := make([]byte, size)
	copy(rsp, hdr)
	if _, err := io.ReadFull(t.conn, rsp[10:]); err != nil {
		return nil, fmt.Errorf("tpm tcp: read response body: %w", err)
	}
	return rsp, nil
}

// Close closes the connection.
func (t *tcpTPM) Close() error {
	return t.conn.Close()
}

// Response codes after which the TPM did not execute the command and the
// same bytes may be sent again (TPM 2.0 Part 2, 6.6.3).
const (
	rcRetry   = 0x922
	rcYielded = 0x908
	rcTesting = 0x90a
)

// retrying resends a command the TPM asked to have retried, with a short
// growing pause, at most 10 times.
type retrying struct {
	tpm transport.TPM
}

// Send implements transport.TPM.
func (r retrying) Send(cmd []byte) ([]byte, error) {
	pause := time.Millisecond
	for attempt := 0; ; attempt++ {
		rsp, err := r.tpm.Send(cmd)
		if err != nil || len(rsp) < 10 || attempt == 10 {
			return rsp, err
		}
		switch binary.BigEndian.Uint32(rsp[6:10]) {
		case rcRetry, rcYielded, rcTesting:
			time.Sleep(pause)
			pause = min(2*pause, 100*time.Millisecond)
		default:
			return rsp, err
		}
	}
}
