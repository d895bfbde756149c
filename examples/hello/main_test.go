package main

import (
	"testing"
)

func TestHandle(t *testing.T) {
	tests := []struct{ name, want string }{
		{"x", "Hello, x!"},
		{"", "Hello, world!"},
		{"zfaas", "Hello, zfaas!"},
	}
	for _, tt := range tests {
		got, err := handle(t.Context(), Request{Name: tt.name})
		if err != nil {
			t.Fatalf("handle(%q): %v", tt.name, err)
		}
		if got.Message != tt.want {
			t.Errorf("handle(%q): got %q, want %q", tt.name, got.Message, tt.want)
		}
	}
}
