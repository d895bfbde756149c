package sandbox

import (
	"fmt"
	"sync"
)

// IDs is the set of instance IDs a driver has started and not yet
// stopped, so that Start refuses an ID in use before it touches anything
// of the running instance. The zero value is an empty set; it is safe for
// concurrent use.
type IDs struct {
	mu  sync.Mutex
	ids map[string]struct{}
}

// Reserve adds id to the set, or returns ErrInstanceExists (wrapped) when
// it is already there.
func (s *IDs) Reserve(id string) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if _, ok := s.ids[id]; ok {
		return fmt.Errorf("%w: %s", ErrInstanceExists, id)
	}
	if s.ids == nil {
		s.ids = map[string]struct{}{}
	}
	s.ids[id] = struct{}{}
	return nil
}

// Release removes id from the set.
func (s *IDs) Release(id string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	delete(s.ids, id)
}
