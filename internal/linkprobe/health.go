package linkprobe

import (
	"fmt"
	"math"
	"slices"
	"time"
)

// The judgement of a link from its recent probes. A probe is one TCP
// handshake with the peer's API port; it is lost when no answer came
// within probeTimeout (a dropped SYN or SYN-ACK is sent again by the
// kernel only after a second). A handshake needs two packets through, so
// a loss rate f of handshakes means a packet loss of about 1-sqrt(1-f).
const (
	probesPerRound = 5
	probeGap       = 50 * time.Millisecond
	probeTimeout   = 900 * time.Millisecond
	// window is how many recent probes a link is judged on.
	window = 60
	// A link is degraded at lossDegraded (percent of packets, once
	// minLossSamples probes were made) or when its recent round trip is
	// more than latencyFactor times its own least plus latencySlack; it is
	// healthy again below lossHealthy and within the halved bounds.
	lossDegraded, lossHealthy = 2.0, 1.0
	minLossSamples            = 20
	// minLost is how many lost probes it takes to judge a link lossy: one
	// handshake that timed out (a busy host can stall a second) among 20
	// is 2.5 % packet loss, but no evidence of it.
	minLost       = 2
	latencyFactor = 2.0
	latencySlack  = 20 * time.Millisecond
	// recentProbes are the probes the recent round trip is the median of.
	recentProbes = 10
)

// probe is one handshake: its round trip, or lost.
type probe struct {
	rtt  time.Duration
	lost bool
}

// health is what the prober keeps of one link.
type health struct {
	probes   []probe // the newest window, oldest first
	baseline time.Duration
	degraded bool
	why      string
	since    time.Time
}

// figures are a link's health as reported.
type figures struct {
	rtt, jitter, baseline time.Duration
	lossPct               float64
	samples, lost         int
}

// add records a round of probes and judges the link again; it reports
// whether its state changed (degraded or healthy again).
func (h *health) add(ps []probe, now time.Time) (changed bool) {
	h.probes = append(h.probes, ps...)
	if len(h.probes) > window {
		h.probes = slices.Clone(h.probes[len(h.probes)-window:])
	}
	f := h.figures()
	if f.rtt > 0 && (h.baseline == 0 || f.rtt < h.baseline) {
		h.baseline = f.rtt
	}
	bad, why := h.judge(f)
	if bad != h.degraded {
		h.degraded, h.why = bad, why
		if bad {
			h.since = now
		} else {
			h.since = time.Time{}
		}
		return true
	}
	if bad {
		h.why = why
	}
	return false
}

// figures are the link's round trip (the median of the recent probes),
// jitter (the mean difference between successive answered probes), packet
// loss and how many probes they rest on.
func (h *health) figures() figures {
	var f figures
	var lost int
	var rtts []time.Duration
	var jit time.Duration
	var pairs int
	var prev time.Duration
	for _, p := range h.probes {
		if p.lost {
			lost++
			continue
		}
		if prev > 0 {
			jit += (p.rtt - prev).Abs()
			pairs++
		}
		prev = p.rtt
		rtts = append(rtts, p.rtt)
	}
	f.samples, f.lost = len(h.probes), lost
	if len(rtts) > 0 {
		recent := rtts[max(0, len(rtts)-recentProbes):]
		sorted := slices.Clone(recent)
		slices.Sort(sorted)
		f.rtt = sorted[len(sorted)/2]
	}
	if pairs > 0 {
		f.jitter = jit / time.Duration(pairs)
	}
	if f.samples > 0 {
		handshakes := float64(lost) / float64(f.samples)
		f.lossPct = 100 * (1 - math.Sqrt(1-handshakes))
	}
	f.baseline = h.baseline
	return f
}

// judge says whether figures show a degraded link, and why; a degraded
// link must come back well within the bounds to be healthy again.
func (h *health) judge(f figures) (bool, string) {
	lossBound, factor, slack := lossDegraded, latencyFactor, latencySlack
	if h.degraded {
		lossBound, factor, slack = lossHealthy, 1+(latencyFactor-1)/2, latencySlack/2
	}
	switch {
	case f.samples > 0 && f.rtt == 0:
		return true, fmt.Sprintf("no answer to its last %d probes", f.samples)
	case f.samples >= minLossSamples && f.lossPct >= lossBound && (h.degraded || f.lost >= minLost):
		return true, fmt.Sprintf("%.1f %% packet loss over its last %d probes", f.lossPct, f.samples)
	case f.rtt > 0 && h.baseline > 0 && float64(f.rtt) > factor*float64(h.baseline)+float64(slack):
		return true, fmt.Sprintf("round trip %s, its usual %s", f.rtt.Round(100*time.Microsecond), h.baseline.Round(100*time.Microsecond))
	}
	return false, ""
}
