package policyd

import (
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// maskOp is one operation of the zfaas.log.mask policy, following OPA's
// decision-log masking convention: a JSON pointer string means "remove";
// an object {"op": "remove"|"upsert", "path": pointer, "value": v} says it
// explicitly. Pointers address the event {"input": …, "result": …};
// pointers elsewhere are ignored.
type maskOp struct {
	upsert bool
	path   string
	tokens []string
	value  any
}

// parseMask reads the mask policy's result: a set (array) of operations.
func parseMask(v any) ([]maskOp, error) {
	arr, ok := v.([]any)
	if !ok {
		return nil, fmt.Errorf("mask is %T, want a set of JSON pointers", v)
	}
	ops := make([]maskOp, 0, len(arr))
	for _, x := range arr {
		var op maskOp
		switch m := x.(type) {
		case string:
			op.path = m
		case map[string]any:
			op.path, _ = m["path"].(string)
			switch m["op"] {
			case "remove", nil:
			case "upsert":
				op.upsert, op.value = true, m["value"]
			default:
				return nil, fmt.Errorf("mask op %v", m["op"])
			}
		default:
			return nil, fmt.Errorf("mask entry is %T", x)
		}
		toks, err := pointerTokens(op.path)
		if err != nil {
			return nil, err
		}
		if len(toks) == 0 || (toks[0] != "input" && toks[0] != "result") {
			continue // nothing else of the event is logged
		}
		op.tokens = toks
		ops = append(ops, op)
	}
	// Deterministic order: removals first, deepest and last array indexes
	// first, so earlier removals do not shift later ones.
	sort.SliceStable(ops, func(i, j int) bool {
		if ops[i].upsert != ops[j].upsert {
			return !ops[i].upsert
		}
		return pointerAfter(ops[i].tokens, ops[j].tokens)
	})
	return ops, nil
}

// pointerAfter orders pointers descending, token by token, comparing array
// indexes as numbers.
func pointerAfter(a, b []string) bool {
	for i := 0; i < len(a) && i < len(b); i++ {
		if a[i] == b[i] {
			continue
		}
		x, errX := strconv.Atoi(a[i])
		y, errY := strconv.Atoi(b[i])
		if errX == nil && errY == nil {
			return x > y
		}
		return a[i] > b[i]
	}
	return len(a) > len(b)
}

// pointerTokens splits an RFC 6901 JSON pointer.
func pointerTokens(p string) ([]string, error) {
	if p == "" {
		return nil, nil
	}
	if !strings.HasPrefix(p, "/") {
		return nil, fmt.Errorf("JSON pointer %q must start with /", p)
	}
	toks := strings.Split(p[1:], "/")
	for i, t := range toks {
		toks[i] = strings.ReplaceAll(strings.ReplaceAll(t, "~1", "/"), "~0", "~")
	}
	return toks, nil
}

// applyMask applies ops to doc in place and returns the pointers that
// removed something or were upserted.
func applyMask(doc map[string]any, ops []maskOp) []string {
	var done []string
	for _, op := range ops {
		var ok bool
		if op.upsert {
			ok = upsert(doc, op.tokens, op.value)
		} else {
			ok = remove(doc, op.tokens)
		}
		if ok {
			done = append(done, op.path)
		}
	}
	sort.Strings(done)
	return done
}

// lookup returns the value at JSON pointer p in v, or nil.
func lookup(v any, p string) any {
	toks, err := pointerTokens(p)
	if err != nil {
		return nil
	}
	for _, t := range toks {
		switch x := v.(type) {
		case map[string]any:
			v = x[t]
		case []any:
			i, err := strconv.Atoi(t)
			if err != nil || i < 0 || i >= len(x) {
				return nil
			}
			v = x[i]
		default:
			return nil
		}
	}
	return v
}

func remove(doc map[string]any, toks []string) bool {
	parent, last, err := walk(doc, toks, false)
	if err != nil {
		return false
	}
	switch p := parent.(type) {
	case map[string]any:
		if _, ok := p[last]; !ok {
			return false
		}
		delete(p, last)
		return true
	case *sliceRef:
		a := *p.s
		i, err := strconv.Atoi(last)
		if err != nil || i < 0 || i >= len(a) {
			return false
		}
		p.set(append(a[:i:i], a[i+1:]...))
		return true
	}
	return false
}

func upsert(doc map[string]any, toks []string, value any) bool {
	parent, last, err := walk(doc, toks, true)
	if err != nil {
		return false
	}
	if m, ok := parent.(map[string]any); ok {
		m[last] = value
		return true
	}
	return false
}

var errNoPath = errors.New("no such path")

// walk returns the container holding the pointer's last token: a map, or a
// *sliceRef (so removal can replace the slice in its parent). With create,
// missing objects on the way are created.
func walk(doc map[string]any, toks []string, create bool) (any, string, error) {
	var cur any = doc
	var holder func(any) // sets cur in its parent, for slices
	for _, t := range toks[:len(toks)-1] {
		switch x := cur.(type) {
		case map[string]any:
			next, ok := x[t]
			if !ok || next == nil {
				if !create {
					return nil, "", errNoPath
				}
				next = map[string]any{}
				x[t] = next
			}
			m, key := x, t
			holder = func(v any) { m[key] = v }
			cur = next
		case []any:
			i, err := strconv.Atoi(t)
			if err != nil || i < 0 || i >= len(x) {
				return nil, "", errNoPath
			}
			a, idx := x, i
			holder = func(v any) { a[idx] = v }
			cur = x[i]
		default:
			return nil, "", errNoPath
		}
	}
	last := toks[len(toks)-1]
	if a, ok := cur.([]any); ok {
		if holder == nil {
			return nil, "", errNoPath
		}
		return &sliceRef{s: &a, set: holder}, last, nil
	}
	return cur, last, nil
}

// sliceRef lets remove shrink a slice held in a map or another slice.
type sliceRef struct {
	s   *[]any
	set func(any)
}

// builtinMaskPointers are erased from every decision-log record: request
// credentials and bodies, in zfaas's input and in Envoy ext_authz input.
var builtinMaskPointers = []string{
	"/input/request/headers/authorization",
	"/input/request/headers/proxy-authorization",
	"/input/request/headers/cookie",
	"/input/request/body",
	"/input/attributes/request/http/headers/authorization",
	"/input/attributes/request/http/headers/proxy-authorization",
	"/input/attributes/request/http/headers/cookie",
	"/input/attributes/request/http/body",
	"/input/attributes/request/http/raw_body",
	"/input/parsed_body",
}

func builtinMask() []maskOp {
	ops := make([]maskOp, 0, len(builtinMaskPointers))
	for _, p := range builtinMaskPointers {
		toks, err := pointerTokens(p)
		if err != nil {
			continue // not reached: the constants above are well formed
		}
		ops = append(ops, maskOp{path: p, tokens: toks})
	}
	return ops
}
