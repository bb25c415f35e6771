package testbed

import (
	"bufio"
	"context"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"
)

// MaxSilence is the longest a guest's stream (a line every 10 ms) may stay
// silent at its end and still count as delivering: a connection to a dead
// guest never closes by itself, so silence is how death shows.
const MaxSilence = time.Second

// StreamWatch holds one long-lived TCP connection to a guest's GET /stream
// (numbered lines with the guest's boot id) and records what arrives: the
// longest gap between lines, the boot ids, and any break or jump.
type StreamWatch struct {
	cancel context.CancelFunc
	done   chan struct{}

	mu      sync.Mutex
	start   time.Time
	lines   int
	last    time.Time
	maxGap  time.Duration
	gapEnd  time.Time
	boots   []string
	lastSeq int
	err     error
}

// StreamReport is what a StreamWatch saw, up to Stop.
type StreamReport struct {
	Lines    int           `json:"lines"`
	Duration time.Duration `json:"duration"`
	// LongestGap is the longest time without a line, including the time
	// from the last line to the end; GapFrom/GapTo say when it was.
	LongestGap time.Duration `json:"longest_gap"`
	GapFrom    time.Time     `json:"gap_from"`
	GapTo      time.Time     `json:"gap_to"`
	Boots      []string      `json:"boot_ids"`
	// Intact: the connection held to the end, lines kept coming (the last
	// within MaxSilence of the end), in sequence, from one boot.
	Intact  bool   `json:"intact"`
	Problem string `json:"problem,omitempty"`
}

// WatchStream opens the stream (lines every interval) with hc and follows
// it until Stop.
func WatchStream(ctx context.Context, hc *http.Client, ip string, interval time.Duration) (*StreamWatch, error) {
	ctx, cancel := context.WithCancel(ctx)
	req, err := http.NewRequestWithContext(ctx, "GET", fmt.Sprintf("http://%s/stream?interval=%s", ip, interval), nil)
	if err != nil {
		cancel()
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		cancel()
		return nil, fmt.Errorf("connecting to the guest: %w", err)
	}
	if resp.StatusCode != 200 {
		resp.Body.Close()
		cancel()
		return nil, fmt.Errorf("the guest answered %s", resp.Status)
	}
	now := time.Now()
	w := &StreamWatch{cancel: cancel, done: make(chan struct{}), start: now, last: now, lastSeq: -1}
	go func() {
		defer close(w.done)
		defer resp.Body.Close()
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			w.line(sc.Text(), time.Now())
		}
		w.mu.Lock()
		defer w.mu.Unlock()
		if ctx.Err() == nil && w.err == nil {
			w.err = fmt.Errorf("the stream ended after %d lines: %v", w.lines, sc.Err())
		}
	}()
	return w, nil
}

func (w *StreamWatch) line(text string, now time.Time) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if g := now.Sub(w.last); g > w.maxGap {
		w.maxGap, w.gapEnd = g, now
	}
	w.last = now
	w.lines++
	f := strings.Fields(text)
	if len(f) != 2 {
		return
	}
	seq, _ := strconv.Atoi(f[0])
	if w.lastSeq >= 0 && seq != w.lastSeq+1 && w.err == nil {
		w.err = fmt.Errorf("the stream jumped from line %d to %d", w.lastSeq, seq)
	}
	w.lastSeq = seq
	if len(w.boots) == 0 || w.boots[len(w.boots)-1] != f[1] {
		w.boots = append(w.boots, f[1])
	}
}

// Lines is how many lines arrived so far.
func (w *StreamWatch) Lines() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.lines
}

// Stop ends the stream and reports on it.
func (w *StreamWatch) Stop() StreamReport {
	end := time.Now()
	w.cancel()
	<-w.done
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.report(end)
}

// report judges what was seen up to end.
func (w *StreamWatch) report(end time.Time) StreamReport {
	r := StreamReport{Lines: w.lines, Duration: end.Sub(w.start), LongestGap: w.maxGap, GapTo: w.gapEnd,
		Boots: append([]string(nil), w.boots...)}
	if tail := end.Sub(w.last); tail > r.LongestGap {
		r.LongestGap, r.GapTo = tail, end
	}
	r.GapFrom = r.GapTo.Add(-r.LongestGap)
	switch tail := end.Sub(w.last); {
	case w.err != nil:
		r.Problem = w.err.Error()
	case w.lines == 0:
		r.Problem = "no line arrived"
	case tail > MaxSilence:
		r.Problem = fmt.Sprintf("no line for the last %s of the stream (%d lines; the guest stopped delivering)", tail.Round(time.Millisecond), w.lines)
	case len(w.boots) > 1:
		r.Problem = fmt.Sprintf("the guest rebooted during the stream (boot ids %v)", w.boots)
	}
	r.Intact = r.Problem == ""
	return r
}
