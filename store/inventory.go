package store

import (
	"context"
	"errors"
	"sort"

	"github.com/nats-io/nats.go/jetstream"
)

// Replicas returns the replica count the store uses for the buckets and
// streams it creates, so other packages create theirs alike.
func (s *Store) Replicas() int { return s.cfg.Replicas }

// PackageDigests lists the digests of every stored package, sorted.
func (s *Store) PackageDigests(ctx context.Context) ([]string, error) {
	obs, err := s.packages(ctx)
	if err != nil {
		return nil, err
	}
	infos, err := obs.List(ctx)
	if errors.Is(err, jetstream.ErrNoObjectsFound) {
		return []string{}, nil
	}
	if err != nil {
		return nil, err
	}
	out := make([]string, 0, len(infos))
	for _, i := range infos {
		if !i.Deleted {
			out = append(out, i.Name)
		}
	}
	sort.Strings(out)
	return out, nil
}
