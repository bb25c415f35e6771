package linkemu

import (
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"time"
)

// frameWriter is where a link delivers its frames (a TAP device).
type frameWriter interface {
	Write([]byte) (int, error)
}

// pending is a frame in a link, and when it leaves.
type pending struct {
	frame  []byte
	depart time.Time
}

// Counters are what a link did to its frames.
type Counters struct {
	Frames    uint64 `json:"frames"` // delivered
	Bytes     uint64 `json:"bytes"`
	Lost      uint64 `json:"lost"`      // dropped at random (Loss)
	Overflown uint64 `json:"overflown"` // dropped for a full queue
}

// link is one direction between two ports: a rate-limited serialiser
// followed by a delay line, in one FIFO (frames leave in order).
type link struct {
	prof Profile
	out  frameWriter
	now  func() time.Time
	rng  *rand.Rand

	mu         sync.Mutex
	queue      []pending
	busyUntil  time.Time // when the serialiser has sent what it holds
	lastDepart time.Time
	wake       chan struct{}
	stop       chan struct{}
	done       chan struct{}

	frames, bytes, lost, overflown atomic.Uint64
}

func newLink(p Profile, out frameWriter, seed uint64) *link {
	return &link{prof: p, out: out, now: time.Now, rng: rand.New(rand.NewPCG(seed, seed^0x9e3779b97f4a7c15)),
		wake: make(chan struct{}, 1), stop: make(chan struct{}), done: make(chan struct{})}
}

// admit decides a frame's fate as it enters the link at now: lost, dropped
// for a full queue, or queued with the time it leaves. It reports whether
// the frame was queued.
func (l *link) admit(frame []byte, now time.Time) bool {
	p := l.prof
	if p.Loss > 0 && l.rng.Float64() < p.Loss {
		l.lost.Add(1)
		return false
	}
	start := now
	if l.busyUntil.After(start) {
		start = l.busyUntil
	}
	sent := start
	if p.RateBits > 0 {
		queue := p.Queue
		if queue == 0 {
			queue = DefaultQueue
		}
		if start.Sub(now) > queue {
			l.overflown.Add(1)
			return false
		}
		sent = start.Add(time.Duration(float64(len(frame)*8) / float64(p.RateBits) * float64(time.Second)))
		l.busyUntil = sent
	}
	depart := sent.Add(p.Delay)
	if p.Jitter > 0 {
		depart = depart.Add(time.Duration((l.rng.Float64()*2 - 1) * float64(p.Jitter)))
	}
	if depart.Before(l.lastDepart) {
		depart = l.lastDepart // no frame overtakes another
	}
	l.lastDepart = depart
	l.queue = append(l.queue, pending{frame: frame, depart: depart})
	return true
}

// send queues a frame (a copy the link now owns).
func (l *link) send(frame []byte) {
	l.mu.Lock()
	queued := l.admit(frame, l.now())
	l.mu.Unlock()
	if queued {
		select {
		case l.wake <- struct{}{}:
		default:
		}
	}
}

// run delivers frames as they become due, until close.
func (l *link) run() {
	defer close(l.done)
	timer := time.NewTimer(time.Hour)
	defer timer.Stop()
	for {
		l.mu.Lock()
		now := l.now()
		var due []pending
		i := 0
		for ; i < len(l.queue) && !l.queue[i].depart.After(now); i++ {
		}
		due = append(due, l.queue[:i]...)
		l.queue = l.queue[i:]
		var next time.Duration = -1
		if len(l.queue) > 0 {
			next = l.queue[0].depart.Sub(now)
		}
		l.mu.Unlock()
		for _, p := range due {
			if _, err := l.out.Write(p.frame); err == nil {
				l.frames.Add(1)
				l.bytes.Add(uint64(len(p.frame)))
			}
		}
		if len(due) > 0 {
			continue // more may have become due while writing
		}
		var tc <-chan time.Time
		if next >= 0 {
			timer.Reset(next)
			tc = timer.C
		}
		select {
		case <-l.stop:
			return
		case <-l.wake:
		case <-tc:
		}
		if !timer.Stop() {
			select {
			case <-timer.C:
			default:
			}
		}
	}
}

// close stops the link; frames still queued are dropped.
func (l *link) close() {
	close(l.stop)
	<-l.done
}

func (l *link) counters() Counters {
	return Counters{Frames: l.frames.Load(), Bytes: l.bytes.Load(), Lost: l.lost.Load(), Overflown: l.overflown.Load()}
}
