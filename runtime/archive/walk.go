package archive

import (
	"archive/tar"
	"archive/zip"
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"math"
)

// sink receives a validated package. A nil sink means inspect only.
type sink interface {
	// mkdir creates directory name; its parent exists.
	mkdir(name string) error
	// create creates regular file name, which does not exist yet.
	create(name string, mode fs.FileMode) (io.WriteCloser, error)
	// open opens an already created regular file for reading.
	open(name string) (io.ReadCloser, error)
	// symlink creates name pointing at target; called after the whole
	// archive has been validated.
	symlink(target, name string) error
}

type node struct {
	typ    EntryType
	size   int64
	target string // symlinks
}

// walker validates one archive and feeds its entries to a sink.
type walker struct {
	ctxErr  func() error // reports cancellation
	lim     Limits
	sink    sink
	tree    map[string]*node
	man     Manifest
	entries int   // entries counted against MaxFiles
	stream  int64 // bytes allowed for a tar stream (headers, padding, contents)
	ratioAt int64 // unpacked size above which the ratio is exceeded
	links   []string
	buf     []byte
}

func walk(ctxErr func() error, r io.ReaderAt, size int64, lim Limits, s sink) (Manifest, error) {
	lim = lim.normalize()
	if size > lim.MaxCompressed {
		return Manifest{}, newError(CodeTooLarge, "package is %d bytes, over the %d byte limit", size, lim.MaxCompressed)
	}
	if size < 4 {
		return Manifest{}, newError(CodeInvalid, "package is not a zip or tar.gz archive")
	}
	w := &walker{
		ctxErr:  ctxErr,
		lim:     lim,
		sink:    s,
		tree:    make(map[string]*node),
		ratioAt: math.MaxInt64,
		buf:     make([]byte, 32<<10),
	}
	if lim.MaxRatio > 0 && size <= math.MaxInt64/lim.MaxRatio {
		w.ratioAt = max(size*lim.MaxRatio, ratioFloor)
	}
	w.man.Entries = []Entry{}

	var magic [4]byte
	if _, err := r.ReadAt(magic[:], 0); err != nil {
		return Manifest{}, newError(CodeInvalid, "package cannot be read")
	}
	var err error
	switch {
	case bytes.Equal(magic[:], []byte("PK\x03\x04")), bytes.Equal(magic[:], []byte("PK\x05\x06")):
		w.man.Format = "zip"
		err = w.zip(r, size)
	case magic[0] == 0x1f && magic[1] == 0x8b:
		w.man.Format = "tar.gz"
		err = w.tarGz(r, size)
	default:
		return Manifest{}, newError(CodeInvalid, "package is not a zip or tar.gz archive")
	}
	if err == nil {
		err = w.finishLinks()
	}
	if err != nil {
		return Manifest{}, err
	}
	return w.man, nil
}

func (w *walker) checkCtx() error { return w.ctxErr() }

// count charges one entry against MaxFiles.
func (w *walker) count(name string) error {
	w.entries++
	if w.entries > w.lim.MaxFiles {
		return newError(CodeTooManyFiles, "package has more than %d entries (at %s)", w.lim.MaxFiles, quote(name))
	}
	return nil
}

// charge adds n decompressed bytes of name to the unpacked total.
func (w *walker) charge(name string, n int64) error {
	w.man.UnpackedSize += n
	tooBig := w.man.UnpackedSize > w.lim.MaxUnpacked
	tooDense := w.man.UnpackedSize > w.ratioAt
	// When one charge crosses both limits, report the lower one, which
	// smaller charges would have crossed first.
	if tooBig && tooDense {
		tooBig = w.lim.MaxUnpacked <= w.ratioAt
	}
	switch {
	case tooBig:
		return newError(CodeUnpackedTooLarge, "package unpacks to more than %d bytes (at %s)", w.lim.MaxUnpacked, quote(name))
	case tooDense:
		return newError(CodeRatioExceeded, "package unpacks to more than %d times its size (at %s)", w.lim.MaxRatio, quote(name))
	}
	return nil
}

// readErr turns an error from reading archive data into the right refusal.
func (w *walker) readErr(name string, err error) error {
	var ae *Error
	switch {
	case errors.As(err, &ae):
		return ae
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		return err
	case errors.Is(err, errStreamCap):
		return w.streamTooLarge()
	case errors.Is(err, zip.ErrAlgorithm):
		return newError(CodeInvalid, "entry %s uses an unsupported compression method", quote(name))
	case name == "":
		return newError(CodeInvalid, "package is corrupt or truncated")
	default:
		return newError(CodeInvalid, "entry %s is corrupt or truncated", quote(name))
	}
}

