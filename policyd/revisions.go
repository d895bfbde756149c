package policyd

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/zfaas/zfaas/store"
)

// Keys of the policy bucket.
const (
	keyActive       = "active"
	keySeq          = "seq"
	keyRevPrefix    = "rev."
	keyStatusPrefix = "status."
	casAttempts     = 32
)

func revKey(n int64) string { return keyRevPrefix + strconv.FormatInt(n, 10) }

func bundleStore(ctx context.Context, s *store.Store) (jetstream.ObjectStore, error) {
	js := s.JetStream()
	obs, err := js.ObjectStore(ctx, BundleBucket)
	if errors.Is(err, jetstream.ErrBucketNotFound) {
		obs, err = js.CreateObjectStore(ctx, jetstream.ObjectStoreConfig{
			Bucket:      BundleBucket,
			Description: "zfaas policy revision bundles (OPA tar.gz), named by sha256 of their bytes",
			Storage:     jetstream.FileStorage,
			Replicas:    s.Replicas(),
		})
		if errors.Is(err, jetstream.ErrBucketExists) {
			obs, err = js.ObjectStore(ctx, BundleBucket)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("policyd: bundle bucket: %w", err)
	}
	return obs, nil
}

// putBundle stores raw under its digest unless it is already there.
func (e *Engine) putBundle(ctx context.Context, digest string, raw []byte) error {
	if info, err := e.objects.GetInfo(ctx, digest); err == nil && !info.Deleted && info.Size == uint64(len(raw)) {
		return nil
	} else if err != nil && !errors.Is(err, jetstream.ErrObjectNotFound) {
		return fmt.Errorf("policyd: bundle %s: %w", digest, err)
	}
	if _, err := e.objects.PutBytes(ctx, digest, raw); err != nil {
		return fmt.Errorf("policyd: store bundle %s: %w", digest, err)
	}
	return nil
}

// getBundle reads a stored bundle and checks it against its digest.
func (e *Engine) getBundle(ctx context.Context, digest string) ([]byte, error) {
	raw, err := e.objects.GetBytes(ctx, digest)
	if errors.Is(err, jetstream.ErrObjectNotFound) {
		return nil, fmt.Errorf("policyd: bundle %s: %w", digest, store.ErrNotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("policyd: bundle %s: %w", digest, err)
	}
	if got := digestOf(raw); got != digest {
		return nil, fmt.Errorf("policyd: bundle %s: stored bytes have digest %s: %w", digest, got, store.ErrCorrupt)
	}
	return raw, nil
}

// PushFS builds a bundle from a policy directory (see BuildBundleFS) and
// pushes it. With a verification key configured it is refused: a directory
// carries no signature.
func (e *Engine) PushFS(ctx context.Context, fsys fs.FS, pushedBy string) (RevisionInfo, error) {
	raw, err := BuildBundleFS(fsys)
	if err != nil {
		return RevisionInfo{}, err
	}
	return e.Push(ctx, raw, pushedBy)
}

// Push checks an OPA bundle (tar.gz: policies, data, optional .manifest and
// .signatures.json), and only if it is acceptable stores it as a new
// revision and makes it active on every engine. Acceptable means: within
// the size limits; signed with Config.VerifyKey covering every file, when a
// key is configured; compiles; and all its tests pass. A refusal is a
// *RefusedError, and nothing is stored. The bundle's bytes are stored
// content-addressed, the revision record under "rev.<n>" (never changed
// afterwards) and "active" is moved with compare-and-set. This engine serves
// the new revision when Push returns; the others follow through their
// watches.
func (e *Engine) Push(ctx context.Context, raw []byte, pushedBy string) (RevisionInfo, error) {
	rev, b, err := e.build(ctx, raw, false)
	if err != nil {
		return RevisionInfo{}, err
	}
	rep, err := runTests(ctx, b, e.cfg.TestTimeout)
	if err != nil {
		return RevisionInfo{}, err
	}
	digest := digestOf(raw)
	if err := e.putBundle(ctx, digest, raw); err != nil {
		return RevisionInfo{}, err
	}
	n, err := e.nextRevision(ctx)
	if err != nil {
		return RevisionInfo{}, err
	}
	info := RevisionInfo{
		Revision: n,
		Digest:   digest,
		Size:     int64(len(raw)),
		PushedBy: pushedBy,
		Time:     e.cfg.Now().UTC(),
		Signed:   rev.info.Signed,
		KeyID:    rev.info.KeyID,
		Tests:    rep.TestSummary,
	}
	val, _ := json.Marshal(info)
	if _, err := e.kv.Create(ctx, revKey(n), val); err != nil {
		return RevisionInfo{}, fmt.Errorf("policyd: record revision %d: %w", n, err)
	}
	rev.info = info
	if err := e.setActive(ctx, rev, "push", pushedBy); err != nil {
		return info, err
	}
	e.log.Info("policy revision pushed", "revision", n, "digest", digest, "by", pushedBy, "signed", info.Signed, "tests_passed", rep.Passed)
	return info, nil
}

// nextRevision allocates the next revision number with compare-and-set on
// "seq".
func (e *Engine) nextRevision(ctx context.Context) (int64, error) {
	for range casAttempts {
		ent, err := e.kv.Get(ctx, keySeq)
		if errors.Is(err, store.ErrNotFound) {
			if _, err := e.kv.Create(ctx, keySeq, []byte("1")); err == nil {
				return 1, nil
			} else if !errors.Is(err, store.ErrExists) {
				return 0, fmt.Errorf("policyd: allocate revision: %w", err)
			}
			continue
		}
		if err != nil {
			return 0, fmt.Errorf("policyd: allocate revision: %w", err)
		}
		last, err := strconv.ParseInt(string(ent.Value), 10, 64)
		if err != nil {
			return 0, fmt.Errorf("policyd: allocate revision: bad counter %q", ent.Value)
		}
		n := last + 1
		if _, err := e.kv.Update(ctx, keySeq, []byte(strconv.FormatInt(n, 10)), ent.Revision); err == nil {
			return n, nil
		} else if !errors.Is(err, store.ErrConflict) {
			return 0, fmt.Errorf("policyd: allocate revision: %w", err)
		}
	}
	return 0, ErrContention
}

// setActive moves "active" to rev with compare-and-set and serves rev here.
func (e *Engine) setActive(ctx context.Context, rev *revision, action, by string) error {
	for range casAttempts {
		act := Activation{Revision: rev.info.Revision, Digest: rev.info.Digest, PushedBy: by, Time: e.cfg.Now().UTC(), Action: action}
		var seq uint64
		ent, err := e.kv.Get(ctx, keyActive)
		switch {
		case errors.Is(err, store.ErrNotFound):
			val, _ := json.Marshal(act)
			seq, err = e.kv.Create(ctx, keyActive, val)
			if errors.Is(err, store.ErrExists) {
				continue
			}
		case err != nil:
		default:
			var prev Activation
			if json.Unmarshal(ent.Value, &prev) == nil {
				act.Previous = prev.Revision
			}
			val, _ := json.Marshal(act)
			seq, err = e.kv.Update(ctx, keyActive, val, ent.Revision)
			if errors.Is(err, store.ErrConflict) {
				continue
			}
		}
		if err != nil {
			return fmt.Errorf("policyd: activate revision %d: %w", rev.info.Revision, err)
		}
		served := *rev
		served.seq = seq
		if e.swap(&served) {
			e.clearError(rev.info.Revision)
		}
		e.writeStatus(ctx)
		return nil
	}
	return ErrContention
}

// Rollback makes stored revision n active again on every engine. It is
// re-verified and compiled here first (not re-tested: it passed its tests
// when pushed); a revision that no longer loads is refused.
func (e *Engine) Rollback(ctx context.Context, n int64, by string) (RevisionInfo, error) {
	info, err := e.revisionInfo(ctx, n)
	if err != nil {
		return RevisionInfo{}, err
	}
	raw, err := e.getBundle(ctx, info.Digest)
	if err != nil {
		return RevisionInfo{}, err
	}
	rev, _, err := e.build(ctx, raw, false)
	if err != nil {
		return RevisionInfo{}, err
	}
	rev.info = info
	if err := e.setActive(ctx, rev, "rollback", by); err != nil {
		return info, err
	}
	e.log.Info("policy rolled back", "revision", n, "digest", info.Digest, "by", by)
	return info, nil
}

func (e *Engine) revisionInfo(ctx context.Context, n int64) (RevisionInfo, error) {
	ent, err := e.kv.Get(ctx, revKey(n))
	if errors.Is(err, store.ErrNotFound) {
		return RevisionInfo{}, fmt.Errorf("%w: %d", ErrRevisionNotFound, n)
	}
	if err != nil {
		return RevisionInfo{}, fmt.Errorf("policyd: revision %d: %w", n, err)
	}
	var info RevisionInfo
	if err := json.Unmarshal(ent.Value, &info); err != nil {
		return RevisionInfo{}, fmt.Errorf("policyd: revision %d: %w", n, err)
	}
	return info, nil
}

// Revisions lists the stored revisions, oldest first.
func (e *Engine) Revisions(ctx context.Context) ([]RevisionInfo, error) {
	keys, err := e.kv.Keys(ctx, keyRevPrefix)
	if err != nil {
		return nil, fmt.Errorf("policyd: list revisions: %w", err)
	}
	out := make([]RevisionInfo, 0, len(keys))
	for _, k := range keys {
		n, err := strconv.ParseInt(strings.TrimPrefix(k, keyRevPrefix), 10, 64)
		if err != nil {
			continue
		}
		info, err := e.revisionInfo(ctx, n)
		if err != nil {
			return nil, err
		}
		out = append(out, info)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Revision < out[j].Revision })
	return out, nil
}

// Status returns the active revision and what every node reports it
// serves, sorted by node.
func (e *Engine) Status(ctx context.Context) (Status, error) {
	st := Status{Nodes: []NodeStatus{}}
	ent, err := e.kv.Get(ctx, keyActive)
	switch {
	case err == nil:
		var act Activation
		if err := json.Unmarshal(ent.Value, &act); err != nil {
			return st, fmt.Errorf("policyd: active revision: %w", err)
		}
		st.Active = &act
	case !errors.Is(err, store.ErrNotFound):
		return st, fmt.Errorf("policyd: active revision: %w", err)
	}
	keys, err := e.kv.Keys(ctx, keyStatusPrefix)
	if err != nil {
		return st, fmt.Errorf("policyd: node status: %w", err)
	}
	for _, k := range keys {
		ent, err := e.kv.Get(ctx, k)
		if errors.Is(err, store.ErrNotFound) {
			continue
		}
		if err != nil {
			return st, fmt.Errorf("policyd: node status: %w", err)
		}
		var ns NodeStatus
		if json.Unmarshal(ent.Value, &ns) == nil {
			st.Nodes = append(st.Nodes, ns)
		}
	}
	sort.Slice(st.Nodes, func(i, j int) bool { return st.Nodes[i].Node < st.Nodes[j].Node })
	return st, nil
}

// activate makes the engine serve the revision an "active" entry names,
// unless it already serves that activation or a later one. A revision that
// cannot be loaded here is refused: logged, reported in status, and the
// current one keeps serving.
func (e *Engine) activate(ctx context.Context, ent store.Entry) error {
	e.swapMu.Lock()
	defer e.swapMu.Unlock()
	cur := e.active.Load()
	if cur != nil && cur.seq >= ent.Revision {
		return nil
	}
	var act Activation
	if err := json.Unmarshal(ent.Value, &act); err != nil {
		return e.refuse(ctx, 0, fmt.Errorf("unreadable active record: %w", err))
	}
	if cur != nil && cur.info.Revision == act.Revision && cur.info.Digest == act.Digest {
		same := *cur
		same.seq = ent.Revision
		e.swap(&same)
		return nil
	}
	info, err := e.revisionInfo(ctx, act.Revision)
	if err != nil {
		return e.refuse(ctx, act.Revision, err)
	}
	if info.Digest != act.Digest {
		return e.refuse(ctx, act.Revision, fmt.Errorf("active record names digest %s, revision record %s", act.Digest, info.Digest))
	}
	raw, err := e.getBundle(ctx, info.Digest)
	if err != nil {
		return e.refuse(ctx, act.Revision, err)
	}
	rev, _, err := e.build(ctx, raw, false)
	if err != nil {
		return e.refuse(ctx, act.Revision, err)
	}
	rev.info = info
	rev.seq = ent.Revision
	if e.swap(rev) {
		e.clearError(act.Revision)
	}
	e.writeStatus(ctx)
	return nil
}

func (e *Engine) refuse(ctx context.Context, n int64, err error) error {
	cur, _ := e.Active()
	e.log.Error("policy revision refused on this node; the previous one keeps serving", "revision", n, "serving", cur.Revision, "err", err)
	e.statusMu.Lock()
	e.lastErr, e.lastErrN = err.Error(), n
	e.statusMu.Unlock()
	e.writeStatus(ctx)
	return err
}

func (e *Engine) clearError(n int64) {
	e.statusMu.Lock()
	defer e.statusMu.Unlock()
	if e.lastErrN <= n {
		e.lastErr, e.lastErrN = "", 0
	}
}

// writeStatus records what this node serves under status.<node>. Failures
// are logged: status is advisory.
func (e *Engine) writeStatus(ctx context.Context) {
	e.statusMu.Lock()
	defer e.statusMu.Unlock()
	info, ok := e.Active()
	ns := NodeStatus{Node: e.cfg.Node, Revision: info.Revision, Time: e.cfg.Now().UTC(), Error: e.lastErr, ErrorRevision: e.lastErrN}
	if ok {
		ns.Digest = info.Digest
	}
	val, _ := json.Marshal(ns)
	key := keyStatusPrefix + e.cfg.Node
	for range casAttempts {
		ent, err := e.kv.Get(ctx, key)
		switch {
		case errors.Is(err, store.ErrNotFound):
			if _, err = e.kv.Create(ctx, key, val); errors.Is(err, store.ErrExists) {
				continue
			}
		case err == nil:
			if bytes.Equal(ent.Value, val) {
				return
			}
			if _, err = e.kv.Update(ctx, key, val, ent.Revision); errors.Is(err, store.ErrConflict) {
				continue
			}
		}
		if err != nil {
			e.log.Warn("could not write node status", "err", err)
		}
		return
	}
}

// watch follows "active" until ctx ends, re-establishing the watch when it
// breaks. Bursts are collapsed: only the latest activation is loaded.
func (e *Engine) watch(ctx context.Context) {
	backoff := 100 * time.Millisecond
	for ctx.Err() == nil {
		ch, err := e.kv.Watch(ctx, keyActive)
		if err != nil {
			e.log.Warn("watch of the active policy revision failed; retrying", "err", err, "in", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 10*time.Second)
			continue
		}
		backoff = 100 * time.Millisecond
		for ent := range ch {
			ent, open := latest(ent, ch)
			if !ent.Deleted {
				_ = e.activate(ctx, ent)
			}
			if !open {
				break
			}
		}
		if ctx.Err() == nil {
			e.log.Warn("watch of the active policy revision ended; re-establishing")
			select {
			case <-ctx.Done():
			case <-time.After(backoff):
			}
		}
	}
}

// latest returns the newest entry already waiting in ch after ent, and
// whether ch is still open.
func latest(ent store.Entry, ch <-chan store.Entry) (store.Entry, bool) {
	for {
		select {
		case next, ok := <-ch:
			if !ok {
				return ent, false
			}
			ent = next
		default:
			return ent, true
		}
	}
}

// ResetActive is the break-glass recovery for a revision that locks every
// administrator out (for example one that turns the local administrator
// off before identities exist): it forgets which revision is active, so
// engines that start afterwards serve their Config.Default policy again.
// Revisions stay stored and can be rolled back to. It is meant to run with
// the platform stopped, by an operator who can reach the store directly.
func ResetActive(ctx context.Context, st *store.Store) error {
	kv, err := st.KV(ctx, Bucket)
	if err != nil {
		return fmt.Errorf("policyd: %w", err)
	}
	if err := kv.Delete(ctx, keyActive, 0); err != nil && !errors.Is(err, store.ErrNotFound) {
		return fmt.Errorf("policyd: reset active revision: %w", err)
	}
	return nil
}
