package ha

import (
	"context"
	"io"
	"log/slog"
	"path/filepath"
	"sync"
	"testing"
	"time"
)

// TestWatchdogFiresWhenNotFed feeds a deadline, stops feeding, and checks
// that the watchdog kills exactly the guests of the last feed, only after
// the deadline, and keeps them alive while it is fed.
func TestWatchdogFiresWhenNotFed(t *testing.T) {
	var mu sync.Mutex
	var killed []string
	w := NewWatchdog(slog.New(slog.NewTextHandler(io.Discard, nil)))
	w.kill = func(g WatchGuest) error { mu.Lock(); killed = append(killed, g.Name); mu.Unlock(); return nil }
	sock := filepath.Join(t.TempDir(), "wd.sock")
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- w.Serve(ctx, sock) }()

	c := NewWatchdogClient(sock, filepath.Join(t.TempDir(), "wd.log"), []string{"/bin/false"}, slog.Default())
	defer c.Close()
	c2, err := c.dialRetry(2 * time.Second)
	if err != nil {
		t.Fatal(err)
	}
	c2.Close()
	guests := []WatchGuest{{Name: "a", PID: 1, UUID: "x"}, {Name: "b", PID: 2, UUID: "y"}}
	// Fed every 50 ms with a 200 ms deadline for half a second: no kill.
	for i := 0; i < 10; i++ {
		if err := c.Feed(Feed{Deadline: MonoNow() + int64(200*time.Millisecond), Guests: guests}); err != nil {
			t.Fatal(err)
		}
		time.Sleep(50 * time.Millisecond)
	}
	mu.Lock()
	if len(killed) != 0 {
		t.Fatalf("killed while fed: %v", killed)
	}
	mu.Unlock()
	last := MonoNow() + int64(200*time.Millisecond)
	if err := c.Feed(Feed{Deadline: last, Guests: guests[:1]}); err != nil {
		t.Fatal(err)
	}
	deadline := time.Now().Add(2 * time.Second)
	for {
		mu.Lock()
		n := len(killed)
		mu.Unlock()
		if n > 0 || time.Now().After(deadline) {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	if now := MonoNow(); now < last {
		t.Fatalf("fired %v before the deadline", time.Duration(last-now))
	}
	time.Sleep(100 * time.Millisecond)
	mu.Lock()
	defer mu.Unlock()
	if len(killed) != 1 || killed[0] != "a" {
		t.Fatalf("killed %v, want exactly [a] (the last feed's guests, once)", killed)
	}
}

// TestWatchdogExitsWhenIdle: with no agent connected and nothing armed the
// process does not linger.
func TestWatchdogExitsWhenIdle(t *testing.T) {
	w := NewWatchdog(slog.New(slog.NewTextHandler(io.Discard, nil)))
	w.idle = time.Now().Add(-IdleExit + 200*time.Millisecond)
	done := make(chan error, 1)
	go func() { done <- w.Serve(context.Background(), filepath.Join(t.TempDir(), "wd.sock")) }()
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("idle watchdog did not exit")
	}
}
