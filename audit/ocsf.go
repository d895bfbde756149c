package audit

import (
	"bufio"
	"encoding/json"
	"strings"
	"time"
)

// OCSFVersion is the OCSF schema version of FormatOCSF events.
const OCSFVersion = "1.3.0"

// OCSF classes the kinds map to.
const (
	OCSFClassAPIActivity      = 6003 // category 6, Application Activity
	OCSFClassAuthentication   = 3002 // category 3, Identity & Access Management
	OCSFClassAuthorizeSession = 3003 // category 3, Identity & Access Management
)

// ocsfClass is where a kind goes: class, activity id and name.
type ocsfClass struct {
	class      int
	activity   int
	activityNm string
}

// ocsfKinds maps kinds to OCSF classes and activities. Kinds not listed
// are API Activity, activity 99 (Other).
var ocsfKinds = map[string]ocsfClass{
	KindDeploy:         {OCSFClassAPIActivity, 1, "Create"},
	KindAlias:          {OCSFClassAPIActivity, 3, "Update"},
	KindDelete:         {OCSFClassAPIActivity, 4, "Delete"},
	KindInvoke:         {OCSFClassAPIActivity, 99, "Invoke"},
	KindPolicyPush:     {OCSFClassAPIActivity, 1, "Create"},
	KindPolicyRefused:  {OCSFClassAPIActivity, 1, "Create"},
	KindPolicyRollback: {OCSFClassAPIActivity, 3, "Update"},
	KindExpired:        {OCSFClassAPIActivity, 4, "Delete"},
	KindDropped:        {OCSFClassAPIActivity, 99, "Drop"},
	KindWorkerAdmitted: {OCSFClassAuthentication, 1, "Logon"},
	KindWorkerRefused:  {OCSFClassAuthentication, 1, "Logon"},
	KindWorkerRevoked:  {OCSFClassAuthentication, 2, "Logoff"},
	KindWorkerDrained:  {OCSFClassAPIActivity, 3, "Update"},
	KindSVIDIssued:     {OCSFClassAuthentication, 3, "Authentication Ticket"},
	KindDecision:       {OCSFClassAuthorizeSession, 99, "Decision"},
	KindEgressDeny:     {OCSFClassAuthorizeSession, 99, "Egress Deny"},
}

var ocsfClassNames = map[int][2]any{
	OCSFClassAPIActivity:      {"API Activity", 6},
	OCSFClassAuthentication:   {"Authentication", 3},
	OCSFClassAuthorizeSession: {"Authorize Session", 3},
}

var ocsfCategoryNames = map[int]string{3: "Identity & Access Management", 6: "Application Activity"}

// OCSFClassOf returns the OCSF class_uid and activity_id a kind maps to.
func OCSFClassOf(kind string) (classUID, activityID int) {
	c, ok := ocsfKinds[kind]
	if !ok {
		return OCSFClassAPIActivity, 99
	}
	return c.class, c.activity
}

type ocsfSink struct {
	w       *bufio.Writer
	enc     *json.Encoder
	origin  string
	product string // product version
}

func (s *ocsfSink) header(h headerLine) error {
	s.origin = h.Origin
	s.enc.SetEscapeHTML(false)
	return nil
}

func (s *ocsfSink) trailer(trailerLine) error { return nil }

// ocsfStatus maps an outcome to status_id and status.
func ocsfStatus(outcome string) (int, string) {
	switch outcome {
	case OutcomeAllow, OutcomeSuccess:
		return 1, "Success"
	case OutcomeDeny, OutcomeFailure:
		return 2, "Failure"
	}
	return 0, "Unknown"
}

// ocsfSeverity maps the CEF severity to severity_id.
func ocsfSeverity(r *Record) (int, string) {
	switch severity(r) {
	case 8:
		return 4, "High"
	case 6:
		return 3, "Medium"
	}
	return 1, "Informational"
}

func (s *ocsfSink) base(class, activity int, activityName string, timeMS int64, sevID int, sevName string) map[string]any {
	cn := ocsfClassNames[class]
	cat := cn[1].(int)
	return map[string]any{
		"class_uid":     class,
		"class_name":    cn[0],
		"category_uid":  cat,
		"category_name": ocsfCategoryNames[cat],
		"activity_id":   activity,
		"activity_name": activityName,
		"type_uid":      class*100 + activity,
		"type_name":     cn[0].(string) + ": " + activityName,
		"severity_id":   sevID,
		"severity":      sevName,
		"time":          timeMS,
	}
}

func (s *ocsfSink) metadata(uid, kind string) map[string]any {
	return map[string]any{
		"version":      OCSFVersion,
		"product":      map[string]any{"name": "zfaas", "vendor_name": "zfaas", "version": s.product, "feature": map[string]any{"name": "audit"}},
		"uid":          uid,
		"log_name":     "zfaas.audit",
		"log_provider": s.origin,
		"event_code":   kind,
	}
}