// place validates that name can be created: its parents are (or become)
// directories and no other entry has the name. It returns whether the
// name is new; an existing directory is fine for a directory.
func (w *walker) place(name string, typ EntryType) (bool, error) {
	for i := 0; i < len(name); i++ {
		if name[i] != '/' {
			continue
		}
		parent := name[:i]
		switch n := w.tree[parent]; {
		case n == nil:
			if err := w.count(parent); err != nil {
				return false, err
			}
			if err := w.addDir(parent, true); err != nil {
				return false, err
			}
		case n.typ == TypeSymlink:
			return false, newError(CodeUnsafeSymlink, "entry %s is placed through symlink %s", quote(name), quote(parent))
		case n.typ != TypeDir:
			return false, newError(CodeUnsafePath, "entry %s is placed under %s, which is not a directory", quote(name), quote(parent))
		}
	}
	if n := w.tree[name]; n != nil {
		if n.typ == TypeDir && typ == TypeDir {
			return false, nil
		}
		return false, newError(CodeUnsafePath, "entry %s appears more than once", quote(name))
	}
	return true, nil
}

func (w *walker) addDir(name string, implied bool) error {
	w.tree[name] = &node{typ: TypeDir}
	w.man.Entries = append(w.man.Entries, Entry{Name: name, Type: TypeDir, Mode: fs.ModeDir | 0o755, Implied: implied})
	if w.sink != nil {
		if err := w.sink.mkdir(name); err != nil {
			return fmt.Errorf("create directory %s: %w", name, err)
		}
	}
	return nil
}

// dir handles a directory entry.
func (w *walker) dir(raw string) error {
	if err := w.count(raw); err != nil {
		return err
	}
	name, err := cleanName(raw, true)
	if err != nil || name == "" { // "" is the root itself
		return err
	}
	isNew, err := w.place(name, TypeDir)
	if err != nil || !isNew {
		return err
	}
	return w.addDir(name, false)
}

func fileMode(perm int64) fs.FileMode {
	if perm&0o111 != 0 {
		return 0o755
	}
	return 0o644
}

// file handles a regular file whose contents r yields.
func (w *walker) file(raw string, perm int64, r io.Reader) error {
	if err := w.count(raw); err != nil {
		return err
	}
	name, err := cleanName(raw, false)
	if err != nil {
		return err
	}
	if _, err := w.place(name, TypeFile); err != nil {
		return err
	}
	mode := fileMode(perm)
	n, err := w.write(name, mode, r)
	if err != nil {
		return err
	}
	w.addFile(Entry{Name: name, Type: TypeFile, Size: n, Mode: mode})
	return nil
}

func (w *walker) addFile(e Entry) {
	w.tree[e.Name] = &node{typ: TypeFile, size: e.Size}
	w.man.Entries = append(w.man.Entries, e)
	w.man.Files++
}

// write creates name through the sink (if any) with the contents of r.
func (w *walker) write(name string, mode fs.FileMode, r io.Reader) (int64, error) {
	if w.sink == nil {
		return w.copy(name, io.Discard, r)
	}
	f, err := w.sink.create(name, mode)
	if err != nil {
		return 0, fmt.Errorf("create %s: %w", name, err)
	}
	n, err := w.copy(name, f, r)
	if cerr := f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("write %s: %w", name, cerr)
	}
	return n, err
}

// copy moves the contents of name from r to dst, charging every byte
// before it is written.
func (w *walker) copy(name string, dst io.Writer, r io.Reader) (int64, error) {
	var n int64
	for {
		if err := w.checkCtx(); err != nil {
			return n, err
		}
		m, rerr := r.Read(w.buf)
		if m > 0 {
			n += int64(m)
			if err := w.charge(name, int64(m)); err != nil {
				return n, err
			}
			if _, err := dst.Write(w.buf[:m]); err != nil {
				return n, fmt.Errorf("write %s: %w", name, err)
			}
		}
		if rerr == io.EOF {
			return n, nil
		}
		if rerr != nil {
			return n, w.readErr(name, rerr)
		}
	}
}

// hardlink handles a tar hard link. It unpacks as a copy of the earlier
// regular file it names, counted in full.
func (w *walker) hardlink(raw, rawTarget string, perm int64) error {
	if err := w.count(raw); err != nil {
		return err
	}
	name, err := cleanName(raw, false)
	if err != nil {
		return err
	}
	target, err := cleanName(rawTarget, false)
	if err != nil {
		return newError(CodeUnsafePath, "hard link %s points at unsafe path %s", quote(name), quote(rawTarget))
	}
	src := w.tree[target]
	if src == nil || src.typ != TypeFile {
		return newError(CodeUnsupportedEntry, "hard link %s must point at an earlier regular file, not %s", quote(name), quote(target))
	}
	if _, err := w.place(name, TypeFile); err != nil {
		return err
	}
	mode := fileMode(perm)
	if w.sink == nil {
		if err := w.charge(name, src.size); err != nil {
			return err
		}
	} else {
		in, err := w.sink.open(target)
		if err != nil {
			return fmt.Errorf("open %s: %w", target, err)
		}
		n, err := w.write(name, mode, in)
		in.Close()
		if err != nil {
			return err
		}
		if n != src.size {
			return fmt.Errorf("copy %s: %s changed size", name, target)
		}
	}
	w.addFile(Entry{Name: name, Type: TypeFile, Size: src.size, Mode: mode, Target: target})
	return nil
}

