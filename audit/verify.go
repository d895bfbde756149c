package audit

import (
	"bufio"
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"
)

// ErrBroken is wrapped by the *BrokenLink Verify returns for an export
// that does not verify.
var ErrBroken = errors.New("audit: export does not verify")

// BrokenLink is the first problem Verify found.
type BrokenLink struct {
	// Seq is the sequence number where the chain breaks: the record that
	// is missing, altered, out of place or duplicated, or the size of the
	// checkpoint that does not verify.
	Seq uint64
	// Line is the export line (1-based) where it was found.
	Line int
	// Reason says what is wrong.
	Reason string
}

func (b *BrokenLink) Error() string {
	return fmt.Sprintf("audit: first broken link at seq %d (line %d): %s", b.Seq, b.Line, b.Reason)
}

// Unwrap makes errors.Is(err, ErrBroken) true.
func (b *BrokenLink) Unwrap() error { return ErrBroken }

// Report is what Verify found.
type Report struct {
	// Origin and Hash are the export header's.
	Origin string  `json:"origin"`
	Hash   HashAlg `json:"hash"`
	// Records is how many records the export holds; First and Last are
	// their sequence numbers.
	Records uint64 `json:"records"`
	First   uint64 `json:"first"`
	Last    uint64 `json:"last"`
	// Checkpoints counts checkpoints whose signature verified and whose
	// head hash matched the record at their size; CoveredThrough is the
	// largest such size.
	Checkpoints    int    `json:"checkpoints"`
	CoveredThrough uint64 `json:"covered_through"`
	// Uncovered counts records after CoveredThrough: chained, but not yet
	// signed by any checkpoint in the export (a truncated tail would not
	// be detected there).
	Uncovered uint64 `json:"uncovered"`
	// Unchecked counts checkpoints whose record is not in the export
	// (beyond its end, or filtered out); their signatures were checked.
	Unchecked int `json:"unchecked_checkpoints"`
	// Signers are the keys that signed the verified checkpoints.
	Signers []string `json:"signers,omitempty"`
	// SignaturesChecked is false when Verify was given no keys: then
	// checkpoints were matched against the records but their signatures
	// were not checked.
	SignaturesChecked bool `json:"signatures_checked"`
	// Filtered is true for a kind-filtered export (Kinds): links are only
	// checked between consecutive records, gaps are expected, and the
	// export proves less than a full one.
	Filtered bool     `json:"filtered"`
	Kinds    []string `json:"kinds,omitempty"`
	// Anchor says what the first record's Prev was checked against.
	Anchor string `json:"anchor"`
	// Broken is the first problem, nil when the export verifies.
	Broken *BrokenLink `json:"broken,omitempty"`
}

// OK reports whether the export verified completely: no broken link, an
// unfiltered export, and checkpoint signatures checked.
func (r Report) OK() bool { return r.Broken == nil && !r.Filtered && r.SignaturesChecked }

// maxLine bounds one export line.
const maxLine = 16 << 20

// recentHashes is how many recent record hashes Verify keeps to match a
// checkpoint that is placed after later records.
const recentHashes = 4096

