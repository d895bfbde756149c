package microvm

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"strings"
)

// cpio "newc" archive writer, the format the kernel unpacks as initramfs
// (Documentation/driver-api/early-userspace/buffer-format.rst): a 110-byte
// ASCII header per entry, the NUL-terminated name, padding to 4 bytes, the
// data, padding to 4 bytes, and a final "TRAILER!!!" entry. Concatenated
// archives are unpacked in order, so a fixed base (agent, modules) and a
// per-instance part (code) are written one after the other.

const (
	cpioRegular = 0o100000
	cpioDir     = 0o040000
	cpioSymlink = 0o120000
	cpioChar    = 0o020000
)

type cpioWriter struct {
	w    *bufio.Writer
	ino  uint32
	n    int64
	max  int64
	dirs map[string]bool
}

func newCpio(w io.Writer, max int64) *cpioWriter {
	return &cpioWriter{w: bufio.NewWriterSize(w, 64<<10), ino: 1000, max: max, dirs: map[string]bool{}}
}

var errTooLarge = errors.New("initramfs over size limit")

func (c *cpioWriter) write(p []byte) error {
	c.n += int64(len(p))
	if c.max > 0 && c.n > c.max {
		return errTooLarge
	}
	_, err := c.w.Write(p)
	return err
}

func (c *cpioWriter) pad() error {
	if r := c.n % 4; r != 0 {
		return c.write(make([]byte, 4-r))
	}
	return nil
}

// header writes one entry header and name. name is relative ("init",
// "var/task/x").
func (c *cpioWriter) header(name string, mode uint32, size int64, rmaj, rmin uint32) error {
	if size > 0xffffffff {
		return fmt.Errorf("cpio: %s too large", name)
	}
	c.ino++
	nlink := uint32(1)
	if mode&0o170000 == cpioDir {
		nlink = 2
	}
	h := fmt.Sprintf("070701%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X%08X",
		c.ino, mode, 0, 0, nlink, 0, uint32(size), 0, 0, rmaj, rmin, len(name)+1, 0)
	if err := c.write([]byte(h)); err != nil {
		return err
	}
	if err := c.write(append([]byte(name), 0)); err != nil {
		return err
	}
	return c.pad()
}

// mkdirAll adds the directory name and its parents once each.
func (c *cpioWriter) mkdirAll(name string, perm uint32) error {
	name = strings.Trim(path.Clean("/"+name), "/")
	if name == "" || c.dirs[name] {
		return nil
	}
	if err := c.mkdirAll(path.Dir(name), 0o755); err != nil {
		return err
	}
	c.dirs[name] = true
	return c.header(name, cpioDir|perm, 0, 0, 0)
}

func (c *cpioWriter) file(name string, perm uint32, data io.Reader, size int64) error {
	if err := c.mkdirAll(path.Dir(name), 0o755); err != nil {
		return err
	}
	if err := c.header(name, cpioRegular|perm, size, 0, 0); err != nil {
		return err
	}
	c.n += size
	if c.max > 0 && c.n > c.max {
		return errTooLarge
	}
	if n, err := io.CopyN(c.w, data, size); err != nil {
		return fmt.Errorf("cpio: %s: copied %d of %d bytes: %w", name, n, size, err)
	}
	return c.pad()
}

func (c *cpioWriter) symlink(name, target string) error {
	if err := c.mkdirAll(path.Dir(name), 0o755); err != nil {
		return err
	}
	if err := c.header(name, cpioSymlink|0o777, int64(len(target)), 0, 0); err != nil {
		return err
	}
	if err := c.write([]byte(target)); err != nil {
		return err
	}
	return c.pad()
}

func (c *cpioWriter) charDev(name string, perm, major, minor uint32) error {
	if err := c.mkdirAll(path.Dir(name), 0o755); err != nil {
		return err
	}
	return c.header(name, cpioChar|perm, 0, major, minor)
}

// hostFile adds the host file src as name.
func (c *cpioWriter) hostFile(name, src string, perm uint32) error {
	f, err := os.Open(src)
	if err != nil {
		return err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return err
	}
	return c.file(name, perm, f, fi.Size())
}

// tree adds the host directory src at target (absolute guest path). Only
// directories, regular files and symbolic links are copied; everything is
// made read-only (the guest runs the function on a read-only view in
// spirit; the rootfs is tmpfs, so this is the permission bits only).
// Unix sockets are not copied but, when onSocket is set, reported with
// their host path and guest path (symbolic links are never followed).
func (c *cpioWriter) tree(src, target string, onSocket func(host, guest string) error) error {
	return filepath.WalkDir(src, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		rel, err := filepath.Rel(src, p)
		if err != nil {
			return err
		}
		name := strings.TrimPrefix(path.Join(target, filepath.ToSlash(rel)), "/")
		fi, err := d.Info()
		if err != nil {
			return err
		}
		perm := uint32(fi.Mode().Perm()) &^ 0o222
		switch {
		case d.IsDir():
			return c.mkdirAll(name, perm|0o500)
		case fi.Mode().IsRegular():
			return c.hostFile(name, p, perm|0o400)
		case fi.Mode()&fs.ModeSymlink != 0:
			t, err := os.Readlink(p)
			if err != nil {
				return err
			}
			return c.symlink(name, t)
		case fi.Mode().Type() == fs.ModeSocket && onSocket != nil:
			return onSocket(p, "/"+name)
		default:
			return nil // devices, fifos (and unreported sockets) do not cross into the VM
		}
	})
}

func (c *cpioWriter) close() error {
	if err := c.header("TRAILER!!!", 0, 0, 0, 0); err != nil {
		return err
	}
	return c.w.Flush()
}
