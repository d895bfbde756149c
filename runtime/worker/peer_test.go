package worker

import (
	"errors"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"testing"
	"time"
)

// loopbackPair returns both ends of an accepted loopback TCP connection;
// they are closed when the test ends (closing twice is harmless).
func loopbackPair(t *testing.T) (client, server net.Conn) {
	t.Helper()
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err = net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	server, err = ln.Accept()
	if err != nil {
		client.Close()
		t.Fatal(err)
	}
	t.Cleanup(func() { client.Close(); server.Close() })
	return client, server
}

func TestProcNetAddr(t *testing.T) {
	tests := []struct {
		in   string
		want string
	}{
		{"127.0.0.1:8080", "0100007F:1F90"},
		{"10.1.2.3:1", "0302010A:0001"},
		{"[::1]:443", "00000000000000000000000001000000:01BB"},
	}
	for _, tt := range tests {
		if got := procNetAddr(netip.MustParseAddrPort(tt.in)); got != tt.want {
			t.Errorf("procNetAddr(%s) = %s, want %s", tt.in, got, tt.want)
		}
	}
}

// TestCheckLoopbackPeer: a connection whose peer socket is held by this
// process passes when this process is listed in the cgroup file, and fails
// when it is not.
func TestCheckLoopbackPeer(t *testing.T) {
	client, server := loopbackPair(t)

	fakeCgroup := func(pids string) string {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(pids), 0o600); err != nil {
			t.Fatal(err)
		}
		return dir
	}
	self := fakeCgroup(strconv.Itoa(os.Getpid()) + "\n")
	other := fakeCgroup("999999999\n")
	// Seen from the server: the peer is the client socket, held by us.
	if err := checkLoopbackPeer(server, self); err != nil {
		t.Fatalf("own peer refused: %v", err)
	}
	if err := checkLoopbackPeer(server, other); !errors.Is(err, errPeerNotInInstance) {
		t.Fatalf("foreign peer: got %v, want errPeerNotInInstance", err)
	}
	// Seen from the client (HTTP mode): the peer is the accepted socket.
	if err := checkLoopbackPeer(client, self); err != nil {
		t.Fatalf("own accepted peer refused: %v", err)
	}
}

// TestCheckLoopbackPeerWaitsForAccept: a connection still in the listener's
// accept queue has no owner yet; the check waits for the accept.
func TestCheckLoopbackPeerWaitsForAccept(t *testing.T) {
	ln, err := net.Listen("tcp4", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	client, err := net.Dial("tcp4", ln.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer client.Close()
	go func() {
		time.Sleep(100 * time.Millisecond)
		if c, err := ln.Accept(); err == nil {
			defer c.Close()
			time.Sleep(time.Second)
		}
	}()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "cgroup.procs"), []byte(strconv.Itoa(os.Getpid())), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := checkLoopbackPeer(client, dir); err != nil {
		t.Fatalf("got %v, want the check to wait for the accept", err)
	}
}

// TestIsInstancePeerFailsClosed: a peer whose socket is gone counts as an
// instance; a live host peer does not.
func TestIsInstancePeerFailsClosed(t *testing.T) {
	w := &Worker{}
	client, server := loopbackPair(t)
	if w.IsInstancePeer(server.LocalAddr(), server.RemoteAddr()) {
		t.Fatal("a live peer of this (non-instance) process counted as an instance")
	}
	client.Close()
	deadline := time.Now().Add(2 * time.Second)
	for !w.IsInstancePeer(server.LocalAddr(), server.RemoteAddr()) {
		if time.Now().After(deadline) {
			t.Fatal("a peer that closed its socket still counts as the host")
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestFindSocketInodeAgreesWithProc: the netlink lookup and the
// /proc/net/tcp scan name the same socket.
func TestFindSocketInodeAgreesWithProc(t *testing.T) {
	client, _ := loopbackPair(t)
	l, r, err := connAddrs(client.LocalAddr(), client.RemoteAddr())
	if err != nil {
		t.Fatal(err)
	}
	got, err := findSocketInode(l, r)
	if err != nil {
		t.Fatal(err)
	}
	want, err := scanSocketInode(l, r)
	if err != nil {
		t.Fatal(err)
	}
	if got != want || got == "0" {
		t.Fatalf("netlink inode %s, /proc inode %s", got, want)
	}
	if _, err := findSocketInode(l, netip.MustParseAddrPort("127.0.0.1:1")); err == nil {
		t.Fatal("found a socket that does not exist")
	}
}
