package gateway

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/zfaas/zfaas/api"
	"github.com/zfaas/zfaas/store"
)

// KV bucket names.
const (
	functionsBucket = "zfaas_functions"
	versionsBucket  = "zfaas_versions"
)

// Registry errors (wrapped); match with errors.Is.
var (
	ErrFunctionNotFound = errors.New("function not found")
	ErrVersionNotFound  = errors.New("version not found")
	ErrAliasNotFound    = errors.New("alias not found")
	// ErrContention: a compare-and-set kept losing to concurrent writers.
	ErrContention = errors.New("too many concurrent updates")
)

const casAttempts = 16

// Registry stores functions, versions and aliases in the store's KV with
// compare-and-set on every update. Function records are cached and kept
// fresh by a watch; versions are immutable and cached once read.
type Registry struct {
	fns  *store.KV
	vers *store.KV
	now  func() time.Time

	mu       sync.RWMutex
	fnCache  map[string]api.Function // key: tenant.name
	verCache map[string]api.Version  // key: tenant.name.n
}

// NewRegistry binds the registry buckets and starts the cache watch, which
// runs until ctx ends.
func NewRegistry(ctx context.Context, st *store.Store, now func() time.Time) (*Registry, error) {
	fns, err := st.KV(ctx, functionsBucket)
	if err != nil {
		return nil, fmt.Errorf("functions bucket: %w", err)
	}
	vers, err := st.KV(ctx, versionsBucket)
	if err != nil {
		return nil, fmt.Errorf("versions bucket: %w", err)
	}
	if now == nil {
		now = time.Now
	}
	r := &Registry{fns: fns, vers: vers, now: now, fnCache: map[string]api.Function{}, verCache: map[string]api.Version{}}
	updates, err := fns.Watch(ctx, ">")
	if err != nil {
		return nil, fmt.Errorf("watch functions: %w", err)
	}
	go func() {
		for e := range updates {
			if e.Deleted {
				r.mu.Lock()
				if f, ok := r.fnCache[e.Key]; ok && f.Revision <= e.Revision {
					delete(r.fnCache, e.Key)
				}
				r.mu.Unlock()
				continue
			}
			var f api.Function
			if json.Unmarshal(e.Value, &f) == nil {
				f.Revision = e.Revision
				r.remember(e.Key, f)
			}
		}
	}()
	return r, nil
}

func fnKey(tenant, name string) string { return tenant + "." + name }

func verKey(tenant, name string, n int64) string {
	return tenant + "." + name + "." + strconv.FormatInt(n, 10)
}

func (r *Registry) remember(key string, f api.Function) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if old, ok := r.fnCache[key]; ok && old.Revision > f.Revision {
		return
	}
	r.fnCache[key] = f
}

func (r *Registry) forget(key string) {
	r.mu.Lock()
	delete(r.fnCache, key)
	r.mu.Unlock()
}

// Function returns a function record, from the cache when present.
func (r *Registry) Function(ctx context.Context, tenant, name string) (api.Function, error) {
	if !api.ValidName(name) {
		return api.Function{}, fmt.Errorf("%w: %q", ErrFunctionNotFound, name)
	}
	key := fnKey(tenant, name)
	r.mu.RLock()
	f, ok := r.fnCache[key]
	r.mu.RUnlock()
	if ok {
		return f, nil
	}
	return r.loadFunction(ctx, tenant, name)
}

func (r *Registry) loadFunction(ctx context.Context, tenant, name string) (api.Function, error) {
	if !api.ValidName(name) {
		return api.Function{}, fmt.Errorf("%w: %q", ErrFunctionNotFound, name)
	}
	e, err := r.fns.Get(ctx, fnKey(tenant, name))
	if errors.Is(err, store.ErrNotFound) {
		return api.Function{}, fmt.Errorf("%w: %s", ErrFunctionNotFound, name)
	}
	if err != nil {
		return api.Function{}, err
	}
	var f api.Function
	if err := json.Unmarshal(e.Value, &f); err != nil {
		return api.Function{}, fmt.Errorf("decode function %s: %w", name, err)
	}
	f.Revision = e.Revision
	r.remember(fnKey(tenant, name), f)
	return f, nil
}

