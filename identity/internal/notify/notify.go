// Package notify is a tiny broadcast primitive: waiters take the current
// channel, and Notify closes it and installs a fresh one, so every waiter
// wakes exactly once per notification and nobody can miss one that happens
// after they took the channel. It must never block the notifier.
package notify

import "sync"

// Broadcaster wakes all current waiters. The zero value is ready to use and
// it is safe for concurrent use.
type Broadcaster struct {
	mu sync.Mutex
	ch chan struct{}
}

// Wait returns a channel that is closed by the next Notify.
func (b *Broadcaster) Wait() <-chan struct{} {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ch == nil {
		b.ch = make(chan struct{})
	}
	return b.ch
}

// Notify wakes every waiter that called Wait before it.
func (b *Broadcaster) Notify() {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.ch != nil {
		close(b.ch)
	}
	b.ch = make(chan struct{})
}
