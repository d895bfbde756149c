package attest

import (
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"slices"
)

// TCG PC Client Platform Firmware Profile constants.
const (
	evNoAction      = 0x00000003
	algSHA1         = 0x0004
	algSHA256       = 0x000b
	maxLogEvents    = 1 << 16
	specIDSignature = "Spec ID Event03\x00"
	startupLocality = "StartupLocality\x00"
)

var algNames = map[uint16]string{0x0004: "sha1", 0x000b: "sha256", 0x000c: "sha384", 0x000d: "sha512", 0x0012: "sm3_256"}

// logReader reads little-endian fields with bounds checks.
type logReader struct {
	b   []byte
	err error
}

func (r *logReader) bytes(n int) []byte {
	if r.err != nil {
		return nil
	}
	if n < 0 || n > len(r.b) {
		r.err = fmt.Errorf("truncated")
		return nil
	}
	v := r.b[:n]
	r.b = r.b[n:]
	return v
}

func (r *logReader) u8() uint8 {
	if b := r.bytes(1); b != nil {
		return b[0]
	}
	return 0
}

func (r *logReader) u16() uint16 {
	if b := r.bytes(2); b != nil {
		return binary.LittleEndian.Uint16(b)
	}
	return 0
}

func (r *logReader) u32() uint32 {
	if b := r.bytes(4); b != nil {
		return binary.LittleEndian.Uint32(b)
	}
	return 0
}

// replayEventLog parses a crypto-agile TCG PC Client event log (a
// TCG_PCR_EVENT carrying the "Spec ID Event03" header, then
// TCG_PCR_EVENT2 records), replays its SHA-256 digests and checks the
// result against every quoted PCR value: a quoted PCR the log never
// extends must still hold its reset value. It does not judge what the
// events mean; that is the policy's job.
func replayEventLog(log []byte, quoted map[int][]byte) (EventLogFacts, error) {
	facts := EventLogFacts{Present: true}
	fail := func(format string, a ...any) (EventLogFacts, error) {
		return facts, fmt.Errorf("%w: %s", ErrEventLog, fmt.Sprintf(format, a...))
	}
	r := &logReader{b: log}
	// Header: TCG_PCR_EVENT with a SHA-1 sized digest.
	r.u32() // PCR index
	if typ := r.u32(); r.err == nil && typ != evNoAction {
		return fail("first event is not the EV_NO_ACTION spec ID event")
	}
	r.bytes(20)
	hdr := &logReader{b: r.bytes(int(r.u32()))}
	if r.err != nil {
		return fail("header: %v", r.err)
	}
	if string(hdr.bytes(len(specIDSignature))) != specIDSignature {
		return fail("not a crypto-agile log (no %q header)", specIDSignature[:15])
	}
	hdr.u32() // platform class
	hdr.bytes(4)
	n := hdr.u32()
	if hdr.err != nil || n == 0 || n > 8 {
		return fail("header lists %d algorithms", n)
	}
	sizes := make(map[uint16]int, n)
	for range n {
		alg, size := hdr.u16(), hdr.u16()
		if size == 0 || size > 64 {
			return fail("digest size %d for algorithm %#04x", size, alg)
		}
		sizes[alg] = int(size)
		if name, ok := algNames[alg]; ok {
			facts.Algorithms = append(facts.Algorithms, name)
		}
	}
	hdr.bytes(int(hdr.u8())) // vendor info
	if hdr.err != nil {
		return fail("header: %v", hdr.err)
	}
	slices.Sort(facts.Algorithms)
	if sizes[algSHA256] != sha256.Size {
		return fail("log has no SHA-256 digests")
	}

	var pcrs [maxPCRs][]byte
	for i := range pcrs {
		pcrs[i] = make([]byte, sha256.Size)
	}
	for count := 0; len(r.b) > 0; count++ {
		if count >= maxLogEvents {
			return fail("more than %d events", maxLogEvents)
		}
		index, typ := r.u32(), r.u32()
		nd := r.u32()
		if r.err != nil || nd == 0 || nd > 8 {
			return fail("event %d: bad digest count", count)
		}
		var digest []byte
		for range nd {
			alg := r.u16()
			size, ok := sizes[alg]
			if !ok {
				return fail("event %d: algorithm %#04x not in the header", count, alg)
			}
			d := r.bytes(size)
			if alg == algSHA256 {
				digest = d
			}
		}
		data := r.bytes(int(r.u32()))
		if r.err != nil {
			return fail("event %d: %v", count, r.err)
		}
		if index >= maxPCRs {
			return fail("event %d: PCR %d out of range", count, index)
		}
		if typ == evNoAction {
			if index == 0 && len(data) == len(startupLocality)+1 && bytes.HasPrefix(data, []byte(startupLocality)) {
				pcrs[0] = make([]byte, sha256.Size)
				pcrs[0][sha256.Size-1] = data[len(startupLocality)]
			}
			continue
		}
		if digest == nil {
			return fail("event %d: no SHA-256 digest", count)
		}
		h := sha256.New()
		h.Write(pcrs[index])
		h.Write(digest)
		pcrs[index] = h.Sum(nil)
		facts.Events++
	}
	for i, want := range quoted {
		if !bytes.Equal(pcrs[i], want) {
			return fail("PCR %d replays to %s, quoted %s", i, hex.EncodeToString(pcrs[i]), hex.EncodeToString(want))
		}
	}
	facts.Replayed = true
	return facts, nil
}
