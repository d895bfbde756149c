package store

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"os"
	"regexp"
	"strconv"
	"sync"

	"github.com/klauspost/compress/zstd"
	"github.com/nats-io/nats.go/jetstream"
)

// PackageBucket is the object store bucket holding function packages.
const PackageBucket = "packages"

// Package store errors besides ErrNotFound.
var (
	// ErrInvalidDigest: a digest is not "sha256:" followed by 64 lower-case
	// hex digits.
	ErrInvalidDigest = errors.New("store: invalid package digest")
	// ErrCorrupt: stored package bytes do not match their digest or size.
	ErrCorrupt = errors.New("store: package corrupt")
)

// Object metadata keys.
const (
	metaRawSize  = "zfaas-raw-size"
	metaEncoding = "zfaas-encoding"
)

var digestRE = regexp.MustCompile(`^sha256:[0-9a-f]{64}$`)

// ValidDigest reports whether d is a package digest: "sha256:" and 64
// lower-case hex digits.
func ValidDigest(d string) bool { return digestRE.MatchString(d) }

// PackageInfo describes a stored package.
type PackageInfo struct {
	// Digest is "sha256:<hex>" of the raw (uncompressed) bytes, and the
	// package's name in the store.
	Digest string
	// Size is the raw size in bytes.
	Size int64
	// StoredSize is the size in bytes after zstd compression.
	StoredSize int64
	// Existed is set when identical bytes were already stored, so nothing
	// was written. Concurrent puts of new identical bytes through different
	// Stores (other gateways) may each report false; the bucket still ends
	// with one object under the digest.
	Existed bool
}

func (s *Store) packages(ctx context.Context) (jetstream.ObjectStore, error) {
	s.objMu.Lock()
	defer s.objMu.Unlock()
	if s.obj != nil {
		return s.obj, nil
	}
	obs, err := s.js.ObjectStore(ctx, PackageBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		obs, err = s.js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{
			Bucket:      PackageBucket,
			Description: "zfaas function packages, zstd, named by sha256 of the raw bytes",
			Storage:     jetstream.FileStorage,
			Replicas:    s.cfg.Replicas,
		})
		if errors.Is(err, jetstream.ErrBucketExists) {
			obs, err = s.js.ObjectStore(ctx, PackageBucket)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("store: package bucket: %w", err)
	}
	s.obj = obs
	return obs, nil
}

// PutPackage reads r to EOF, computes the SHA-256 of its bytes while
// compressing them with zstd into a temporary file under Config.SpoolDir,
// and stores the result as "sha256:<hex>" unless that name is already
// stored. Memory use does not grow with the package size. r is not limited
// here: callers cap what they accept.
func (s *Store) PutPackage(ctx context.Context, r io.Reader) (PackageInfo, error) {
	obs, err := s.packages(ctx)
	if err != nil {
		return PackageInfo{}, err
	}
	spool, err := os.CreateTemp(s.cfg.SpoolDir, "zfaas-package-*.zst")
	if err != nil {
		return PackageInfo{}, fmt.Errorf("store: spool package: %w", err)
	}
	defer func() {
		_ = spool.Close()
		_ = os.Remove(spool.Name())
	}()

	enc, err := zstd.NewWriter(spool, zstd.WithEncoderLevel(zstd.SpeedDefault), zstd.WithZeroFrames(true))
	if err != nil {
		return PackageInfo{}, fmt.Errorf("store: zstd: %w", err)
	}
	h := sha256.New()
	size, err := io.Copy(io.MultiWriter(h, enc), ctxReader{ctx, r})
	if err != nil {
		_ = enc.Close()
		return PackageInfo{}, fmt.Errorf("store: read package: %w", err)
	}
	if err := enc.Close(); err != nil {
		return PackageInfo{}, fmt.Errorf("store: compress package: %w", err)
	}
	stored, err := spool.Seek(0, io.SeekCurrent)
	if err != nil {
		return PackageInfo{}, fmt.Errorf("store: spool package: %w", err)
	}
	info := PackageInfo{
		Digest:     "sha256:" + hex.EncodeToString(h.Sum(nil)),
		Size:       size,
		StoredSize: stored,
	}

	unlock := s.lockDigest(info.Digest)
	defer unlock()
	old, err := obs.GetInfo(ctx, info.Digest)
	switch {
	case err == nil && !old.Deleted && old.Metadata[metaRawSize] == strconv.FormatInt(size, 10):
		info.Existed = true
		info.StoredSize = int64(old.Size)
		return info, nil
	case err == nil && !old.Deleted:
		s.log.Warn("stored package has a wrong size, replacing it", "digest", info.Digest)
	case err != nil && !errors.Is(err, jetstream.ErrObjectNotFound):
		return PackageInfo{}, fmt.Errorf("store: package %s: %w", info.Digest, err)
	}

	if _, err := spool.Seek(0, io.SeekStart); err != nil {
		return PackageInfo{}, fmt.Errorf("store: spool package: %w", err)
	}
	_, err = obs.Put(ctx, jetstream.ObjectMeta{
		Name: info.Digest,
		Metadata: map[string]string{
			metaRawSize:  strconv.FormatInt(size, 10),
			metaEncoding: "zstd",
		},
	}, spool)
	if err != nil {
		return PackageInfo{}, fmt.Errorf("store: put package %s: %w", info.Digest, err)
	}
	s.log.Info("package stored", "digest", info.Digest, "size", size, "stored", stored)
	return info, nil
}

