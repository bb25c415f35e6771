package agent

import "sync"

// queue hands VM names to workers so that one name is never reconciled by two
// workers at once, and a name added while it is being worked on is worked on
// again afterwards.
type queue struct {
	mu      sync.Mutex
	cond    *sync.Cond
	pending []string
	queued  map[string]bool
	active  map[string]bool
	again   map[string]bool
	closed  bool
}

func newQueue() *queue {
	q := &queue{queued: map[string]bool{}, active: map[string]bool{}, again: map[string]bool{}}
	q.cond = sync.NewCond(&q.mu)
	return q
}

func (q *queue) add(name string) {
	q.mu.Lock()
	defer q.mu.Unlock()
	if q.closed {
		return
	}
	if q.active[name] {
		q.again[name] = true
		return
	}
	if !q.queued[name] {
		q.queued[name] = true
		q.pending = append(q.pending, name)
		q.cond.Signal()
	}
}

func (q *queue) get() (string, bool) {
	q.mu.Lock()
	defer q.mu.Unlock()
	for len(q.pending) == 0 && !q.closed {
		q.cond.Wait()
	}
	if q.closed {
		return "", false
	}
	n := q.pending[0]
	q.pending = q.pending[1:]
	delete(q.queued, n)
	q.active[n] = true
	return n, true
}

func (q *queue) done(name string) {
	q.mu.Lock()
	delete(q.active, name)
	again := q.again[name]
	delete(q.again, name)
	q.mu.Unlock()
	if again {
		q.add(name)
	}
}

func (q *queue) close() {
	q.mu.Lock()
	q.closed = true
	q.cond.Broadcast()
	q.mu.Unlock()
}
