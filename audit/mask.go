package audit

import (
	"context"
	"slices"
	"strconv"
	"strings"
)

// Masker removes what must not be stored from a record before it is
// hashed and written. It runs on the log's writer goroutine, so it must be
// fast; it may change any field but Seq, Prev and Hash, and should list
// what it removed in r.Erased (JSON pointers into the record).
type Masker interface {
	Mask(ctx context.Context, r *Record) error
}

// MaskFunc adapts a function to a Masker.
type MaskFunc func(ctx context.Context, r *Record) error

// Mask calls f.
func (f MaskFunc) Mask(ctx context.Context, r *Record) error { return f(ctx, r) }

// PointerMasker removes the JSON pointers (RFC 6901) from each record's
// Details, in the convention of the zfaas.log.mask policy: "/details/a/b"
// addresses Details directly, and the policy's own "/input/..." and
// "/result/..." pointers address Details["input"] and Details["result"]
// (where a decision record keeps its masked input and result). Pointers
// that match nothing are ignored; those that removed something are added
// to Erased.
func PointerMasker(pointers ...string) Masker {
	var toks [][]string
	for _, p := range pointers {
		t, ok := pointerTokens(p)
		if !ok || len(t) == 0 {
			continue
		}
		switch t[0] {
		case "details":
			t = t[1:]
		case "input", "result":
		default:
			continue
		}
		if len(t) > 0 {
			toks = append(toks, t)
		}
	}
	return MaskFunc(func(_ context.Context, r *Record) error {
		for _, t := range toks {
			if removePointer(r.Details, t) {
				r.Erased = append(r.Erased, "/details/"+joinPointer(t))
			}
		}
		return nil
	})
}

// deniedKeys are Details keys (compared case-insensitively, with - and _
// alike) that the log always removes at any depth, whatever the Masker:
// credentials, request and response bodies, function environments.
var deniedKeys = map[string]bool{
	"authorization": true, "proxy_authorization": true, "cookie": true, "set_cookie": true,
	"body": true, "raw_body": true, "parsed_body": true, "payload": true, "response_body": true,
	"password": true, "passwd": true, "secret": true, "client_secret": true, "secrets": true,
	"token": true, "access_token": true, "refresh_token": true, "id_token": true, "bearer": true,
	"private_key": true, "api_key": true, "environment": true,
}

func deniedKey(k string) bool {
	return deniedKeys[strings.ReplaceAll(strings.ToLower(k), "-", "_")]
}

// scrub removes denied keys from v at any depth and returns the pointers
// it removed, prefix being v's pointer.
func scrub(v any, prefix string) []string {
	var out []string
	switch x := v.(type) {
	case map[string]any:
		keys := make([]string, 0, len(x))
		for k := range x {
			keys = append(keys, k)
		}
		slices.Sort(keys)
		for _, k := range keys {
			p := prefix + "/" + escapeToken(k)
			if deniedKey(k) {
				delete(x, k)
				out = append(out, p)
				continue
			}
			out = append(out, scrub(x[k], p)...)
		}
	case []any:
		for i, e := range x {
			out = append(out, scrub(e, prefix+"/"+strconv.Itoa(i))...)
		}
	}
	return out
}

func pointerTokens(p string) ([]string, bool) {
	if !strings.HasPrefix(p, "/") {
		return nil, false
	}
	toks := strings.Split(p[1:], "/")
	for i, t := range toks {
		toks[i] = strings.ReplaceAll(strings.ReplaceAll(t, "~1", "/"), "~0", "~")
	}
	return toks, true
}

func escapeToken(t string) string {
	return strings.ReplaceAll(strings.ReplaceAll(t, "~", "~0"), "/", "~1")
}

func joinPointer(toks []string) string {
	esc := make([]string, len(toks))
	for i, t := range toks {
		esc[i] = escapeToken(t)
	}
	return strings.Join(esc, "/")
}

// removePointer deletes the member or element at toks under m.
func removePointer(m map[string]any, toks []string) bool {
	var cur any = m
	for i, t := range toks {
		last := i == len(toks)-1
		switch x := cur.(type) {
		case map[string]any:
			v, ok := x[t]
			if !ok {
				return false
			}
			if last {
				delete(x, t)
				return true
			}
			cur = v
		case []any:
			n, err := strconv.Atoi(t)
			if err != nil || n < 0 || n >= len(x) {
				return false
			}
			if last {
				// Arrays keep their length: the element becomes null.
				x[n] = nil
				return true
			}
			cur = x[n]
		default:
			return false
		}
	}
	return false
}
