package main

import (
	"context"
	"sync"
	"time"

	"github.com/ferryvm/ferry/internal/testbed"
)

// prober connects to the guest's port 80 every 10 ms from the client
// namespace (50 ms connect timeout) and keeps the times of the connections
// that succeeded.
type prober struct {
	mu    sync.Mutex
	start time.Time
	ok    []time.Time
	done  chan struct{}
	wg    sync.WaitGroup
	end   time.Time
}

func startProber(ns, ip string) *prober {
	p := &prober{start: time.Now(), done: make(chan struct{})}
	dial := testbed.DialIn(ns)
	p.wg.Add(1)
	go func() {
		defer p.wg.Done()
		t := time.NewTicker(10 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-p.done:
				return
			case <-t.C:
			}
			ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
			c, err := dial(ctx, "tcp", ip+":80")
			cancel()
			if err != nil {
				continue
			}
			c.Close()
			p.mu.Lock()
			p.ok = append(p.ok, time.Now())
			p.mu.Unlock()
		}
	}()
	return p
}

// stop ends probing.
func (p *prober) stop() {
	select {
	case <-p.done:
		return
	default:
	}
	close(p.done)
	p.wg.Wait()
	p.end = time.Now()
}

// gap is the longest time without a successful connection, in ms, the
// stretch before the first and after the last included.
func (p *prober) gap() float64 {
	p.mu.Lock()
	defer p.mu.Unlock()
	last, longest := p.start, time.Duration(0)
	for _, t := range append(append([]time.Time(nil), p.ok...), p.end) {
		if g := t.Sub(last); g > longest {
			longest = g
		}
		last = t
	}
	return ms(longest)
}

// firstAfter is the first successful connection at or after t (zero if none).
func (p *prober) firstAfter(t time.Time) time.Time {
	p.mu.Lock()
	defer p.mu.Unlock()
	for _, s := range p.ok {
		if !s.Before(t) {
			return s
		}
	}
	return time.Time{}
}

// switchover fills in the parts of the switchover from the moment the guest
// stopped on the source, its stream was complete on the target, and it ran
// there.
func (p *prober) switchover(r *migResult, stopped, streamDone, running time.Time) {
	if !stopped.IsZero() && !streamDone.IsZero() {
		r.StopToStreamMS = ms(streamDone.Sub(stopped))
	}
	if !streamDone.IsZero() && !running.IsZero() {
		r.StreamToRunMS = ms(running.Sub(streamDone))
	}
	if a := p.firstAfter(running); !running.IsZero() && !a.IsZero() {
		r.RunToAnswerMS = ms(a.Sub(running))
		if !stopped.IsZero() {
			r.StopToAnswerMS = ms(a.Sub(stopped))
		}
	}
}
