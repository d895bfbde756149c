package archive

import (
	"bytes"
	"testing"
)

func TestCountSignature(t *testing.T) {
	const chunk = 256 << 10
	sig := []byte("PK\x01\x02")
	for _, size := range []int{4, chunk - 1, chunk, chunk + 3, 2*chunk + 7} {
		data := make([]byte, size)
		for _, at := range []int{0, chunk - 4, chunk - 2, chunk - 1, chunk, 2*chunk - 3, size - 4} {
			if at >= 0 && at+4 <= size {
				copy(data[at:], sig)
			}
		}
		want := int64(bytes.Count(data, sig))
		got, err := countSignature(bytes.NewReader(data), int64(size), sig)
		if err != nil || got != want {
			t.Errorf("size %d: got %d, %v; want %d", size, got, err, want)
		}
	}
	if _, err := countSignature(bytes.NewReader([]byte("PK")), 10, sig); err == nil {
		t.Error("short reader: got nil error")
	}
}
