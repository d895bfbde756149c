package archive

import (
	"errors"
	"io/fs"
	"path"
	"slices"
	"strings"
	"unicode/utf8"
)

const (
	// maxNameLen caps entry names and symlink targets in bytes.
	maxNameLen = 1024
	// maxComponentLen caps one path element (NAME_MAX on Linux).
	maxComponentLen = 255
	// maxLinkHops caps the symlinks followed while resolving one symlink
	// (the kernel's limit is 40).
	maxLinkHops = 40
	// maxResolveSteps caps the path elements processed while resolving all
	// symlinks of one package, so crafted chains cannot burn CPU.
	maxResolveSteps = 1 << 18
)

// cleanName validates an entry name and returns it in canonical form:
// slash-separated, relative, without "." or ".." elements, empty elements
// or a trailing slash. Leading "./" (written by "tar -C dir .") is
// dropped, and so is one trailing "/" on directories. The name "" means
// the package root itself, allowed only for directories. Backslashes,
// control characters and invalid UTF-8 are refused rather than
// interpreted.
func cleanName(raw string, isDir bool) (string, error) {
	bad := func(why string) (string, error) {
		return "", newError(CodeUnsafePath, "entry %s %s", quote(raw), why)
	}
	switch {
	case raw == "":
		return bad("has an empty name")
	case len(raw) > maxNameLen:
		return bad("has a name over 1024 bytes")
	case !utf8.ValidString(raw):
		return bad("has a name that is not UTF-8")
	case strings.ContainsFunc(raw, isControl):
		return bad("has a control character in its name")
	case strings.Contains(raw, `\`):
		return bad("has a backslash in its name")
	case raw[0] == '/':
		return bad("is an absolute path")
	}
	name := raw
	for strings.HasPrefix(name, "./") {
		name = name[2:]
	}
	if strings.HasSuffix(name, "/") {
		if !isDir {
			return bad("is not a directory but its name ends with /")
		}
		name = name[:len(name)-1]
	}
	if name == "" || name == "." {
		if !isDir {
			return bad("names the package root")
		}
		return "", nil
	}
	if !fs.ValidPath(name) {
		if slices.Contains(strings.Split(name, "/"), "..") {
			return bad("climbs out with ..")
		}
		return bad("is not a clean relative path")
	}
	for elem := range strings.SplitSeq(name, "/") {
		if len(elem) > maxComponentLen {
			return bad("has a path element over 255 bytes")
		}
	}
	return name, nil
}

func isControl(r rune) bool { return r < 0x20 || r == 0x7f }

// checkTarget validates a symlink target's form; where it leads is
// checked by resolver once the whole package is known.
func checkTarget(t string) error {
	switch {
	case t == "":
		return errors.New("empty target")
	case len(t) > maxNameLen:
		return errors.New("target over 1024 bytes")
	case !utf8.ValidString(t):
		return errors.New("target is not UTF-8")
	case strings.ContainsFunc(t, isControl):
		return errors.New("control character in target")
	case strings.Contains(t, `\`):
		return errors.New("backslash in target")
	case t[0] == '/':
		return errors.New("absolute target")
	}
	return nil
}

// resolver follows symlinks within a package's tree the way the kernel
// would, element by element, to check that every symlink resolves inside
// the package root.
type resolver struct {
	tree   map[string]*node
	budget int // path elements left to process
}

var (
	errEscapes   = errors.New("resolves outside the package")
	errLoop      = errors.New("too many levels of symlinks")
	errTooDeep   = errors.New("symlinks too complex to resolve")
	errBadTarget = errors.New("unsafe target in chain")
)

// check resolves the symlink name. A chain may end at a path that does
// not exist (a dangling link is harmless); it may never climb above the
// root.
func (r *resolver) check(name string) error {
	n := r.tree[name]
	if n == nil || n.typ != TypeSymlink {
		return nil
	}
	// stack holds the resolved elements so far: real directories or names
	// that do not exist, never symlinks.
	var stack []string
	if dir := path.Dir(name); dir != "." {
		stack = strings.Split(dir, "/")
	}
	pending := strings.Split(n.target, "/")
	hops := 1
	for len(pending) > 0 {
		if r.budget--; r.budget < 0 {
			return errTooDeep
		}
		elem := pending[0]
		pending = pending[1:]
		switch elem {
		case "", ".":
			continue
		case "..":
			if len(stack) == 0 {
				return errEscapes
			}
			stack = stack[:len(stack)-1]
			continue
		}
		p := strings.Join(append(stack, elem), "/")
		if next := r.tree[p]; next != nil && next.typ == TypeSymlink {
			if hops++; hops > maxLinkHops {
				return errLoop
			}
			if checkTarget(next.target) != nil {
				return errBadTarget
			}
			pending = append(strings.Split(next.target, "/"), pending...)
			continue
		}
		stack = append(stack, elem)
	}
	return nil
}
