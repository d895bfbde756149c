package guestagent

import (
	"bytes"
	"crypto/rand"
	"io"
	"net"
	"testing"
	"time"
)

// TestStreamFlowControl sends more than several windows through one stream
// while the reader is slow and checks the bytes arrive intact.
func TestStreamFlowControl(t *testing.T) {
	a, b := net.Pipe()
	host, guest := NewMux(a, false), NewMux(b, true)
	got := make(chan []byte, 1)
	guest.OnOpen = func(s *Stream, o Open) {
		if o.Port != 80 {
			s.Reject(io.ErrUnexpectedEOF)
			return
		}
		_ = s.Accept()
		time.Sleep(50 * time.Millisecond) // let the sender fill the window
		data, _ := io.ReadAll(s)
		got <- data
		s.Close()
	}
	go host.Run()
	go guest.Run()
	defer host.Close()
	defer guest.Close()
	s, err := host.OpenStream(Open{Port: 80}, 5*time.Second)
	if err != nil {
		t.Fatalf("OpenStream: %v", err)
	}
	want := make([]byte, 3*window+123)
	rand.Read(want)
	if n, err := s.Write(want); err != nil || n != len(want) {
		t.Fatalf("Write = %d, %v", n, err)
	}
	s.Close()
	select {
	case data := <-got:
		if !bytes.Equal(data, want) {
			t.Errorf("got %d bytes, want %d identical bytes", len(data), len(want))
		}
	case <-time.After(10 * time.Second):
		t.Fatal("stream data did not arrive")
	}
	if _, err := host.OpenStream(Open{Port: 81}, 5*time.Second); err == nil {
		t.Error("OpenStream to a rejected port succeeded, want error")
	}
	if err := host.SendJSON(TConfig, Config{Args: []string{"/x"}}); err != nil {
		t.Fatal(err)
	}
	f, err := guest.Next()
	if err != nil || f.Type != TConfig {
		t.Errorf("Next = %v, %v; want config frame", f.Type, err)
	}
}

// TestMaxStreams checks that opens beyond MaxStreams are refused while the
// session goes on, and that closing a stream frees its slot.
func TestMaxStreams(t *testing.T) {
	a, b := net.Pipe()
	host, guest := NewMux(a, false), NewMux(b, true)
	host.OnOpen = func(s *Stream, o Open) {
		if o.Kind != StreamUnix {
			s.Reject(io.ErrUnexpectedEOF)
			return
		}
		_ = s.Accept()
	}
	go host.Run()
	go guest.Run()
	defer host.Close()
	defer guest.Close()
	var open []*Stream
	for i := range MaxStreams {
		s, err := guest.OpenStream(Open{Kind: StreamUnix, Forward: i}, 5*time.Second)
		if err != nil {
			t.Fatalf("OpenStream %d: %v", i, err)
		}
		open = append(open, s)
	}
	if _, err := guest.OpenStream(Open{Kind: StreamUnix}, 5*time.Second); err == nil {
		t.Fatalf("OpenStream %d succeeded, want refusal", MaxStreams+1)
	}
	// Free a slot on both sides: the guest closes, the host closes back.
	host.mu.Lock()
	hs := host.streams[open[0].id]
	host.mu.Unlock()
	open[0].Close()
	hs.Close()
	deadline := time.Now().Add(5 * time.Second)
	for {
		_, err := guest.OpenStream(Open{Kind: StreamUnix}, 5*time.Second)
		if err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("OpenStream after a close: %v, want success", err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}
