package sandbox

import (
	"errors"
	"testing"
)

func TestIDs(t *testing.T) {
	var s IDs
	if err := s.Reserve("a"); err != nil {
		t.Fatalf("first Reserve: %v", err)
	}
	if err := s.Reserve("a"); !errors.Is(err, ErrInstanceExists) {
		t.Fatalf("second Reserve = %v, want ErrInstanceExists", err)
	}
	if err := s.Reserve("b"); err != nil {
		t.Fatalf("another ID: %v", err)
	}
	s.Release("a")
	if err := s.Reserve("a"); err != nil {
		t.Fatalf("Reserve after Release: %v", err)
	}
}
