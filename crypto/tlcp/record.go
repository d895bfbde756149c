package tlcp

import (
	"crypto/cipher"
	"crypto/hmac"
	"crypto/subtle"
	"encoding/binary"
	"errors"
	"hash"
	"io"
	"sync"
)

// Record layer (GB/T 38636-2020 6.3).
const (
	recordChangeCipherSpec uint8 = 20
	recordAlert            uint8 = 21
	recordHandshake        uint8 = 22
	recordApplicationData  uint8 = 23

	recordHeaderLen = 5
	// maxPlaintext is the largest fragment a record carries (2^14).
	maxPlaintext = 1 << 14
	// maxCiphertext bounds a protected record's fragment (2^14 + 2048).
	maxCiphertext = maxPlaintext + 2048
	// maxEmptyRecords bounds consecutive empty application data records, so
	// a peer cannot keep a reader spinning.
	maxEmptyRecords = 64
	// maxWarnings bounds consecutive warning alerts.
	maxWarnings = 8

	cbcBlockSize = 16
	sm3MACLen    = 32
)

// errBadRecordMAC is the one error every failed decryption returns, whether
// padding or MAC was wrong.
var errBadRecordMAC = errors.New("tlcp: bad record MAC")

// protection is one direction's record protection: SM4-CBC with
// HMAC-SM3 (MAC-then-encrypt, explicit IV per record) or SM4-GCM.
type protection struct {
	// SM4-GCM
	aead    cipher.AEAD
	fixedIV []byte
	// SM4-CBC + HMAC-SM3
	block cipher.Block
	mac   hash.Hash
}

// halfConn is the state of one direction of a connection.
type halfConn struct {
	sync.Mutex
	p    *protection // nil: no protection yet
	next *protection // installed by the next change_cipher_spec
	seq  uint64
	err  error // sticky
}

func (hc *halfConn) changeCipherSpec() error {
	if hc.next == nil {
		return errors.New("tlcp: change_cipher_spec before keys were agreed")
	}
	hc.p, hc.next, hc.seq = hc.next, nil, 0
	return nil
}

func (hc *halfConn) incSeq() error {
	if hc.seq == ^uint64(0) {
		// Renegotiation is not supported, so the connection ends here.
		return errors.New("tlcp: record sequence number exhausted")
	}
	hc.seq++
	return nil
}

func appendAADHeader(b []byte, seq uint64, typ uint8, n int) []byte {
	b = binary.BigEndian.AppendUint64(b, seq)
	return append(b, typ, versHi, versLo, byte(n>>8), byte(n))
}

// seal appends one protected record carrying payload (at most
// maxPlaintext bytes) to dst.
func (hc *halfConn) seal(dst []byte, typ uint8, payload []byte, rnd io.Reader) ([]byte, error) {
	start := len(dst)
	dst = append(dst, typ, versHi, versLo, 0, 0)
	p := hc.p
	switch {
	case p == nil:
		dst = append(dst, payload...)
	case p.aead != nil:
		var nonce [12]byte
		copy(nonce[:], p.fixedIV)
		binary.BigEndian.PutUint64(nonce[4:], hc.seq)
		var aad [13]byte
		appendAADHeader(aad[:0], hc.seq, typ, len(payload))
		dst = append(dst, nonce[4:]...)
		dst = p.aead.Seal(dst, nonce[:], payload, aad[:])
	default:
		var hdr [13]byte
		appendAADHeader(hdr[:0], hc.seq, typ, len(payload))
		p.mac.Reset()
		p.mac.Write(hdr[:])
		p.mac.Write(payload)
		ivStart := len(dst)
		var iv [cbcBlockSize]byte
		if _, err := io.ReadFull(rnd, iv[:]); err != nil {
			return nil, err
		}
		dst = append(dst, iv[:]...)
		dst = append(dst, payload...)
		dst = p.mac.Sum(dst)
		padLen := cbcBlockSize - (len(payload)+sm3MACLen+1)%cbcBlockSize
		if padLen == cbcBlockSize {
			padLen = 0
		}
		for i := 0; i <= padLen; i++ {
			dst = append(dst, byte(padLen))
		}
		body := dst[ivStart+cbcBlockSize:]
		cipher.NewCBCEncrypter(p.block, iv[:]).CryptBlocks(body, body)
	}
	n := len(dst) - start - recordHeaderLen
	dst[start+3], dst[start+4] = byte(n>>8), byte(n)
	if err := hc.incSeq(); err != nil {
		return nil, err
	}
	return dst, nil
}