func (s *ocsfSink) record(r *Record, _ []byte) error {
	c, ok := ocsfKinds[r.Kind]
	if !ok {
		c = ocsfClass{OCSFClassAPIActivity, 99, "Other"}
	}
	sevID, sevName := ocsfSeverity(r)
	ev := s.base(c.class, c.activity, c.activityNm, r.Time.UnixMilli(), sevID, sevName)
	md := s.metadata(seqString(r.Seq), r.Kind)
	md["original_time"] = FormatTime(r.Time)
	if r.TraceID != "" {
		md["correlation_uid"] = r.TraceID
	}
	ev["metadata"] = md
	statusID, status := ocsfStatus(r.Outcome)
	ev["status_id"], ev["status"] = statusID, status
	if r.Outcome != "" {
		ev["status_detail"] = r.Outcome
	}
	actor := map[string]any{"app_name": "zfaas"}
	if r.Actor != "" {
		actor["user"] = ocsfUser(r.Actor)
	}
	ev["actor"] = actor
	msg := r.Kind
	if r.Action != "" {
		msg += " " + r.Action
	}
	if r.Subject != "" {
		msg += " " + r.Subject
	}
	if r.Actor != "" {
		msg += " by " + r.Actor
	}
	if r.Outcome != "" {
		msg += ": " + r.Outcome
	}
	ev["message"] = msg
	switch c.class {
	case OCSFClassAPIActivity:
		api := map[string]any{"operation": firstNonEmpty(r.Action, r.Kind), "service": map[string]any{"name": "zfaas"}}
		if r.TraceID != "" {
			api["request"] = map[string]any{"uid": r.TraceID}
		}
		ev["api"] = api
		ev["src_endpoint"] = map[string]any{"name": firstNonEmpty(r.Node, "unknown")}
		if r.Subject != "" {
			ev["resources"] = []any{map[string]any{"uid": r.Subject, "type": resourceType(r.Kind)}}
		}
	case OCSFClassAuthentication:
		// The entity authenticated: the worker or workload (Subject), else the actor.
		ev["user"] = ocsfUser(firstNonEmpty(r.Subject, r.Actor, "unknown"))
		ev["auth_protocol_id"], ev["auth_protocol"] = 99, authProtocol(r.Kind)
		ev["service"] = map[string]any{"name": "zfaas-identity"}
	case OCSFClassAuthorizeSession:
		ev["user"] = ocsfUser(firstNonEmpty(r.Actor, "unknown"))
		if r.Subject != "" {
			ev["dst_endpoint"] = map[string]any{"name": r.Subject}
		}
	}
	z := map[string]any{"seq": r.Seq, "prev": r.Prev, "hash": r.Hash, "kind": r.Kind}
	for k, v := range map[string]string{"node": r.Node, "subject": r.Subject, "action": r.Action, "outcome": r.Outcome, "decision_id": r.DecisionID} {
		if v != "" {
			z[k] = v
		}
	}
	if r.PolicyRevision != 0 {
		z["policy_revision"] = r.PolicyRevision
	}
	if len(r.Details) > 0 {
		z["details"] = r.Details
	}
	if len(r.Erased) > 0 {
		z["erased"] = r.Erased
	}
	ev["unmapped"] = map[string]any{"zfaas": z}
	return s.enc.Encode(ev)
}

func (s *ocsfSink) checkpoint(cp Checkpoint, at time.Time) error {
	ev := s.base(OCSFClassAPIActivity, 99, "Checkpoint", at.UnixMilli(), 1, "Informational")
	ev["metadata"] = s.metadata("checkpoint-"+seqString(cp.Size), "audit.checkpoint")
	ev["status_id"], ev["status"] = 1, "Success"
	ev["actor"] = map[string]any{"app_name": "zfaas"}
	ev["api"] = map[string]any{"operation": "checkpoint", "service": map[string]any{"name": "zfaas"}}
	ev["src_endpoint"] = map[string]any{"name": cp.Origin}
	ev["message"] = "audit checkpoint at size " + seqString(cp.Size)
	ev["unmapped"] = map[string]any{"zfaas": map[string]any{"checkpoint": map[string]any{"size": cp.Size, "head": cp.HeadHex(), "note": cp.Note}}}
	return s.enc.Encode(ev)
}

func ocsfUser(id string) map[string]any {
	u := map[string]any{"uid": id}
	if i := strings.LastIndexByte(id, '/'); i >= 0 && i < len(id)-1 {
		u["name"] = id[i+1:]
	} else {
		u["name"] = id
	}
	return u
}

func resourceType(kind string) string {
	switch {
	case strings.HasPrefix(kind, "policy."):
		return "policy"
	case strings.HasPrefix(kind, "audit."):
		return "audit log"
	}
	return "function"
}

func authProtocol(kind string) string {
	if kind == KindSVIDIssued {
		return "SPIFFE SVID"
	}
	return "TPM attestation"
}

func firstNonEmpty(s ...string) string {
	for _, x := range s {
		if x != "" {
			return x
		}
	}
	return ""
}
