package archive

import (
	"archive/zip"
	"context"
	"fmt"
	"io"
	"io/fs"
	"os"
	"time"
)

// zipEpoch is the modification time of every ZipDir entry, the earliest a
// zip can record, so archives do not depend on when files were touched.
var zipEpoch = time.Date(1980, time.January, 1, 0, 0, 0, 0, time.UTC)

// ZipDir writes a zip of the contents of dir to w, for deploying a
// directory. Entries are in lexical order with relative slash-separated
// names, fixed timestamps, and modes reduced to what Extract keeps (0644
// or 0755 for files, 0755 for directories), so the same tree gives the same
// bytes, and so the same package digest, with the same Go release.
// Symlinks are stored as symlinks when they resolve inside dir; one that
// leads outside, a name Extract would refuse, or a special file (socket,
// device, FIFO) makes ZipDir fail with an *Error before anything is
// written. Nothing is skipped: a .git directory is packaged too.
func ZipDir(ctx context.Context, dir string, w io.Writer) error {
	root, err := os.OpenRoot(dir)
	if err != nil {
		return fmt.Errorf("zip %s: %w", dir, err)
	}
	defer root.Close()
	fsys := root.FS()

	type item struct {
		name   string
		typ    EntryType
		mode   fs.FileMode
		target string
	}
	var items []item
	tree := make(map[string]*node)
	err = fs.WalkDir(fsys, ".", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if err := ctx.Err(); err != nil {
			return err
		}
		if p == "." {
			return nil
		}
		if _, err := cleanName(p, d.IsDir()); err != nil {
			return err
		}
		switch t := d.Type(); {
		case t.IsDir():
			items = append(items, item{name: p, typ: TypeDir, mode: fs.ModeDir | 0o755})
			tree[p] = &node{typ: TypeDir}
		case t&fs.ModeSymlink != 0:
			target, err := fs.ReadLink(fsys, p)
			if err != nil {
				return err
			}
			if err := checkTarget(target); err != nil {
				return newError(CodeUnsafeSymlink, "symlink %s: %s", quote(p), err)
			}
			items = append(items, item{name: p, typ: TypeSymlink, mode: fs.ModeSymlink | 0o777, target: target})
			tree[p] = &node{typ: TypeSymlink, target: target}
		case t.IsRegular():
			info, err := d.Info()
			if err != nil {
				return err
			}
			items = append(items, item{name: p, typ: TypeFile, mode: fileMode(int64(info.Mode().Perm()))})
			tree[p] = &node{typ: TypeFile}
		default:
			return newError(CodeUnsupportedEntry, "entry %s is a %s, not a file, directory or symlink", quote(p), describe(t))
		}
		return nil
	})
	if err != nil {
		return zipDirErr(dir, err)
	}
	res := resolver{tree: tree, budget: maxResolveSteps}
	for _, it := range items {
		if it.typ != TypeSymlink {
			continue
		}
		if err := res.check(it.name); err != nil {
			return newError(CodeUnsafeSymlink, "symlink %s -> %s: %s", quote(it.name), quote(it.target), err)
		}
	}

	zw := zip.NewWriter(w)
	for _, it := range items {
		if err := ctx.Err(); err != nil {
			return err
		}
		hdr := &zip.FileHeader{Name: it.name, Method: zip.Store, Modified: zipEpoch}
		hdr.SetMode(it.mode)
		switch it.typ {
		case TypeDir:
			hdr.Name += "/"
			if _, err := zw.CreateHeader(hdr); err != nil {
				return fmt.Errorf("zip %s: %w", dir, err)
			}
		case TypeSymlink:
			fw, err := zw.CreateHeader(hdr)
			if err != nil {
				return fmt.Errorf("zip %s: %w", dir, err)
			}
			if _, err := io.WriteString(fw, it.target); err != nil {
				return fmt.Errorf("zip %s: %w", dir, err)
			}
		case TypeFile:
			hdr.Method = zip.Deflate
			if err := zipFile(ctx, root, zw, hdr); err != nil {
				return zipDirErr(dir, err)
			}
		}
	}
	if err := zw.Close(); err != nil {
		return fmt.Errorf("zip %s: %w", dir, err)
	}
	return nil
}

func zipDirErr(dir string, err error) error {
	if _, ok := err.(*Error); ok {
		return err
	}
	return fmt.Errorf("zip %s: %w", dir, err)
}

// zipFile adds the regular file hdr.Name, refusing it if it was replaced
// by something else since the walk.
func zipFile(ctx context.Context, root *os.Root, zw *zip.Writer, hdr *zip.FileHeader) error {
	f, err := root.Open(hdr.Name)
	if err != nil {
		return err
	}
	defer f.Close()
	info, err := f.Stat()
	if err != nil {
		return err
	}
	if !info.Mode().IsRegular() {
		return newError(CodeUnsupportedEntry, "entry %s is no longer a regular file", quote(hdr.Name))
	}
	fw, err := zw.CreateHeader(hdr)
	if err != nil {
		return err
	}
	_, err = io.Copy(fw, ctxReader{ctx, f})
	return err
}

// ctxReader stops a long copy when ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