// Verify checks a jsonl export offline: the header, every record's hash,
// the link of each record to the one before, gaps, duplicates and order,
// the signature of every checkpoint (against keys: signatures by unknown
// keys are ignored, one by a given key must verify, and each checkpoint
// needs one) and that each checkpoint's head hash is the hash of the
// record at its size, and the trailer. It stops at the first problem and
// returns it as a *BrokenLink (wrapping ErrBroken) with the report so far.
// Other errors are read errors. With no keys, signatures are not checked
// (Report.SignaturesChecked is false).
func Verify(r io.Reader, keys ...*Verifier) (Report, error) {
	v := verifier{keys: keys, rep: Report{SignaturesChecked: len(keys) > 0}, recent: map[uint64]string{}}
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 64<<10), maxLine)
	for sc.Scan() {
		v.line++
		if b := v.next(bytes.TrimSpace(sc.Bytes())); b != nil {
			b.Line = v.line
			v.rep.Broken = b
			v.finish()
			return v.rep, b
		}
	}
	if err := sc.Err(); err != nil {
		return v.rep, fmt.Errorf("audit: read export: %w", err)
	}
	var b *BrokenLink
	switch {
	case !v.header:
		b = &BrokenLink{Reason: "empty input: not a zfaas audit export"}
	case !v.trailer:
		b = &BrokenLink{Seq: v.last + 1, Reason: fmt.Sprintf("the export ends without its trailer: truncated after record %d", v.last)}
	case len(v.pending) > 0 && !v.rep.Filtered:
		// An export includes only checkpoints up to its last record.
		b = &BrokenLink{Seq: v.last + 1, Reason: fmt.Sprintf("a checkpoint at size %d is beyond the last record %d: records %d..%d are missing", v.pending[0].Size, v.last, v.last+1, v.pending[0].Size)}
	}
	if b != nil {
		b.Line = v.line + 1
		v.rep.Broken = b
		v.finish()
		return v.rep, b
	}
	v.finish()
	return v.rep, nil
}

type verifier struct {
	keys    []*Verifier
	rep     Report
	line    int
	header  bool
	trailer bool
	hash    HashAlg

	last, first uint64
	lastHash    string
	firstPrev   string
	recent      map[uint64]string // seq → hash of the last recentHashes records
	pending     []Checkpoint      // checkpoints beyond the last record so far
	signers     map[string]bool
}

func (v *verifier) finish() {
	v.rep.Unchecked += len(v.pending)
	v.pending = nil
	if v.rep.Records > 0 {
		if v.rep.CoveredThrough >= v.first {
			v.rep.Uncovered = v.last - v.rep.CoveredThrough
		} else {
			v.rep.Uncovered = v.rep.Records
		}
	}
}

func (v *verifier) next(line []byte) *BrokenLink {
	if len(line) == 0 {
		return &BrokenLink{Seq: v.last + 1, Reason: "empty line"}
	}
	var probe struct {
		Audit *string `json:"audit"`
	}
	if err := json.Unmarshal(line, &probe); err != nil {
		return &BrokenLink{Seq: v.last + 1, Reason: "line is not a JSON object: " + err.Error()}
	}
	if !v.header {
		if probe.Audit == nil || *probe.Audit != "header" {
			return &BrokenLink{Reason: "the first line is not a zfaas audit export header"}
		}
		return v.readHeader(line)
	}
	if v.trailer {
		return &BrokenLink{Seq: v.last + 1, Reason: "line after the trailer"}
	}
	if probe.Audit == nil {
		return v.record(line)
	}
	switch *probe.Audit {
	case "checkpoint":
		return v.checkpoint(line)
	case "trailer":
		return v.readTrailer(line)
	}
	return &BrokenLink{Seq: v.last + 1, Reason: fmt.Sprintf("unexpected %q line", *probe.Audit)}
}

func (v *verifier) readHeader(line []byte) *BrokenLink {
	var h headerLine
	if err := json.Unmarshal(line, &h); err != nil {
		return &BrokenLink{Reason: "malformed header: " + err.Error()}
	}
	if h.Format != ExportFormatVersion {
		return &BrokenLink{Reason: fmt.Sprintf("unsupported export format %q (want %s)", h.Format, ExportFormatVersion)}
	}
	if !h.Hash.valid() {
		return &BrokenLink{Reason: fmt.Sprintf("unknown hash algorithm %q", h.Hash)}
	}
	v.header, v.hash = true, h.Hash
	v.rep.Origin, v.rep.Hash = h.Origin, h.Hash
	v.rep.Filtered, v.rep.Kinds = len(h.Kinds) > 0, h.Kinds
	return nil
}