// HasPackage reports whether the package with digest is stored.
func (s *Store) HasPackage(ctx context.Context, digest string) (bool, error) {
	if !ValidDigest(digest) {
		return false, fmt.Errorf("store: package %q: %w", digest, ErrInvalidDigest)
	}
	obs, err := s.packages(ctx)
	if err != nil {
		return false, err
	}
	info, err := obs.GetInfo(ctx, digest)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("store: package %s: %w", digest, err)
	}
	return !info.Deleted, nil
}

// OpenPackage returns the raw bytes of the package with digest, streamed
// and decompressed. The reader checks the bytes against the digest and the
// recorded size and returns an error wrapping ErrCorrupt instead of io.EOF
// when they differ; consumers must read to EOF before trusting what they
// read. ctx bounds the whole read. A missing package is ErrNotFound. The
// caller closes the reader.
func (s *Store) OpenPackage(ctx context.Context, digest string) (io.ReadCloser, error) {
	if !ValidDigest(digest) {
		return nil, fmt.Errorf("store: package %q: %w", digest, ErrInvalidDigest)
	}
	obs, err := s.packages(ctx)
	if err != nil {
		return nil, err
	}
	obj, err := obs.Get(ctx, digest)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, fmt.Errorf("store: package %s: %w", digest, ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("store: package %s: %w", digest, err)
	}
	oi, err := obj.Info()
	if err != nil {
		_ = obj.Close()
		return nil, fmt.Errorf("store: package %s: %w", digest, err)
	}
	size, err := strconv.ParseInt(oi.Metadata[metaRawSize], 10, 64)
	if err != nil || size < 0 || oi.Metadata[metaEncoding] != "zstd" {
		_ = obj.Close()
		return nil, fmt.Errorf("store: package %s: bad metadata: %w", digest, ErrCorrupt)
	}
	dec, err := zstd.NewReader(obj, zstd.WithDecoderConcurrency(1), zstd.WithDecoderLowmem(true))
	if err != nil {
		_ = obj.Close()
		return nil, fmt.Errorf("store: package %s: %w", digest, err)
	}
	return &packageReader{digest: digest, size: size, obj: obj, dec: dec, h: sha256.New()}, nil
}

// packageReader decompresses a stored package and verifies it at EOF.
type packageReader struct {
	digest string
	size   int64
	obj    io.Closer
	dec    *zstd.Decoder
	h      hash.Hash
	n      int64
	err    error // sticky
}

func (p *packageReader) Read(b []byte) (int, error) {
	if p.err != nil {
		return 0, p.err
	}
	n, err := p.dec.Read(b)
	p.h.Write(b[:n])
	p.n += int64(n)
	switch {
	case p.n > p.size:
		err = fmt.Errorf("store: package %s: more than %d bytes: %w", p.digest, p.size, ErrCorrupt)
	case err == io.EOF:
		if got := "sha256:" + hex.EncodeToString(p.h.Sum(nil)); p.n != p.size || got != p.digest {
			err = fmt.Errorf("store: package %s: read %d bytes with digest %s: %w", p.digest, p.n, got, ErrCorrupt)
		}
	case err != nil:
		err = fmt.Errorf("store: package %s: %w", p.digest, err)
	}
	p.err = err
	return n, err
}

func (p *packageReader) Close() error {
	p.dec.Close()
	if p.err == nil {
		p.err = errors.New("store: package reader closed")
	}
	return p.obj.Close()
}

// lockDigest serialises the check-then-put of one digest within this
// process, so concurrent deploys of the same bytes write them once.
func (s *Store) lockDigest(digest string) (unlock func()) {
	s.putMu.Lock()
	if s.putLocks == nil {
		s.putLocks = make(map[string]*digestLock)
	}
	l := s.putLocks[digest]
	if l == nil {
		l = &digestLock{}
		s.putLocks[digest] = l
	}
	l.refs++
	s.putMu.Unlock()
	l.mu.Lock()
	return func() {
		l.mu.Unlock()
		s.putMu.Lock()
		if l.refs--; l.refs == 0 {
			delete(s.putLocks, digest)
		}
		s.putMu.Unlock()
	}
}

type digestLock struct {
	mu   sync.Mutex
	refs int // guarded by Store.putMu
}

// ctxReader stops a long copy when ctx is done.
type ctxReader struct {
	ctx context.Context
	r   io.Reader
}

func (c ctxReader) Read(b []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(b)
}