// symlink records a symlink; it is checked and created once every entry
// is known (finishLinks).
func (w *walker) symlink(raw, target string) error {
	if err := w.count(raw); err != nil {
		return err
	}
	name, err := cleanName(raw, false)
	if err != nil {
		return err
	}
	if err := checkTarget(target); err != nil {
		return newError(CodeUnsafeSymlink, "symlink %s: %s", quote(name), err)
	}
	if _, err := w.place(name, TypeSymlink); err != nil {
		return err
	}
	w.tree[name] = &node{typ: TypeSymlink, target: target}
	w.man.Entries = append(w.man.Entries, Entry{Name: name, Type: TypeSymlink, Mode: fs.ModeSymlink | 0o777, Target: target})
	w.links = append(w.links, name)
	return nil
}

// finishLinks resolves every symlink against the complete tree and only
// then creates them.
func (w *walker) finishLinks() error {
	r := resolver{tree: w.tree, budget: maxResolveSteps}
	for _, name := range w.links {
		if err := r.check(name); err != nil {
			return newError(CodeUnsafeSymlink, "symlink %s -> %s: %s", quote(name), quote(w.tree[name].target), err)
		}
	}
	if w.sink == nil {
		return nil
	}
	for _, name := range w.links {
		if err := w.checkCtx(); err != nil {
			return err
		}
		if err := w.sink.symlink(w.tree[name].target, name); err != nil {
			return fmt.Errorf("create symlink %s: %w", name, err)
		}
	}
	return nil
}

// zip walks a zip archive.
func (w *walker) zip(r io.ReaderAt, size int64) error {
	// archive/zip loads the whole central directory before anything can be
	// counted; refuse archives that could hold too many records first.
	records, err := countSignature(r, size, []byte("PK\x01\x02"))
	if err != nil {
		return newError(CodeInvalid, "package cannot be read")
	}
	if records > 2*int64(w.lim.MaxFiles)+16 {
		return newError(CodeTooManyFiles, "package has more than %d entries", w.lim.MaxFiles)
	}
	zr, err := zip.NewReader(r, size)
	if err != nil && !errors.Is(err, zip.ErrInsecurePath) {
		return newError(CodeInvalid, "package is not a valid zip archive")
	}
	for _, f := range zr.File {
		if err := w.checkCtx(); err != nil {
			return err
		}
		if err := w.zipEntry(f); err != nil {
			return err
		}
	}
	return nil
}

const irregular = fs.ModeDevice | fs.ModeCharDevice | fs.ModeNamedPipe | fs.ModeSocket | fs.ModeIrregular

func (w *walker) zipEntry(f *zip.File) error {
	mode := f.Mode()
	switch {
	case f.Flags&0x1 != 0:
		return newError(CodeUnsupportedEntry, "entry %s is encrypted", quote(f.Name))
	case mode&fs.ModeSymlink != 0:
		rc, err := f.Open()
		if err != nil {
			return w.readErr(f.Name, err)
		}
		defer rc.Close()
		target, err := io.ReadAll(io.LimitReader(rc, maxNameLen+1))
		if err != nil {
			return w.readErr(f.Name, err)
		}
		if len(target) > maxNameLen {
			return newError(CodeUnsafeSymlink, "symlink %s has a target over %d bytes", quote(f.Name), maxNameLen)
		}
		return w.symlink(f.Name, string(target))
	case mode&irregular != 0:
		return newError(CodeUnsupportedEntry, "entry %s is a %s, not a file, directory or symlink", quote(f.Name), describe(mode))
	case mode.IsDir():
		if f.UncompressedSize64 != 0 || f.CompressedSize64 != 0 {
			return newError(CodeInvalid, "directory entry %s has contents", quote(f.Name))
		}
		return w.dir(f.Name)
	default:
		// Validate the name before spending anything on the contents.
		if _, err := cleanName(f.Name, false); err != nil {
			return err
		}
		rc, err := f.Open()
		if err != nil {
			return w.readErr(f.Name, err)
		}
		defer rc.Close()
		return w.file(f.Name, int64(mode.Perm()), rc)
	}
}

