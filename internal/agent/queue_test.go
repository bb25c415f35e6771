package agent

import (
	"sync"
	"testing"
	"time"
)

func TestQueueNeverRunsANameTwiceAtOnce(t *testing.T) {
	q := newQueue()
	var mu sync.Mutex
	active := map[string]bool{}
	runs := map[string]int{}
	var wg sync.WaitGroup
	for i := 0; i < 4; i++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				n, ok := q.get()
				if !ok {
					return
				}
				mu.Lock()
				if active[n] {
					t.Errorf("%s reconciled twice at once", n)
				}
				active[n] = true
				runs[n]++
				mu.Unlock()
				time.Sleep(5 * time.Millisecond)
				mu.Lock()
				active[n] = false
				mu.Unlock()
				q.done(n)
			}
		}()
	}
	for i := 0; i < 50; i++ {
		q.add("a")
		q.add("b")
	}
	deadline := time.Now().Add(5 * time.Second)
	for time.Now().Before(deadline) {
		q.mu.Lock()
		idle := len(q.pending) == 0 && len(q.active) == 0
		q.mu.Unlock()
		if idle {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	q.close()
	wg.Wait()
	mu.Lock()
	defer mu.Unlock()
	if runs["a"] == 0 || runs["b"] == 0 || runs["a"] > 50 {
		t.Fatalf("runs %v", runs)
	}
}

func TestQueueAddWhileActiveRunsAgain(t *testing.T) {
	q := newQueue()
	q.add("x")
	n, _ := q.get()
	q.add("x") // arrives while x is being worked on
	q.done(n)
	q.mu.Lock()
	defer q.mu.Unlock()
	if len(q.pending) != 1 || q.pending[0] != "x" {
		t.Fatalf("x not queued again: %v", q.pending)
	}
}