// Version returns one version of a function.
func (r *Registry) Version(ctx context.Context, tenant, name string, n int64) (api.Version, error) {
	f, err := r.Function(ctx, tenant, name)
	if err != nil {
		return api.Version{}, err
	}
	if n < 1 || n > f.LatestVersion {
		return api.Version{}, fmt.Errorf("%w: %s version %d", ErrVersionNotFound, name, n)
	}
	key := verKey(tenant, name, n)
	r.mu.RLock()
	v, ok := r.verCache[key]
	r.mu.RUnlock()
	if ok && !v.CreatedAt.Before(f.CreatedAt) { // not left from a deleted namesake
		return v, nil
	}
	e, err := r.vers.Get(ctx, key)
	if errors.Is(err, store.ErrNotFound) {
		return api.Version{}, fmt.Errorf("%w: %s version %d", ErrVersionNotFound, name, n)
	}
	if err != nil {
		return api.Version{}, err
	}
	if err := json.Unmarshal(e.Value, &v); err != nil {
		return api.Version{}, fmt.Errorf("decode version %s: %w", key, err)
	}
	r.mu.Lock()
	r.verCache[key] = v
	r.mu.Unlock()
	return v, nil
}

// Versions lists every version of a function, oldest first.
func (r *Registry) Versions(ctx context.Context, tenant, name string) ([]api.Version, error) {
	f, err := r.loadFunction(ctx, tenant, name)
	if err != nil {
		return nil, err
	}
	out := make([]api.Version, 0, f.LatestVersion)
	for n := int64(1); n <= f.LatestVersion; n++ {
		v, err := r.Version(ctx, tenant, name, n)
		if errors.Is(err, ErrVersionNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, nil
}

// List returns the tenant's functions sorted by name.
func (r *Registry) List(ctx context.Context, tenant string) ([]api.Function, error) {
	keys, err := r.fns.Keys(ctx, tenant+".")
	if err != nil {
		return nil, err
	}
	out := make([]api.Function, 0, len(keys))
	for _, k := range keys {
		name := strings.TrimPrefix(k, tenant+".")
		f, err := r.loadFunction(ctx, tenant, name)
		if errors.Is(err, ErrFunctionNotFound) {
			continue
		}
		if err != nil {
			return nil, err
		}
		out = append(out, f)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Publish stores a new immutable version and makes it $LATEST. The version
// number is allocated by compare-and-set on the function record, so
// concurrent deploys from several gateways get distinct numbers and never
// half-apply.
func (r *Registry) Publish(ctx context.Context, tenant, name string, cfg api.FunctionConfig, pkg store.PackageInfo, desc string) (api.Version, error) {
	for range casAttempts {
		now := r.now().UTC()
		f, err := r.loadFunction(ctx, tenant, name)
		exists := err == nil
		if err != nil && !errors.Is(err, ErrFunctionNotFound) {
			return api.Version{}, err
		}
		if !exists {
			f = api.Function{Tenant: tenant, Name: name, CreatedAt: now}
		}
		v := api.Version{
			Tenant: tenant, Function: name, Version: f.LatestVersion + 1, Config: cfg,
			PackageDigest: pkg.Digest, PackageSize: pkg.Size, Description: desc, CreatedAt: now,
		}
		raw, err := json.Marshal(v)
		if err != nil {
			return api.Version{}, err
		}
		// The version record is written first; it becomes visible only when
		// the function record names it. A leftover from an attempt that lost
		// the race (or a deleted earlier function) is overwritten.
		key := verKey(tenant, name, v.Version)
		if _, err := r.vers.Create(ctx, key, raw); errors.Is(err, store.ErrExists) {
			old, gerr := r.vers.Get(ctx, key)
			if gerr != nil {
				continue
			}
			if _, err := r.vers.Update(ctx, key, raw, old.Revision); err != nil {
				continue
			}
		} else if err != nil {
			return api.Version{}, err
		}
		f.LatestVersion = v.Version
		f.UpdatedAt = now
		if err := r.writeFunction(ctx, f, exists); err != nil {
			if errors.Is(err, store.ErrConflict) || errors.Is(err, store.ErrExists) {
				continue
			}
			return api.Version{}, err
		}
		r.mu.Lock()
		r.verCache[key] = v
		r.mu.Unlock()
		return v, nil
	}
	return api.Version{}, ErrContention
}

func (r *Registry) writeFunction(ctx context.Context, f api.Function, exists bool) error {
	lastRev := f.Revision
	f.Revision = 0
	raw, err := json.Marshal(f)
	if err != nil {
		return err
	}
	var rev uint64
	if exists {
		rev, err = r.fns.Update(ctx, fnKey(f.Tenant, f.Name), raw, lastRev)
	} else {
		rev, err = r.fns.Create(ctx, fnKey(f.Tenant, f.Name), raw)
	}
	if err != nil {
		return err
	}
	f.Revision = rev
	r.remember(fnKey(f.Tenant, f.Name), f)
	return nil
}

// SetAlias creates or moves an alias. Both versions must exist.
func (r *Registry) SetAlias(ctx context.Context, tenant, name string, a api.Alias) (api.Function, error) {
	for range casAttempts {
		f, err := r.loadFunction(ctx, tenant, name)
		if err != nil {
			return api.Function{}, err
		}
		for _, n := range []int64{a.Version, a.AdditionalVersion} {
			if n == a.AdditionalVersion && n == 0 {
				continue // no traffic split
			}
			if n < 1 || n > f.LatestVersion {
				return api.Function{}, fmt.Errorf("%w: %s version %d", ErrVersionNotFound, name, n)
			}
		}
		if f.Aliases == nil {
			f.Aliases = map[string]api.Alias{}
		}
		f.Aliases[a.Name] = a
		f.UpdatedAt = r.now().UTC()
		if err := r.writeFunction(ctx, f, true); errors.Is(err, store.ErrConflict) {
			continue
		} else if err != nil {
			return api.Function{}, err
		}
		return r.Function(ctx, tenant, name)
	}
	return api.Function{}, ErrContention
}

// DeleteAlias removes an alias.
func (r *Registry) DeleteAlias(ctx context.Context, tenant, name, alias string) error {
	for range casAttempts {
		f, err := r.loadFunction(ctx, tenant, name)
		if err != nil {
			return err
		}
		if _, ok := f.Aliases[alias]; !ok {
			return fmt.Errorf("%w: %s:%s", ErrAliasNotFound, name, alias)
		}
		delete(f.Aliases, alias)
		f.UpdatedAt = r.now().UTC()
		if err := r.writeFunction(ctx, f, true); errors.Is(err, store.ErrConflict) {
			continue
		} else if err != nil {
			return err
		}
		return nil
	}
	return ErrContention
}

// Delete removes a function and its versions. The function record goes
// first (with compare-and-set), so the function disappears at once; its
// version records are removed afterwards.
func (r *Registry) Delete(ctx context.Context, tenant, name string) ([]api.Version, error) {
	for range casAttempts {
		f, err := r.loadFunction(ctx, tenant, name)
		if err != nil {
			return nil, err
		}
		vers, _ := r.Versions(ctx, tenant, name)
		if err := r.fns.Delete(ctx, fnKey(tenant, name), f.Revision); errors.Is(err, store.ErrConflict) {
			continue
		} else if err != nil {
			return nil, err
		}
		r.forget(fnKey(tenant, name))
		r.mu.Lock()
		for n := int64(1); n <= f.LatestVersion; n++ {
			delete(r.verCache, verKey(tenant, name, n))
		}
		r.mu.Unlock()
		for n := int64(1); n <= f.LatestVersion; n++ {
			_ = r.vers.Delete(ctx, verKey(tenant, name, n), 0)
		}
		return vers, nil
	}
	return nil, ErrContention
}

// Resolve maps a qualifier ("", "$LATEST", a version number or an alias) to
// a version. rnd in [0,1) picks between an alias's two versions.
func (r *Registry) Resolve(ctx context.Context, tenant, name, qualifier string, rnd float64) (api.Version, error) {
	f, err := r.Function(ctx, tenant, name)
	if err != nil {
		return api.Version{}, err
	}
	var n int64
	switch {
	case qualifier == "" || qualifier == "$LATEST":
		n = f.LatestVersion
	case qualifier[0] >= '0' && qualifier[0] <= '9':
		n, err = strconv.ParseInt(qualifier, 10, 64)
		if err != nil {
			return api.Version{}, fmt.Errorf("%w: %s:%s", ErrVersionNotFound, name, qualifier)
		}
	default:
		a, ok := f.Aliases[qualifier]
		if !ok {
			return api.Version{}, fmt.Errorf("%w: %s:%s", ErrAliasNotFound, name, qualifier)
		}
		n = a.Version
		if a.AdditionalVersion != 0 && rnd < a.AdditionalWeight {
			n = a.AdditionalVersion
		}
	}
	return r.Version(ctx, tenant, name, n)
}