func describe(m fs.FileMode) string {
	switch {
	case m&fs.ModeCharDevice != 0:
		return "character device"
	case m&fs.ModeDevice != 0:
		return "block device"
	case m&fs.ModeNamedPipe != 0:
		return "named pipe"
	case m&fs.ModeSocket != 0:
		return "socket"
	default:
		return "special file"
	}
}

// countSignature counts occurrences of sig (4 bytes) in r. It bounds the
// number of central directory records a zip reader can find.
func countSignature(r io.ReaderAt, size int64, sig []byte) (int64, error) {
	const chunk = 256 << 10
	buf := make([]byte, chunk+len(sig)-1)
	var count int64
	for off := int64(0); off < size; off += chunk {
		n := int64(len(buf))
		if off+n > size {
			n = size - off
		}
		m, err := r.ReadAt(buf[:n], off)
		if int64(m) < n {
			if err == nil {
				err = io.ErrUnexpectedEOF
			}
			return 0, err
		}
		count += int64(bytes.Count(buf[:n], sig))
		// An occurrence starting in the overlap is counted again in the
		// next chunk; remove it here.
		if off+chunk < size {
			count -= int64(bytes.Count(buf[chunk:n], sig))
		}
	}
	return count, nil
}

// tarGz walks a gzip-compressed tar archive.
func (w *walker) tarGz(r io.ReaderAt, size int64) error {
	zr, err := gzip.NewReader(io.NewSectionReader(r, 0, size))
	if err != nil {
		return newError(CodeInvalid, "package is not a valid gzip stream")
	}
	// Headers, padding and skipped data are not files, but they cost time
	// to decompress: cap the whole stream too.
	w.stream = w.lim.MaxUnpacked + int64(w.lim.MaxFiles)*2048 + 8<<20
	stream := &capReader{r: zr, left: w.stream, ctxErr: w.ctxErr}
	tr := tar.NewReader(stream)
	for {
		if err := w.checkCtx(); err != nil {
			return err
		}
		hdr, err := tr.Next()
		if err == io.EOF {
			break
		}
		if err != nil && !(errors.Is(err, tar.ErrInsecurePath) && hdr != nil) {
			return w.readErr("", err)
		}
		if err := w.tarEntry(tr, hdr); err != nil {
			return err
		}
	}
	// Read what follows the end of the archive so the gzip checksum and
	// any corruption after it are checked.
	if _, err := io.Copy(io.Discard, stream); err != nil {
		return w.readErr("", err)
	}
	return nil
}

func (w *walker) streamTooLarge() error {
	return newError(CodeUnpackedTooLarge, "package decompresses to more than %d bytes", w.stream)
}

func (w *walker) tarEntry(tr *tar.Reader, hdr *tar.Header) error {
	switch hdr.Typeflag {
	case tar.TypeReg:
		if _, err := cleanName(hdr.Name, false); err != nil {
			return err
		}
		return w.file(hdr.Name, hdr.Mode, tr)
	case tar.TypeDir:
		return w.dir(hdr.Name)
	case tar.TypeSymlink:
		return w.symlink(hdr.Name, hdr.Linkname)
	case tar.TypeLink:
		return w.hardlink(hdr.Name, hdr.Linkname, hdr.Mode)
	case tar.TypeXGlobalHeader:
		return nil // pax global header (git archive writes one): metadata only
	case tar.TypeChar:
		return newError(CodeUnsupportedEntry, "entry %s is a character device", quote(hdr.Name))
	case tar.TypeBlock:
		return newError(CodeUnsupportedEntry, "entry %s is a block device", quote(hdr.Name))
	case tar.TypeFifo:
		return newError(CodeUnsupportedEntry, "entry %s is a named pipe", quote(hdr.Name))
	default:
		return newError(CodeUnsupportedEntry, "entry %s has unsupported tar type %q", quote(hdr.Name), string(hdr.Typeflag))
	}
}

var errStreamCap = errors.New("archive: stream cap reached")

// capReader fails once more than left bytes were read, or when the walk
// is canceled.
type capReader struct {
	r      io.Reader
	left   int64
	ctxErr func() error
}

func (c *capReader) Read(p []byte) (int, error) {
	if err := c.ctxErr(); err != nil {
		return 0, err
	}
	if c.left <= 0 {
		// Allow a final EOF to be seen at exactly the cap.
		var one [1]byte
		n, err := c.r.Read(one[:])
		if n > 0 {
			return 0, errStreamCap
		}
		return 0, err
	}
	if int64(len(p)) > c.left {
		p = p[:c.left]
	}
	n, err := c.r.Read(p)
	c.left -= int64(n)
	return n, err
}
