// Package archive validates and unpacks function packages: zip or tar.gz
// uploads from untrusted users.
//
// Inspect checks a whole package without writing anything; Extract checks
// it the same way while writing it under a directory through os.Root. Both
// share one walk over the archive, so a package Inspect accepts is exactly
// one Extract accepts, with the same Manifest. ZipDir builds a reproducible
// zip from a directory for the CLI.
//
// The package must never write outside the destination directory, never
// create anything but regular files (0644 or 0755), directories (0755) and
// symlinks that resolve inside the package, and never trust a size an
// archive declares: every limit is enforced on bytes actually decompressed.
package archive

import (
	"fmt"
	"io/fs"
	"net/http"
)

// Error codes, stable for API clients (the gateway returns them in its JSON
// error body).
const (
	// CodeTooLarge: the archive itself is over Limits.MaxCompressed.
	CodeTooLarge = "package_too_large"
	// CodeUnpackedTooLarge: the decompressed contents are over Limits.MaxUnpacked.
	CodeUnpackedTooLarge = "package_unpacked_too_large"
	// CodeRatioExceeded: the contents decompress to more than Limits.MaxRatio
	// times the archive's size.
	CodeRatioExceeded = "package_ratio_exceeded"
	// CodeTooManyFiles: more entries than Limits.MaxFiles.
	CodeTooManyFiles = "package_too_many_files"
	// CodeUnsafePath: an entry name that is absolute, climbs with "..",
	// is not canonical, uses a backslash or a control character, conflicts
	// with another entry, or leads through a non-directory.
	CodeUnsafePath = "package_unsafe_path"
	// CodeUnsafeSymlink: a symlink whose target is absolute or resolves
	// outside the package, a symlink loop, or an entry placed through a symlink.
	CodeUnsafeSymlink = "package_unsafe_symlink"
	// CodeUnsupportedEntry: an entry that is not a regular file, directory,
	// symlink or (tar) hard link to an earlier file: devices, FIFOs,
	// sockets, old-style GNU sparse files, encrypted zip entries.
	CodeUnsupportedEntry = "package_unsupported_entry"
	// CodeInvalid: not a zip or tar.gz, or corrupt (bad checksum,
	// truncated, malformed headers).
	CodeInvalid = "package_invalid"
)

// Error is a refusal of a package. Msg is written for the user who
// uploaded it and names the offending entry; it carries no host detail.
type Error struct {
	Code string
	Msg  string
}

func (e *Error) Error() string { return e.Code + ": " + e.Msg }

// HTTPStatus maps the code to a response status: 413 Content Too Large
// for CodeTooLarge (the upload itself is over the limit), 400 Bad Request
// for CodeInvalid (the body is not a readable archive), and 422
// Unprocessable Content for every other code (a well-formed archive whose
// contents are refused).
func (e *Error) HTTPStatus() int {
	switch e.Code {
	case CodeTooLarge:
		return http.StatusRequestEntityTooLarge
	case CodeInvalid:
		return http.StatusBadRequest
	default:
		return http.StatusUnprocessableEntity
	}
}

func newError(code, format string, args ...any) *Error {
	return &Error{Code: code, Msg: fmt.Sprintf(format, args...)}
}

// quote renders an untrusted name for a message: quoted, and cut short.
func quote(name string) string {
	const max = 200
	if len(name) > max {
		name = name[:max] + "..."
	}
	return fmt.Sprintf("%q", name)
}

// Limits bounds what a package may contain. Zero fields take the defaults
// of DefaultLimits; so do negative ones, except MaxRatio.
type Limits struct {
	// MaxCompressed caps the archive's own size in bytes (default 50 MiB,
	// Lambda's limit for a direct upload).
	MaxCompressed int64
	// MaxUnpacked caps the total size in bytes of the files the archive
	// unpacks to, counted as they are decompressed (default 250 MiB).
	MaxUnpacked int64
	// MaxRatio caps the overall compression ratio: the unpacked total may
	// be at most MaxRatio times the archive's size (default 100, i.e.
	// 100:1). Packages unpacking to at most 1 MiB are exempt, since tiny
	// archives of text have high ratios and no weight. A negative value
	// disables the check.
	MaxRatio int64
	// MaxFiles caps the number of entries of every kind: files,
	// directories (including parents created without an entry of their
	// own), symlinks and links (default 10000).
	MaxFiles int
}

// Default limits.
const (
	DefaultMaxCompressed = 50 << 20
	DefaultMaxUnpacked   = 250 << 20
	DefaultMaxRatio      = 100
	DefaultMaxFiles      = 10000
	// ratioFloor is the unpacked size up to which MaxRatio does not apply.
	ratioFloor = 1 << 20
)

// DefaultLimits returns the limits zfaas applies unless configured otherwise.
func DefaultLimits() Limits {
	return Limits{
		MaxCompressed: DefaultMaxCompressed,
		MaxUnpacked:   DefaultMaxUnpacked,
		MaxRatio:      DefaultMaxRatio,
		MaxFiles:      DefaultMaxFiles,
	}
}

func (l Limits) normalize() Limits {
	d := DefaultLimits()
	if l.MaxCompressed <= 0 {
		l.MaxCompressed = d.MaxCompressed
	}
	if l.MaxUnpacked <= 0 {
		l.MaxUnpacked = d.MaxUnpacked
	}
	if l.MaxRatio == 0 {
		l.MaxRatio = d.MaxRatio
	}
	if l.MaxFiles <= 0 {
		l.MaxFiles = d.MaxFiles
	}
	return l
}

// EntryType is the kind of a Manifest entry.
type EntryType string

// Entry types.
const (
	TypeFile    EntryType = "file"
	TypeDir     EntryType = "dir"
	TypeSymlink EntryType = "symlink"
)

// Entry is one path a package unpacks to.
type Entry struct {
	// Name is the clean slash-separated path relative to the package root.
	Name string
	Type EntryType
	// Size is the file's size in bytes (0 for directories and symlinks).
	Size int64
	// Mode is the mode it is created with: 0644 or 0755 for files,
	// fs.ModeDir|0755 for directories, fs.ModeSymlink|0777 for symlinks.
	Mode fs.FileMode
	// Target is a symlink's target as stored, or, for a file unpacked as a
	// copy of an earlier one (a tar hard link), that file's name.
	Target string
	// Implied is set for a directory created as the parent of other
	// entries without an entry of its own.
	Implied bool
}

// Manifest describes what a package unpacks to.
type Manifest struct {
	// Format is "zip" or "tar.gz".
	Format string
	// Entries are in archive order, each implied parent directory just
	// before its first child. Extract creates them in this order, except
	// symlinks, which it creates after everything else.
	Entries []Entry
	// Files is the number of regular files.
	Files int
	// UnpackedSize is the total size of the regular files in bytes.
	UnpackedSize int64
}