func (v *verifier) readTrailer(line []byte) *BrokenLink {
	var t trailerLine
	if err := json.Unmarshal(line, &t); err != nil {
		return &BrokenLink{Seq: v.last + 1, Reason: "malformed trailer: " + err.Error()}
	}
	if t.Records != v.rep.Records {
		return &BrokenLink{Seq: v.last + 1, Reason: fmt.Sprintf("the trailer counts %d records, the export has %d: records were removed or added", t.Records, v.rep.Records)}
	}
	if !v.rep.Filtered && v.rep.Records > 0 && (t.First != v.first || t.Last != v.last) {
		return &BrokenLink{Seq: v.last + 1, Reason: fmt.Sprintf("the trailer says records %d..%d, the export has %d..%d", t.First, t.Last, v.first, v.last)}
	}
	v.trailer = true
	return nil
}

func (v *verifier) record(line []byte) *BrokenLink {
	want := v.last + 1
	rec, err := ParseLine(line)
	if err != nil {
		return &BrokenLink{Seq: want, Reason: "malformed record: " + err.Error()}
	}
	if rec.V != RecordVersion {
		return &BrokenLink{Seq: rec.Seq, Reason: fmt.Sprintf("record version %d is not supported", rec.V)}
	}
	sum, err := ComputeHash(v.hash, &rec)
	if err != nil {
		return &BrokenLink{Seq: rec.Seq, Reason: "record cannot be encoded: " + err.Error()}
	}
	if sum != rec.Hash {
		return &BrokenLink{Seq: rec.Seq, Reason: fmt.Sprintf("record %d was altered: its content hashes to %s, not to its hash %s", rec.Seq, short(sum), short(rec.Hash))}
	}
	if rec.Seq == 0 {
		return &BrokenLink{Seq: 0, Reason: "record with sequence number 0"}
	}
	if v.rep.Records == 0 {
		v.first, v.firstPrev = rec.Seq, rec.Prev
		if rec.Seq == 1 {
			if rec.Prev != zeroHash {
				return &BrokenLink{Seq: 1, Reason: "record 1 must have the zero hash as prev"}
			}
			v.rep.Anchor = "genesis: the export starts at record 1"
		} else {
			v.rep.Anchor = fmt.Sprintf("unanchored: the export starts at record %d; its prev %s is taken as given", rec.Seq, short(rec.Prev))
		}
	} else {
		switch {
		case rec.Seq <= v.last:
			return &BrokenLink{Seq: rec.Seq, Reason: fmt.Sprintf("record %d appears after record %d: duplicated, inserted or reordered", rec.Seq, v.last)}
		case rec.Seq > want && !v.rep.Filtered:
			return &BrokenLink{Seq: want, Reason: fmt.Sprintf("record %d is missing (the next record is %d): deleted or reordered", want, rec.Seq)}
		case rec.Seq == want && rec.Prev != v.lastHash:
			return &BrokenLink{Seq: rec.Seq, Reason: fmt.Sprintf("record %d does not link to record %d (prev %s, but record %d hashes to %s): a record was inserted, replaced or re-hashed", rec.Seq, v.last, short(rec.Prev), v.last, short(v.lastHash))}
		}
	}
	if rec.Kind == KindExpired {
		if b := v.expired(&rec); b != nil {
			return b
		}
	}
	v.rep.Records++
	v.last, v.lastHash = rec.Seq, rec.Hash
	v.rep.First, v.rep.Last = v.first, v.last
	v.recent[rec.Seq] = rec.Hash
	delete(v.recent, rec.Seq-recentHashes)
	// Checkpoints seen before their record.
	keep := v.pending[:0]
	for _, cp := range v.pending {
		if cp.Size == rec.Seq {
			if b := v.matchHead(cp, rec.Hash); b != nil {
				return b
			}
			continue
		}
		if cp.Size < rec.Seq { // its record was filtered out
			v.rep.Unchecked++
			continue
		}
		keep = append(keep, cp)
	}
	v.pending = keep
	return nil
}

