// Command vsockinit is PID 1 of the vsock transport test's VM. The test
// host has no vhost-vsock, so both ends of the agent channel run in this
// one guest kernel over vsock_loopback: the agent's end
// (guestagent.VsockListener) and the driver's end (guestagent.DialVsock,
// started before anything listens so that its retry runs). It checks that
// a listener for the host's context ID refuses a local peer, then speaks
// the agent protocol over the pair (a Ready frame, a stream each way) and
// prints VSOCK-SELFTEST OK or VSOCK-SELFTEST FAIL: ... on the console.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"time"

	"github.com/zfaas/zfaas/runtime/guestagent"
)

func main() {
	if err := run(); err != nil {
		fmt.Println("VSOCK-SELFTEST FAIL:", err)
	} else {
		fmt.Println("VSOCK-SELFTEST OK")
	}
	guestagent.PowerOff()
}

func run() error {
	if err := guestagent.SetupGuest(); err != nil {
		return fmt.Errorf("setup: %w", err)
	}
	cmdline, err := os.ReadFile("/proc/cmdline")
	if err != nil {
		return err
	}
	tr, err := guestagent.TransportFromCmdline(string(cmdline))
	if err != nil {
		return err
	}
	if tr.Name() != guestagent.TransportVsock {
		return fmt.Errorf("command line %q selects %s, want vsock", cmdline, tr.Name())
	}
	const port = guestagent.VsockPort

	// A local peer is not the host: the agent's listener must not take it.
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	go func() {
		if c, err := guestagent.DialVsock(ctx, guestagent.VsockCIDLocal, port); err == nil {
			c.Close()
		}
	}()
	c, err := tr.Open(1500 * time.Millisecond)
	cancel()
	if err == nil {
		c.Close()
		return errors.New("listener for the host's context ID accepted a local peer")
	}

	// The driver's end dials first and retries until the agent listens.
	ctx, cancel = context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	type dialed struct {
		c   net.Conn
		err error
	}
	hostEnd := make(chan dialed, 1)
	go func() {
		c, err := guestagent.DialVsock(ctx, guestagent.VsockCIDLocal, port)
		hostEnd <- dialed{c, err}
	}()
	time.Sleep(300 * time.Millisecond)
	guestConn, err := guestagent.VsockListener{Port: port, Peer: guestagent.VsockCIDLocal}.Open(10 * time.Second)
	if err != nil {
		return fmt.Errorf("agent end: %w", err)
	}
	h := <-hostEnd
	if h.err != nil {
		return fmt.Errorf("driver end: %w", h.err)
	}
	guest, host := guestagent.NewMux(guestConn, true), guestagent.NewMux(h.c, false)
	defer guest.Close()
	defer host.Close()
	// Host-opened streams echo what they read.
	guest.OnOpen = func(s *guestagent.Stream, o guestagent.Open) {
		if err := s.Accept(); err != nil {
			return
		}
		_, _ = io.Copy(s, s)
		s.Close()
	}
	go guest.Run()
	go host.Run()
	if err := guest.SendJSON(guestagent.TReady, guestagent.Ready{Version: guestagent.Version, Transport: tr.Name()}); err != nil {
		return err
	}
	f, err := host.Next()
	if err != nil {
		return fmt.Errorf("driver end: %w", err)
	}
	var r guestagent.Ready
	if f.Type != guestagent.TReady || json.Unmarshal(f.Payload, &r) != nil || r.Transport != guestagent.TransportVsock {
		return fmt.Errorf("driver end got frame %d %q", f.Type, f.Payload)
	}
	s, err := host.OpenStream(guestagent.Open{Port: 8080}, 5*time.Second)
	if err != nil {
		return fmt.Errorf("open stream: %w", err)
	}
	msg := make([]byte, 200<<10) // more than a chunk, less than a window
	for i := range msg {
		msg[i] = byte(i * 7)
	}
	go func() { _, _ = s.Write(msg) }()
	got := make([]byte, len(msg))
	if _, err := io.ReadFull(s, got); err != nil {
		return fmt.Errorf("echo: %w", err)
	}
	for i := range msg {
		if got[i] != msg[i] {
			return fmt.Errorf("echo differs at byte %d", i)
		}
	}
	return s.Close()
}
