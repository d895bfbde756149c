package store

import (
	"context"
	"errors"
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/nats-io/nats.go/jetstream"
)

// Errors returned by KV and the package store. Match them with errors.Is.
var (
	// ErrNotFound: the key (or package) does not exist or was deleted.
	ErrNotFound = errors.New("store: not found")
	// ErrExists: Create found the key already present.
	ErrExists = errors.New("store: already exists")
	// ErrConflict: Update or Delete was given a revision that is no longer
	// the key's latest (someone else wrote first). Re-read and retry.
	ErrConflict = errors.New("store: revision conflict")
	// ErrInvalidKey: a key, key pattern or bucket name is not allowed.
	ErrInvalidKey = errors.New("store: invalid key")
)

var (
	keyRE     = regexp.MustCompile(`^[-/_=.a-zA-Z0-9]+$`)
	patternRE = regexp.MustCompile(`^[-/_=.a-zA-Z0-9*>]+$`)
	bucketRE  = regexp.MustCompile(`^[a-zA-Z0-9_-]+$`)
)

// ValidKey reports whether key may be used in a KV bucket: one or more of
// the characters [-/_=.a-zA-Z0-9], not starting or ending with '.', and
// without empty '.'-separated tokens (".."). The '.' separates tokens that
// Watch patterns and Keys prefixes can select on, so build hierarchical keys
// with '.', e.g. "fn.tenant.name".
func ValidKey(key string) bool {
	return tokensOK(key) && keyRE.MatchString(key)
}

func tokensOK(s string) bool {
	return s != "" && s[0] != '.' && s[len(s)-1] != '.' && !strings.Contains(s, "..")
}

// validPattern is ValidKey plus the wildcards '*' (one token) and '>' (the
// remaining tokens, only last), each a whole token.
func validPattern(p string) bool {
	if !tokensOK(p) || !patternRE.MatchString(p) {
		return false
	}
	toks := strings.Split(p, ".")
	for i, t := range toks {
		if strings.ContainsAny(t, "*>") && len(t) != 1 {
			return false
		}
		if t == ">" && i != len(toks)-1 {
			return false
		}
	}
	return true
}

// Entry is one revision of a key.
type Entry struct {
	Key   string
	Value []byte
	// Revision increases with every write to the bucket; pass it to Update
	// or Delete to make them conditional on nothing having changed since.
	Revision uint64
	// Deleted is set on entries from Watch that record a deletion.
	Deleted bool
}

// KV is a key-value bucket with compare-and-set writes. Values are limited
// by the server's maximum message size (1 MiB by default). It is safe for
// concurrent use.
type KV struct {
	bucket string
	kv     jetstream.KeyValue
}

