package attest

import (
	"io"
)

// trimDER cuts padding after the outer DER element: NV indices are often
// larger than the certificate they hold. Malformed input is returned
// unchanged for the verifier to refuse.
func trimDER(b []byte) []byte {
	if len(b) < 2 || b[0] != 0x30 {
		return b
	}
	l := int(b[1])
	hdr := 2
	if l&0x80 != 0 {
		n := l & 0x7f
		if n == 0 || n > 3 || len(b) < 2+n {
			return b
		}
		l = 0
		for _, c := range b[2 : 2+n] {
			l = l<<8 | int(c)
		}
		hdr += n
	}
	if hdr+l > len(b) {
		return b
	}
	return b[:hdr+l]
}

// readFull reads until buf is full or EOF and returns how much it read.
func readFull(r io.Reader, buf []byte) (int, error) {
	n, err := io.ReadFull(r, buf)
	if err == io.EOF || err == io.ErrUnexpectedEOF {
		return n, nil
	}
	return n, err
}
