//go:build linux

package guestagent

import "testing"

func TestTransportFromCmdline(t *testing.T) {
	for _, c := range []struct {
		cmdline string
		want    GuestTransport
		bad     bool
	}{
		{"console=ttyS0 quiet", SerialPort{}, false},
		{"console=ttyS0 zfaas.transport=serial", SerialPort{}, false},
		{"zfaas.transport=vsock panic=-1", VsockListener{Port: VsockPort, Peer: VsockCIDHost}, false},
		{"zfaas.transport=tcp", nil, true},
		{"zfaas.transport", SerialPort{}, false}, // no value: not the key=value form
		{"xzfaas.transport=vsock", SerialPort{}, false},
	} {
		got, err := TransportFromCmdline(c.cmdline)
		if c.bad {
			if err == nil {
				t.Errorf("%q: no error, got %#v", c.cmdline, got)
			}
			continue
		}
		if err != nil || got != c.want {
			t.Errorf("%q: %#v, %v; want %#v", c.cmdline, got, err, c.want)
		}
	}
}
