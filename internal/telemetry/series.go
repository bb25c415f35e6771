// Package telemetry keeps what a host samples about itself and its guests:
// bounded, downsampled histories that forecasts and risk models read.
//
// The history is embedded and needs nothing else: each series holds a fixed
// number of points; when it fills, neighbouring points are merged where the
// history is old, so the recent past stays at full resolution and the
// distant past at a coarser one, and memory never grows.
package telemetry

import (
	"math"
	"sort"
	"sync"
	"time"
)

// Point is one sample.
type Point struct {
	T time.Time `json:"t"`
	V float64   `json:"v"`
}

// DefaultCapacity is how many points a series keeps unless told otherwise.
const DefaultCapacity = 512

// Series is a bounded history of one signal. The zero value is not usable:
// make one with NewSeries.
type Series struct {
	cap    int
	points []Point
	weight []int // how many samples each point stands for
}

// NewSeries returns an empty series of at most capacity points (at least 8).
func NewSeries(capacity int) *Series {
	if capacity < 8 {
		capacity = 8
	}
	return &Series{cap: capacity, points: make([]Point, 0, capacity), weight: make([]int, 0, capacity)}
}

// Add appends a sample; a sample older than the last is dropped, as the
// history only moves forward.
func (s *Series) Add(p Point) {
	if n := len(s.points); n > 0 && !p.T.After(s.points[n-1].T) {
		return
	}
	if len(s.points) == s.cap {
		s.compact()
	}
	s.points = append(s.points, p)
	s.weight = append(s.weight, 1)
}

// compact frees one place by merging two neighbouring points into one at
// their weighted mean time and value: the pair whose combined weight is
// smallest for its age, so that each point comes to stand for a stretch of
// time in proportion to how long ago it was. The recent past stays sharp,
// the distant past is kept coarsely, and the span a full series covers
// grows geometrically with its capacity.
func (s *Series) compact() {
	newest := s.points[len(s.points)-1].T
	best, bestScore := 0, math.Inf(1)
	for i := 0; i+1 < len(s.points)-1; i++ {
		age := newest.Sub(s.points[i+1].T).Seconds()
		if score := float64(s.weight[i]+s.weight[i+1]) / math.Max(age, 1e-3); score < bestScore {
			best, bestScore = i, score
		}
	}
	a, b := s.points[best], s.points[best+1]
	wa, wb := float64(s.weight[best]), float64(s.weight[best+1])
	f := wb / (wa + wb)
	s.points[best] = Point{T: a.T.Add(time.Duration(float64(b.T.Sub(a.T)) * f)), V: a.V + (b.V-a.V)*f}
	s.weight[best] += s.weight[best+1]
	s.points = append(s.points[:best+1], s.points[best+2:]...)
	s.weight = append(s.weight[:best+1], s.weight[best+2:]...)
}

// Since returns a copy of the points at or after t.
func (s *Series) Since(t time.Time) []Point {
	i := sort.Search(len(s.points), func(i int) bool { return !s.points[i].T.Before(t) })
	return append([]Point(nil), s.points[i:]...)
}

// Len is the number of points held.
func (s *Series) Len() int { return len(s.points) }

// History is a set of named series, safe for concurrent use.
type History struct {
	mu       sync.Mutex
	capacity int
	series   map[string]*Series
}

// NewHistory returns an empty history whose series hold capacity points
// each (DefaultCapacity when zero).
func NewHistory(capacity int) *History {
	if capacity <= 0 {
		capacity = DefaultCapacity
	}
	return &History{capacity: capacity, series: map[string]*Series{}}
}

// Add appends a sample to the named series, creating it if needed.
func (h *History) Add(name string, p Point) {
	h.mu.Lock()
	defer h.mu.Unlock()
	s := h.series[name]
	if s == nil {
		s = NewSeries(h.capacity)
		h.series[name] = s
	}
	s.Add(p)
}

// Since returns the points of the named series at or after t.
func (h *History) Since(name string, t time.Time) []Point {
	h.mu.Lock()
	defer h.mu.Unlock()
	if s := h.series[name]; s != nil {
		return s.Since(t)
	}
	return nil
}

// Names returns the names of the series held, sorted.
func (h *History) Names() []string {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]string, 0, len(h.series))
	for n := range h.series {
		out = append(out, n)
	}
	sort.Strings(out)
	return out
}

// Forget drops the series whose last point is older than t (a NIC or disk
// that went away).
func (h *History) Forget(t time.Time) {
	h.mu.Lock()
	defer h.mu.Unlock()
	for n, s := range h.series {
		if len(s.points) == 0 || s.points[len(s.points)-1].T.Before(t) {
			delete(h.series, n)
		}
	}
}
