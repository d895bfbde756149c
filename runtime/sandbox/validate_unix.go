//go:build unix

package sandbox

import (
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"syscall"
)

var specIDRE = regexp.MustCompile(`^[A-Za-z0-9_-]{1,64}$`)

// ValidateSpec checks what every driver requires of a Spec: a safe ID, an
// absolute program, K=V environment, clean absolute paths, a code
// directory uid/gid can read, and mounts that neither repeat a target nor
// hide what a driver mounts itself. limits checks the driver's own rules
// for Spec.Limits (nil: none). Errors wrap ErrInvalidSpec.
func ValidateSpec(spec *Spec, uid, gid int, limits func(Limits) error) error {
	bad := func(format string, args ...any) error {
		return fmt.Errorf("%w: %s", ErrInvalidSpec, fmt.Sprintf(format, args...))
	}
	if !specIDRE.MatchString(spec.ID) {
		return bad("id %q: want 1-64 of [A-Za-z0-9_-]", spec.ID)
	}
	if len(spec.Args) == 0 || !filepath.IsAbs(spec.Args[0]) {
		return bad("args[0] must be an absolute path")
	}
	for _, a := range spec.Args {
		if strings.ContainsRune(a, 0) {
			return bad("argument contains NUL")
		}
	}
	for _, e := range spec.Env {
		if !strings.Contains(e, "=") || strings.ContainsRune(e, 0) {
			return bad("env entry %q is not K=V", e)
		}
	}
	if spec.WorkDir != "" && (!filepath.IsAbs(spec.WorkDir) || filepath.Clean(spec.WorkDir) != spec.WorkDir) {
		return bad("work dir %q must be a clean absolute path", spec.WorkDir)
	}
	if limits != nil {
		if err := limits(spec.Limits); err != nil {
			return bad("%v", err)
		}
	}
	if !filepath.IsAbs(spec.CodeDir) {
		return bad("code dir %q must be an absolute path", spec.CodeDir)
	}
	fi, err := os.Stat(spec.CodeDir)
	if err != nil {
		return bad("code dir: %v", err)
	}
	if !fi.IsDir() {
		return bad("code dir %s is not a directory", spec.CodeDir)
	}
	if !readableBy(fi, uid, gid) {
		return bad("code dir %s is not readable by uid %d (mode %v)", spec.CodeDir, uid, fi.Mode().Perm())
	}
	var targets []string
	for _, m := range spec.Mounts {
		if !filepath.IsAbs(m.Source) {
			return bad("mount source %q must be an absolute path", m.Source)
		}
		if _, err := os.Stat(m.Source); err != nil {
			return bad("mount source: %v", err)
		}
		t := m.Target
		if !filepath.IsAbs(t) || filepath.Clean(t) != t {
			return bad("mount target %q must be a clean absolute path", t)
		}
		if reservedTarget(t) {
			return bad("mount target %s is reserved", t)
		}
		if slices.Contains(targets, t) {
			return bad("mount target %s used twice", t)
		}
		targets = append(targets, t)
	}
	return nil
}

// readableBy reports whether a directory with fi's owner and mode can be
// listed and traversed by uid/gid (without supplementary groups).
func readableBy(fi fs.FileInfo, uid, gid int) bool {
	perm := fi.Mode().Perm()
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case ok && int(st.Uid) == uid:
		return perm&0o500 == 0o500
	case ok && int(st.Gid) == gid:
		return perm&0o050 == 0o050
	default:
		return perm&0o005 == 0o005
	}
}

// reservedTarget reports mount targets that would hide or replace what a
// driver mounts itself.
func reservedTarget(t string) bool {
	switch t {
	case "/", "/proc", "/dev", TmpDir, TaskRoot:
		return true
	}
	return strings.HasPrefix(t, "/proc/") || strings.HasPrefix(t, "/dev/")
}

// ValidID reports whether id can name an instance (and so a cgroup or a
// file): 1-64 of [A-Za-z0-9_-].
func ValidID(id string) bool { return specIDRE.MatchString(id) }

// PrepareStateDir creates dir (0700) if missing and checks that it is a
// directory owned by root that neither group nor others can access: a
// driver keeps each instance's secrets (SVID keys, sockets) under it.
func PrepareStateDir(dir string) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("create state dir: %w", err)
	}
	fi, err := os.Lstat(dir)
	if err != nil {
		return fmt.Errorf("state dir: %w", err)
	}
	st, ok := fi.Sys().(*syscall.Stat_t)
	switch {
	case !fi.IsDir():
		return fmt.Errorf("state dir %s is not a directory", dir)
	case !ok || st.Uid != 0:
		return fmt.Errorf("state dir %s must be owned by root", dir)
	case fi.Mode().Perm()&0o077 != 0:
		return fmt.Errorf("state dir %s must not be accessible by group or others (mode %#o)", dir, fi.Mode().Perm())
	}
	return nil
}