// open removes the protection of a record's fragment in place and returns
// the plaintext. Any failure is errBadRecordMAC.
func (hc *halfConn) open(typ uint8, frag []byte) ([]byte, error) {
	p := hc.p
	var out []byte
	switch {
	case p == nil:
		out = frag
	case p.aead != nil:
		if len(frag) < gcmNonceExplicit+gcmTagSize {
			return nil, errBadRecordMAC
		}
		var nonce [12]byte
		copy(nonce[:], p.fixedIV)
		copy(nonce[4:], frag[:gcmNonceExplicit])
		var aad [13]byte
		appendAADHeader(aad[:0], hc.seq, typ, len(frag)-gcmNonceExplicit-gcmTagSize)
		ct := frag[gcmNonceExplicit:]
		pt, err := p.aead.Open(ct[:0], nonce[:], ct, aad[:])
		if err != nil {
			return nil, errBadRecordMAC
		}
		out = pt
	default:
		var err error
		if out, err = p.openCBC(hc.seq, typ, frag); err != nil {
			return nil, err
		}
	}
	if err := hc.incSeq(); err != nil {
		return nil, err
	}
	return out, nil
}

// minCBCFragment is the shortest valid CBC fragment: an IV and one
// encrypted MAC with at least one padding byte, rounded up to blocks.
const minCBCFragment = cbcBlockSize + (sm3MACLen+1+cbcBlockSize-1)/cbcBlockSize*cbcBlockSize

// openCBC decrypts and checks padding and MAC without branching on the
// padding's value, so a padding failure and a MAC failure look alike.
// (The MAC is computed over a length that depends on the padding, so a
// timing difference of a few SM3 blocks remains; prefer the GCM suites.)
func (p *protection) openCBC(seq uint64, typ uint8, frag []byte) ([]byte, error) {
	if len(frag) < minCBCFragment || len(frag)%cbcBlockSize != 0 {
		return nil, errBadRecordMAC
	}
	iv, body := frag[:cbcBlockSize], frag[cbcBlockSize:]
	cipher.NewCBCDecrypter(p.block, iv).CryptBlocks(body, body)

	n := len(body)
	padLen := int(body[n-1])
	// good is 1 when padLen+1+macLen <= n.
	good := subtle.ConstantTimeLessOrEq(padLen+1+sm3MACLen, n)
	// Every one of the padLen bytes before the last must equal padLen; look
	// at up to 256 bytes, masking those outside the padding.
	toCheck := 256
	if toCheck > n {
		toCheck = n
	}
	for i := 1; i < toCheck; i++ {
		inPad := subtle.ConstantTimeLessOrEq(i, padLen)
		same := subtle.ConstantTimeByteEq(body[n-1-i], byte(padLen))
		// When the byte is inside the padding it must be the same.
		good &= same | (inPad ^ 1)
	}
	padLen = subtle.ConstantTimeSelect(good, padLen, 0)
	contentLen := n - padLen - 1 - sm3MACLen

	var hdr [13]byte
	appendAADHeader(hdr[:0], seq, typ, contentLen)
	p.mac.Reset()
	p.mac.Write(hdr[:])
	p.mac.Write(body[:contentLen])
	var sum [sm3MACLen]byte
	mac := p.mac.Sum(sum[:0])
	macOK := 0
	if hmac.Equal(mac, body[contentLen:contentLen+sm3MACLen]) {
		macOK = 1
	}
	if good&macOK != 1 {
		return nil, errBadRecordMAC
	}
	return body[:contentLen], nil
}
