package notify

import "testing"

func TestBroadcaster(t *testing.T) {
	var b Broadcaster
	w1, w2 := b.Wait(), b.Wait()
	b.Notify()
	for i, w := range []<-chan struct{}{w1, w2} {
		select {
		case <-w:
		default:
			t.Errorf("waiter %d not woken", i)
		}
	}
	select {
	case <-b.Wait():
		t.Error("new waiter woken by an old notification")
	default:
	}
}