// expired checks an audit.expired record announcing the removal of the
// records right before the export's first one: its last_hash anchors the
// first record's prev.
func (v *verifier) expired(rec *Record) *BrokenLink {
	last, _ := numberField(rec.Details["last_seq"])
	hash, _ := rec.Details["last_hash"].(string)
	if last == 0 || last+1 != v.first {
		return nil
	}
	if hash != v.firstPrev {
		return &BrokenLink{Seq: v.first, Reason: fmt.Sprintf("record %d's prev %s is not the last expired hash %s announced by record %d", v.first, short(v.firstPrev), short(hash), rec.Seq)}
	}
	v.rep.Anchor = fmt.Sprintf("expiry: record %d says records up to %d expired and the last of them hashed to the first record's prev", rec.Seq, last)
	return nil
}

func numberField(x any) (uint64, bool) {
	n, ok := x.(json.Number)
	if !ok {
		return 0, false
	}
	var u uint64
	_, err := fmt.Sscan(n.String(), &u)
	return u, err == nil
}

func (v *verifier) checkpoint(line []byte) *BrokenLink {
	var cl checkpointLine
	if err := json.Unmarshal(line, &cl); err != nil {
		return &BrokenLink{Seq: v.last, Reason: "malformed checkpoint line: " + err.Error()}
	}
	var cp Checkpoint
	if len(v.keys) > 0 {
		c, signed, err := OpenCheckpoint(cl.Note, v.keys)
		if err != nil {
			return &BrokenLink{Seq: cl.Size, Reason: fmt.Sprintf("checkpoint at size %d rejected: %v", cl.Size, err)}
		}
		cp = c
		if v.signers == nil {
			v.signers = map[string]bool{}
		}
		for _, s := range signed {
			id := fmt.Sprintf("%s+%08x", s.Name(), s.KeyID())
			if !v.signers[id] {
				v.signers[id] = true
				v.rep.Signers = append(v.rep.Signers, id)
			}
		}
	} else {
		split := strings.LastIndex(cl.Note, "\n\n")
		if split < 0 {
			return &BrokenLink{Seq: cl.Size, Reason: "malformed checkpoint note"}
		}
		c, err := parseCheckpointText(cl.Note[:split+1])
		if err != nil {
			return &BrokenLink{Seq: cl.Size, Reason: "malformed checkpoint: " + err.Error()}
		}
		cp = c
	}
	if cp.Size != cl.Size {
		return &BrokenLink{Seq: cl.Size, Reason: fmt.Sprintf("checkpoint line says size %d, its signed note says %d", cl.Size, cp.Size)}
	}
	if cp.Origin != v.rep.Origin {
		return &BrokenLink{Seq: cp.Size, Reason: fmt.Sprintf("checkpoint origin %q is not the export's origin %q", cp.Origin, v.rep.Origin)}
	}
	switch {
	case v.rep.Records == 0 || cp.Size > v.last:
		v.pending = append(v.pending, cp)
	case cp.Size < v.first:
		v.rep.Unchecked++
	default:
		h, ok := v.recent[cp.Size]
		if !ok {
			if v.rep.Filtered {
				v.rep.Unchecked++
				return nil
			}
			return &BrokenLink{Seq: cp.Size, Reason: fmt.Sprintf("checkpoint at size %d comes too long after its record", cp.Size)}
		}
		return v.matchHead(cp, h)
	}
	return nil
}

func (v *verifier) matchHead(cp Checkpoint, recordHash string) *BrokenLink {
	if cp.HeadHex() != recordHash {
		return &BrokenLink{Seq: cp.Size, Reason: fmt.Sprintf("the checkpoint at size %d signs head %s but record %d hashes to %s: records after size %d were altered", cp.Size, short(cp.HeadHex()), cp.Size, short(recordHash), v.rep.CoveredThrough)}
	}
	v.rep.Checkpoints++
	if cp.Size > v.rep.CoveredThrough {
		v.rep.CoveredThrough = cp.Size
	}
	return nil
}

func short(h string) string {
	if len(h) > 16 {
		return h[:16] + "…"
	}
	return h
}