// KV creates the bucket if it does not exist (file storage, KVHistory
// revisions per key, Config.Replicas replicas) and binds to it. Bucket names
// are [a-zA-Z0-9_-]+.
func (s *Store) KV(ctx context.Context, bucket string) (*KV, error) {
	if !bucketRE.MatchString(bucket) {
		return nil, fmt.Errorf("store: bucket %q: %w", bucket, ErrInvalidKey)
	}
	kv, err := s.js.KeyValue(ctx, bucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		kv, err = s.js.CreateKeyValue(ctx, jetstream.KeyValueConfig{
			Bucket:   bucket,
			History:  KVHistory,
			Storage:  jetstream.FileStorage,
			Replicas: s.cfg.Replicas,
		})
		if errors.Is(err, jetstream.ErrBucketExists) { // created concurrently
			kv, err = s.js.KeyValue(ctx, bucket)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("store: bucket %s: %w", bucket, err)
	}
	return &KV{bucket: bucket, kv: kv}, nil
}

// Bucket returns the bucket's name.
func (k *KV) Bucket() string { return k.bucket }

func (k *KV) checkKey(op, key string) error {
	if !ValidKey(key) {
		return fmt.Errorf("store: %s %s/%q: %w", op, k.bucket, key, ErrInvalidKey)
	}
	return nil
}

// Get returns the latest value of key, or ErrNotFound if it never existed
// or was deleted.
func (k *KV) Get(ctx context.Context, key string) (Entry, error) {
	if err := k.checkKey("get", key); err != nil {
		return Entry{}, err
	}
	e, err := k.kv.Get(ctx, key)
	if errors.Is(err, jetstream.ErrKeyNotFound) || errors.Is(err, jetstream.ErrKeyDeleted) {
		return Entry{}, fmt.Errorf("store: get %s/%s: %w", k.bucket, key, ErrNotFound)
	}
	if err != nil {
		return Entry{}, fmt.Errorf("store: get %s/%s: %w", k.bucket, key, err)
	}
	return Entry{Key: key, Value: e.Value(), Revision: e.Revision()}, nil
}

// Create stores value under key only if the key does not exist (or was
// deleted), and returns the new revision. It fails with ErrExists otherwise.
func (k *KV) Create(ctx context.Context, key string, value []byte) (uint64, error) {
	if err := k.checkKey("create", key); err != nil {
		return 0, err
	}
	rev, err := k.kv.Create(ctx, key, value)
	if errors.Is(err, jetstream.ErrKeyExists) || isWrongLastSeq(err) {
		return 0, fmt.Errorf("store: create %s/%s: %w", k.bucket, key, ErrExists)
	}
	if err != nil {
		return 0, fmt.Errorf("store: create %s/%s: %w", k.bucket, key, err)
	}
	return rev, nil
}

// Update stores value under key only if the key's latest revision is still
// lastRevision (which must be non-zero: use Create for new keys), and
// returns the new revision. It fails with ErrConflict when the key changed,
// was deleted or never existed.
func (k *KV) Update(ctx context.Context, key string, value []byte, lastRevision uint64) (uint64, error) {
	if err := k.checkKey("update", key); err != nil {
		return 0, err
	}
	if lastRevision == 0 {
		return 0, fmt.Errorf("store: update %s/%s: revision 0 (use Create)", k.bucket, key)
	}
	rev, err := k.kv.Update(ctx, key, value, lastRevision)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || isWrongLastSeq(err) {
		return 0, fmt.Errorf("store: update %s/%s at revision %d: %w", k.bucket, key, lastRevision, ErrConflict)
	}
	if err != nil {
		return 0, fmt.Errorf("store: update %s/%s: %w", k.bucket, key, err)
	}
	return rev, nil
}

// Delete marks key deleted. With lastRevision non-zero it does so only if
// that is still the key's latest revision, and fails with ErrConflict
// otherwise; with 0 it deletes unconditionally (deleting a missing key is
// not an error). Older revisions stay in the bucket's history.
func (k *KV) Delete(ctx context.Context, key string, lastRevision uint64) error {
	if err := k.checkKey("delete", key); err != nil {
		return err
	}
	var opts []jetstream.KVDeleteOpt
	if lastRevision != 0 {
		opts = append(opts, jetstream.LastRevision(lastRevision))
	}
	err := k.kv.Delete(ctx, key, opts...)
	if errors.Is(err, jetstream.ErrKeyRevisionMismatch) || isWrongLastSeq(err) {
		return fmt.Errorf("store: delete %s/%s at revision %d: %w", k.bucket, key, lastRevision, ErrConflict)
	}
	if err != nil {
		return fmt.Errorf("store: delete %s/%s: %w", k.bucket, key, err)
	}
	return nil
}

// Keys returns the sorted keys that exist (are not deleted) and start with
// prefix; "" lists every key. An empty result is an empty slice, not an
// error. The prefix is a plain string prefix; when it contains '.', only
// keys under its complete tokens are fetched from the server.
func (k *KV) Keys(ctx context.Context, prefix string) ([]string, error) {
	if prefix != "" && !keyRE.MatchString(prefix) {
		return nil, fmt.Errorf("store: keys %s/%q: %w", k.bucket, prefix, ErrInvalidKey)
	}
	filter := jetstream.AllKeys
	if i := strings.LastIndexByte(prefix, '.'); i > 0 {
		if !ValidKey(prefix[:i]) {
			return []string{}, nil // no key can start with it
		}
		filter = prefix[:i+1] + ">"
	}
	lister, err := k.kv.ListKeysFiltered(ctx, filter)
	if err != nil {
		return nil, fmt.Errorf("store: keys %s: %w", k.bucket, err)
	}
	keys := []string{}
	for key := range lister.Keys() {
		if strings.HasPrefix(key, prefix) {
			keys = append(keys, key)
		}
	}
	if err := ctx.Err(); err != nil {
		return nil, fmt.Errorf("store: keys %s: %w", k.bucket, err)
	}
	slices.Sort(keys)
	return slices.Compact(keys), nil
}

// Watch sends the current value of every existing key matching keyPattern,
// then every later change (deletions as entries with Deleted set), until ctx
// is done or the Store is closed; then it closes the channel. keyPattern is
// a key in which a whole token may be '*' (any one token) or, last, '>'
// (one or more tokens); ">" watches the bucket. The receiver must keep
// reading or cancel ctx: a stalled receiver stalls its watch.
func (k *KV) Watch(ctx context.Context, keyPattern string) (<-chan Entry, error) {
	if !validPattern(keyPattern) {
		return nil, fmt.Errorf("store: watch %s/%q: %w", k.bucket, keyPattern, ErrInvalidKey)
	}
	w, err := k.kv.Watch(ctx, keyPattern)
	if err != nil {
		return nil, fmt.Errorf("store: watch %s/%s: %w", k.bucket, keyPattern, err)
	}
	out := make(chan Entry, 16)
	go func() {
		defer close(out)
		// After Stop the watcher's channel is closed once its subscription
		// ends; drain it so the subscription's delivery never blocks.
		stop := func() {
			_ = w.Stop()
			for range w.Updates() {
			}
		}
		initial := true
		for {
			select {
			case <-ctx.Done():
				stop()
				return
			case e, ok := <-w.Updates():
				if !ok {
					return
				}
				if e == nil { // end of the current values
					initial = false
					continue
				}
				deleted := e.Operation() != jetstream.KeyValuePut
				if initial && deleted {
					continue
				}
				ent := Entry{Key: e.Key(), Value: e.Value(), Revision: e.Revision(), Deleted: deleted}
				if deleted {
					ent.Value = nil
				}
				select {
				case out <- ent:
				case <-ctx.Done():
					stop()
					return
				}
			}
		}
	}()
	return out, nil
}

// isWrongLastSeq reports a JetStream "wrong last sequence" answer, which is
// how the server refuses a compare-and-set (code 10071, or 10164 on
// replicated streams).
func isWrongLastSeq(err error) bool {
	var apiErr *jetstream.APIError
	if !errors.As(err, &apiErr) {
		return false
	}
	return apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequence ||
		apiErr.ErrorCode == jetstream.JSErrCodeStreamWrongLastSequenceConstant
}
