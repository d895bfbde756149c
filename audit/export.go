package audit

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"
)

// Format is an export format.
type Format string

// Export formats.
const (
	// FormatJSONL is the canonical export: a header line, the records as
	// stored (one JSON object per line), the checkpoints covering them as
	// special lines, and a trailer line. Verify reads it.
	FormatJSONL Format = "jsonl"
	// FormatCEF is ArcSight Common Event Format, one event per line.
	FormatCEF Format = "cef"
	// FormatOCSF is OCSF 1.3.0 events (API Activity, Authentication,
	// Authorize Session), one JSON object per line.
	FormatOCSF Format = "ocsf"
)

// ExportFormatVersion names the jsonl export layout in its header.
const ExportFormatVersion = "zfaas-audit-export/v1"

// ParseFormat parses a format name ("" is jsonl).
func ParseFormat(s string) (Format, error) {
	switch f := Format(strings.ToLower(s)); f {
	case "":
		return FormatJSONL, nil
	case FormatJSONL, FormatCEF, FormatOCSF:
		return f, nil
	}
	return "", fmt.Errorf("audit: unknown export format %q (want jsonl, cef or ocsf)", s)
}

// ContentType returns the media type of the format.
func (f Format) ContentType() string {
	if f == FormatCEF {
		return "text/plain; charset=utf-8"
	}
	return "application/x-ndjson"
}

// Query selects records to export. Since and Until select one contiguous
// range of the chain: from the first record whose time is at or after
// Since, up to the record before the first one whose time is after Until.
// Kinds then keeps only records of those kinds ("policy.*" matches every
// kind starting "policy."); a kind-filtered jsonl export has gaps by
// design and Verify reports it as filtered.
type Query struct {
	Since, Until time.Time
	Kinds        []string
}

func (q Query) matchKind(k string) bool {
	if len(q.Kinds) == 0 {
		return true
	}
	for _, want := range q.Kinds {
		if want == k {
			return true
		}
		if p, ok := strings.CutSuffix(want, ".*"); ok && strings.HasPrefix(k, p+".") {
			return true
		}
	}
	return false
}

// Special jsonl lines are objects with an "audit" member, which records
// never have.
type headerLine struct {
	Audit      string   `json:"audit"` // "header"
	Format     string   `json:"format"`
	Origin     string   `json:"origin"`
	Hash       HashAlg  `json:"hash"`
	ExportedAt string   `json:"exported_at"`
	Since      string   `json:"since,omitempty"`
	Until      string   `json:"until,omitempty"`
	Kinds      []string `json:"kinds,omitempty"`
	// Keys are the verifier keys the writers published. Informational:
	// Verify trusts only the keys it is given.
	Keys []string `json:"keys,omitempty"`
}

type checkpointLine struct {
	Audit string `json:"audit"` // "checkpoint"
	Size  uint64 `json:"size"`
	Note  string `json:"note"`
}

type trailerLine struct {
	Audit   string `json:"audit"` // "trailer"
	Records uint64 `json:"records"`
	First   uint64 `json:"first,omitempty"`
	Last    uint64 `json:"last,omitempty"`
}

// sink writes one export format.
type sink interface {
	header(h headerLine) error
	record(r *Record, line []byte) error
	checkpoint(cp Checkpoint, at time.Time) error
	trailer(t trailerLine) error
}

