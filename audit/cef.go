package audit

import (
	"bufio"
	"strconv"
	"strings"
	"time"
)

// CEF (ArcSight Common Event Format, version 0) mapping. One event per
// record:
//
//	CEF:0|zfaas|zfaas|<product version>|<kind>|<name>|<severity>|<extensions>
//
// Extensions, in this order, each only when the record has the field:
//
//	rt           record time, milliseconds since the Unix epoch
//	externalId   seq
//	suser        actor (SPIFFE ID)
//	dvchost      node
//	act          action
//	outcome      outcome
//	cs1 subject, cs3 trace id, cs4 decision id, cs5 hash, cs6 details (JSON)
//	             (each with its csNLabel)
//	cn1          policy revision (cn1Label=policyRevision)
//	cn2          seq (cn2Label=seq)
//	flexString1  prev hash (flexString1Label=prevHash)
//	flexString2  erased pointers, comma-separated (flexString2Label=erased)
//
// A checkpoint is an event with signature id audit.checkpoint: rt is the
// time of the record at its size, cn2 its size, cs5 its head hash and cs6
// the whole signed note.
//
// Escaping follows the CEF specification: in header fields \ and | are
// escaped with a backslash (and line breaks become spaces); in extension
// values \ and = are escaped with a backslash and line breaks are written
// as \n and \r.

// cefNames are the CEF event names of the known kinds.
var cefNames = map[string]string{
	KindDecision: "policy decision", KindDeploy: "function deployed", KindAlias: "alias changed",
	KindDelete: "function deleted", KindPolicyPush: "policy revision pushed", KindPolicyRefused: "policy revision refused",
	KindPolicyRollback: "policy revision rolled back", KindWorkerAdmitted: "worker admitted",
	KindWorkerRefused: "worker refused", KindWorkerRevoked: "worker revoked", KindSVIDIssued: "SVID issued",
	KindEgressDeny: "egress denied", KindInvoke: "function invoked", KindExpired: "audit records expired",
	KindDropped: "audit records dropped", KindWorkerDrained: "worker drained",
}

// severity is a record's CEF severity (0–10): 8 for lost audit records,
// 6 for denials, refusals, revocations and failures, 3 otherwise.
func severity(r *Record) int {
	switch {
	case r.Kind == KindDropped:
		return 8
	case r.Outcome == OutcomeDeny || r.Outcome == OutcomeFailure ||
		r.Kind == KindEgressDeny || r.Kind == KindPolicyRefused || r.Kind == KindWorkerRefused || r.Kind == KindWorkerRevoked:
		return 6
	}
	return 3
}

var cefHeaderEscaper = strings.NewReplacer(`\`, `\\`, `|`, `\|`, "\r\n", " ", "\n", " ", "\r", " ")

var cefValueEscaper = strings.NewReplacer(`\`, `\\`, `=`, `\=`, "\r\n", `\n`, "\n", `\n`, "\r", `\r`)

// CEFHeaderEscape escapes a CEF header field.
func CEFHeaderEscape(s string) string { return cefHeaderEscaper.Replace(s) }

// CEFValueEscape escapes a CEF extension value.
func CEFValueEscape(s string) string { return cefValueEscaper.Replace(s) }

type cefSink struct {
	w       *bufio.Writer
	product string // product version
}

func (s *cefSink) header(headerLine) error   { return nil }
func (s *cefSink) trailer(trailerLine) error { return nil }

type cefExt struct{ b strings.Builder }

func (e *cefExt) add(k, v string) {
	if v == "" {
		return
	}
	if e.b.Len() > 0 {
		e.b.WriteByte(' ')
	}
	e.b.WriteString(k)
	e.b.WriteByte('=')
	e.b.WriteString(CEFValueEscape(v))
}

func (s *cefSink) event(sigID, name string, sev int, ext *cefExt) error {
	s.w.WriteString("CEF:0|zfaas|zfaas|")
	s.w.WriteString(CEFHeaderEscape(s.product))
	s.w.WriteByte('|')
	s.w.WriteString(CEFHeaderEscape(sigID))
	s.w.WriteByte('|')
	s.w.WriteString(CEFHeaderEscape(name))
	s.w.WriteByte('|')
	s.w.WriteString(strconv.Itoa(sev))
	s.w.WriteByte('|')
	s.w.WriteString(ext.b.String())
	return s.w.WriteByte('\n')
}

func (s *cefSink) record(r *Record, _ []byte) error {
	var e cefExt
	e.add("rt", strconv.FormatInt(r.Time.UnixMilli(), 10))
	e.add("externalId", seqString(r.Seq))
	e.add("suser", r.Actor)
	e.add("dvchost", r.Node)
	e.add("act", r.Action)
	e.add("outcome", r.Outcome)
	if r.Subject != "" {
		e.add("cs1Label", "subject")
		e.add("cs1", r.Subject)
	}
	if r.TraceID != "" {
		e.add("cs3Label", "traceId")
		e.add("cs3", r.TraceID)
	}
	if r.DecisionID != "" {
		e.add("cs4Label", "decisionId")
		e.add("cs4", r.DecisionID)
	}
	e.add("cs5Label", "hash")
	e.add("cs5", r.Hash)
	if len(r.Details) > 0 {
		d, err := encodeJSON(r.Details)
		if err != nil {
			return err
		}
		e.add("cs6Label", "details")
		e.add("cs6", string(d))
	}
	if r.PolicyRevision != 0 {
		e.add("cn1Label", "policyRevision")
		e.add("cn1", strconv.FormatInt(r.PolicyRevision, 10))
	}
	e.add("cn2Label", "seq")
	e.add("cn2", seqString(r.Seq))
	e.add("flexString1Label", "prevHash")
	e.add("flexString1", r.Prev)
	if len(r.Erased) > 0 {
		e.add("flexString2Label", "erased")
		e.add("flexString2", strings.Join(r.Erased, ","))
	}
	name := cefNames[r.Kind]
	if name == "" {
		name = r.Kind
	}
	return s.event(r.Kind, name, severity(r), &e)
}

func (s *cefSink) checkpoint(cp Checkpoint, at time.Time) error {
	var e cefExt
	e.add("rt", strconv.FormatInt(at.UnixMilli(), 10))
	e.add("cn2Label", "size")
	e.add("cn2", seqString(cp.Size))
	e.add("cs5Label", "head")
	e.add("cs5", cp.HeadHex())
	e.add("cs6Label", "note")
	e.add("cs6", cp.Note)
	return s.event("audit.checkpoint", "audit checkpoint", 1, &e)
}
