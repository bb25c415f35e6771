// Package linkemu emulates network links in user space: rate, delay,
// jitter and loss per direction between two hosts. The kernels of these
// machines have no netem (see ../shared/MACHINE-NOTES.md): tc can cap a
// rate and nftables can drop at random, but nothing in the kernel delays a
// frame. So each testbed host's underlay port is a TAP device in its
// namespace, the fabric's bridge has a TAP device for it, and a forwarder
// (this package, run by `ferry testbed`) carries every frame between the
// two — at once where no profile applies, through a link's queue where one
// does. The forwarder decides the link by the frame's IPv4 destination
// (ARP by its target), so a profile from A to B shapes everything A sends
// to B: control traffic, migration streams and the guests' overlay alike.
package linkemu

import (
	"fmt"
	"strconv"
	"strings"
	"time"
)

// Profile is what one direction of a link does to the frames it carries.
type Profile struct {
	// RateBits caps the link in bits per second (0: no cap).
	RateBits int64 `json:"rate_bits,omitempty"`
	// Delay is added to every frame, one way.
	Delay time.Duration `json:"delay,omitempty"`
	// Jitter varies the delay uniformly within ±Jitter; frames keep their
	// order (a later frame never overtakes an earlier one).
	Jitter time.Duration `json:"jitter,omitempty"`
	// Loss is the share of frames dropped at random, 0 to 1.
	Loss float64 `json:"loss,omitempty"`
	// Queue is the longest a frame may wait for the rate before it is
	// dropped instead (a bottleneck's buffer; 0: DefaultQueue).
	Queue time.Duration `json:"queue,omitempty"`
}

// DefaultQueue is a rate-capped link's buffer, in time at its rate.
const DefaultQueue = 100 * time.Millisecond

// Zero reports whether the profile changes nothing.
func (p Profile) Zero() bool { return p == Profile{} }

// Check refuses what no link can do.
func (p Profile) Check() error {
	switch {
	case p.RateBits < 0:
		return fmt.Errorf("rate %d bit/s is negative", p.RateBits)
	case p.RateBits > 0 && p.RateBits < 8000:
		return fmt.Errorf("rate %d bit/s is below 8 kbit/s, too slow to carry a frame a second", p.RateBits)
	case p.Delay < 0 || p.Jitter < 0 || p.Queue < 0:
		return fmt.Errorf("delay, jitter and queue cannot be negative")
	case p.Delay > 10*time.Second:
		return fmt.Errorf("delay %s is longer than 10 s", p.Delay)
	case p.Jitter > p.Delay:
		return fmt.Errorf("jitter %s is larger than the delay %s (a frame cannot leave before it arrived)", p.Jitter, p.Delay)
	case p.Loss < 0 || p.Loss > 1:
		return fmt.Errorf("loss %g is not between 0 and 100%%", p.Loss*100)
	}
	return nil
}

func (p Profile) String() string {
	if p.Zero() {
		return "unshaped"
	}
	var parts []string
	if p.RateBits > 0 {
		parts = append(parts, "rate "+FormatRate(p.RateBits))
	}
	if p.Delay > 0 {
		parts = append(parts, "delay "+p.Delay.String())
	}
	if p.Jitter > 0 {
		parts = append(parts, "jitter "+p.Jitter.String())
	}
	if p.Loss > 0 {
		parts = append(parts, "loss "+strconv.FormatFloat(p.Loss*100, 'g', 4, 64)+"%")
	}
	if p.Queue > 0 {
		parts = append(parts, "queue "+p.Queue.String())
	}
	return strings.Join(parts, ", ")
}

// ParseRate reads a rate in bits per second: a number with an optional
// SI suffix (k, M, G; "200M" is 200,000,000 bit/s) and an optional
// "bit"/"bps" ("200Mbit").
func ParseRate(s string) (int64, error) {
	t := strings.TrimSpace(s)
	t = strings.TrimSuffix(strings.TrimSuffix(t, "bit"), "bps")
	mult := 1.0
	if n := len(t); n > 0 {
		switch t[n-1] {
		case 'k', 'K':
			mult, t = 1e3, t[:n-1]
		case 'm', 'M':
			mult, t = 1e6, t[:n-1]
		case 'g', 'G':
			mult, t = 1e9, t[:n-1]
		}
	}
	v, err := strconv.ParseFloat(t, 64)
	if err != nil || v < 0 {
		return 0, fmt.Errorf("rate %q: want bits per second like 200M, 1.5G or 800k", s)
	}
	return int64(v * mult), nil
}

// FormatRate writes bits per second with an SI suffix.
func FormatRate(b int64) string {
	switch {
	case b >= 1e9 && b%1e7 == 0:
		return strconv.FormatFloat(float64(b)/1e9, 'g', 4, 64) + "Gbit/s"
	case b >= 1e6:
		return strconv.FormatFloat(float64(b)/1e6, 'g', 4, 64) + "Mbit/s"
	case b >= 1e3:
		return strconv.FormatFloat(float64(b)/1e3, 'g', 4, 64) + "kbit/s"
	}
	return strconv.FormatInt(b, 10) + "bit/s"
}

// ParseLoss reads a share of frames: "1%" or "0.01".
func ParseLoss(s string) (float64, error) {
	t := strings.TrimSpace(s)
	pct := strings.HasSuffix(t, "%")
	v, err := strconv.ParseFloat(strings.TrimSuffix(t, "%"), 64)
	if err != nil {
		return 0, fmt.Errorf("loss %q: want a share like 1%% or 0.01", s)
	}
	if pct {
		v /= 100
	}
	if v < 0 || v > 1 {
		return 0, fmt.Errorf("loss %q is not between 0 and 100%%", s)
	}
	return v, nil
}