// Export writes the records selected by q in format f to w, streaming,
// with the checkpoints whose size falls in the exported range. When this
// Log has a signing key it first checkpoints the current head, so an
// export up to now is covered to its last record. The export ends at the
// head as it was when Export started.
func (l *Log) Export(ctx context.Context, w io.Writer, q Query, f Format) error {
	if l.signer != nil {
		if h, err := l.readHead(ctx); err == nil && h.seq > 0 {
			if _, err := l.cutCheckpoint(ctx, h.seq, h.hash); err != nil {
				l.log.Warn("audit: checkpoint before export failed", "err", err)
			}
		}
	}
	bw := bufio.NewWriterSize(w, 64<<10)
	var s sink
	switch f {
	case FormatJSONL, "":
		s = &jsonlSink{w: bw}
	case FormatCEF:
		s = &cefSink{w: bw, product: l.cfg.ProductVersion}
	case FormatOCSF:
		s = &ocsfSink{w: bw, enc: json.NewEncoder(bw), product: l.cfg.ProductVersion}
	default:
		return fmt.Errorf("audit: unknown export format %q", f)
	}
	hl := headerLine{Audit: "header", Format: ExportFormatVersion, Origin: l.cfg.Origin, Hash: l.hash,
		ExportedAt: FormatTime(l.cfg.Now()), Kinds: q.Kinds}
	if !q.Since.IsZero() {
		hl.Since = FormatTime(q.Since)
	}
	if !q.Until.IsZero() {
		hl.Until = FormatTime(q.Until)
	}
	keys, err := l.PublicKeys(ctx)
	if err != nil {
		return err
	}
	hl.Keys = keys
	info, err := l.recs.Info(ctx)
	if err != nil {
		return fmt.Errorf("audit: stream info: %w", err)
	}
	cps, err := l.checkpoints(ctx)
	if err != nil {
		return err
	}
	if err := s.header(hl); err != nil {
		return err
	}
	var tr trailerLine
	tr.Audit = "trailer"
	if info.State.Msgs > 0 {
		cfg := jetstream.ConsumerConfig{FilterSubject: Subject, DeliverPolicy: jetstream.DeliverAllPolicy}
		if !q.Since.IsZero() {
			// Records are stamped before they are stored: start a little
			// earlier than Since and skip by record time.
			start := q.Since.Add(-5 * time.Minute)
			cfg.DeliverPolicy, cfg.OptStartTime = jetstream.DeliverByStartTimePolicy, &start
		}
		started := q.Since.IsZero()
		ci := 0
		err = scan(ctx, l.recs, cfg, info.State.LastSeq, func(m jetstream.Msg) (bool, error) {
			for line := range bytes.SplitSeq(bytes.TrimRight(m.Data(), "\n"), []byte{'\n'}) {
				r, err := ParseLine(line)
				if err != nil {
					return false, fmt.Errorf("audit: stored record: %w", err)
				}
				if !started {
					if r.Time.Before(q.Since) {
						continue
					}
					started = true
				}
				if !q.Until.IsZero() && r.Time.After(q.Until) {
					return false, nil
				}
				if tr.First == 0 {
					tr.First = r.Seq
				}
				tr.Last = r.Seq
				if q.matchKind(r.Kind) {
					if err := s.record(&r, line); err != nil {
						return false, err
					}
					tr.Records++
				}
				for ci < len(cps) && cps[ci].Size <= r.Seq {
					if cps[ci].Size >= tr.First {
						if err := s.checkpoint(cps[ci], r.Time); err != nil {
							return false, err
						}
					}
					ci++
				}
			}
			return ctx.Err() == nil, ctx.Err()
		})
		if err != nil {
			return err
		}
	}
	if err := s.trailer(tr); err != nil {
		return err
	}
	return bw.Flush()
}

// checkpoints returns the stored checkpoints, by size, one per size.
func (l *Log) checkpoints(ctx context.Context) ([]Checkpoint, error) {
	var out []Checkpoint
	err := scan(ctx, l.cps, jetstream.ConsumerConfig{FilterSubject: CheckpointSubject, DeliverPolicy: jetstream.DeliverAllPolicy}, 0,
		func(m jetstream.Msg) (bool, error) {
			note := string(m.Data())
			split := strings.LastIndex(note, "\n\n")
			if split < 0 {
				return true, nil
			}
			cp, err := parseCheckpointText(note[:split+1])
			if err != nil {
				l.log.Warn("audit: malformed stored checkpoint skipped", "err", err)
				return true, nil
			}
			cp.Note = note
			out = append(out, cp)
			return true, nil
		})
	slices.SortStableFunc(out, func(a, b Checkpoint) int {
		switch {
		case a.Size < b.Size:
			return -1
		case a.Size > b.Size:
			return 1
		}
		return 0
	})
	out = slices.CompactFunc(out, func(a, b Checkpoint) bool { return a.Size == b.Size })
	return out, err
}

type jsonlSink struct{ w *bufio.Writer }

func (s *jsonlSink) writeJSON(v any) error {
	b, err := encodeJSON(v)
	if err != nil {
		return err
	}
	s.w.Write(b)
	return s.w.WriteByte('\n')
}

func (s *jsonlSink) header(h headerLine) error { return s.writeJSON(h) }

func (s *jsonlSink) record(_ *Record, line []byte) error {
	s.w.Write(line)
	return s.w.WriteByte('\n')
}

func (s *jsonlSink) checkpoint(cp Checkpoint, _ time.Time) error {
	return s.writeJSON(checkpointLine{Audit: "checkpoint", Size: cp.Size, Note: cp.Note})
}

func (s *jsonlSink) trailer(t trailerLine) error { return s.writeJSON(t) }

// seqString is a sequence number as text.
func seqString(n uint64) string { return strconv.FormatUint(n, 10) }
