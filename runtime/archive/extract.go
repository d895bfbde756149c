package archive

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
)

// Inspect validates the whole package in r (size bytes) against lim
// without writing anything, decompressing every entry to count its real
// size. It returns the Manifest Extract would produce, or an *Error saying
// why the package is refused.
func Inspect(r io.ReaderAt, size int64, lim Limits) (Manifest, error) {
	return walk(noCtx, r, size, lim, nil)
}

// Extract validates the package in r (size bytes) like Inspect while
// unpacking it into dst, an existing empty directory. Every write goes
// through an os.Root at dst, so nothing lands outside dst even if dst's
// contents change concurrently. Files are created 0644 or 0755 (0755 when
// the archive gives the file any execute bit), directories 0755, whatever
// the process umask; setuid, setgid and sticky bits are dropped; symlinks
// are created last, after all of them were checked. On any error Extract
// removes everything it created in dst and returns an *Error for a refused
// package, the context's error, or a wrapped I/O error.
func Extract(ctx context.Context, r io.ReaderAt, size int64, dst string, lim Limits) (Manifest, error) {
	root, err := os.OpenRoot(dst)
	if err != nil {
		return Manifest{}, fmt.Errorf("extract: %w", err)
	}
	defer root.Close()
	if err := checkEmpty(root); err != nil {
		return Manifest{}, fmt.Errorf("extract to %s: %w", dst, err)
	}
	m, err := walk(ctx.Err, r, size, lim, rootSink{root})
	if err != nil {
		if cerr := removeContents(root); cerr != nil {
			err = errors.Join(err, fmt.Errorf("extract: clean up %s: %w", dst, cerr))
		}
		return Manifest{}, err
	}
	return m, nil
}

func noCtx() error { return nil }

func checkEmpty(root *os.Root) error {
	d, err := root.Open(".")
	if err != nil {
		return err
	}
	defer d.Close()
	names, err := d.Readdirnames(1)
	if len(names) > 0 {
		return errors.New("directory is not empty")
	}
	if err != nil && err != io.EOF {
		return err
	}
	return nil
}

// removeContents removes everything in root (which Extract found empty).
func removeContents(root *os.Root) error {
	d, err := root.Open(".")
	if err != nil {
		return err
	}
	names, err := d.Readdirnames(-1)
	d.Close()
	if err != nil {
		return err
	}
	var errs []error
	for _, name := range names {
		errs = append(errs, root.RemoveAll(name))
	}
	return errors.Join(errs...)
}

// rootSink writes a package under an os.Root.
type rootSink struct{ root *os.Root }

func (s rootSink) mkdir(name string) error {
	if err := s.root.Mkdir(name, 0o755); err != nil {
		return err
	}
	return s.root.Chmod(name, 0o755) // undo the umask
}

func (s rootSink) create(name string, mode fs.FileMode) (io.WriteCloser, error) {
	f, err := s.root.OpenFile(name, os.O_WRONLY|os.O_CREATE|os.O_EXCL, mode)
	if err != nil {
		return nil, err
	}
	if err := f.Chmod(mode); err != nil { // undo the umask
		f.Close()
		return nil, err
	}
	return f, nil
}

func (s rootSink) open(name string) (io.ReadCloser, error) {
	return s.root.Open(name)
}

func (s rootSink) symlink(target, name string) error {
	return s.root.Symlink(target, name)
}
