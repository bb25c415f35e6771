// Package healthtrace holds synthetic health traces of hosts: what a host's
// sysfs files and SMART answers say over time as it heads for a failure, or
// as it stays healthy while looking busy. A Player writes one trace, step by
// step, under a host's health root (package health reads it there), so that
// the predictive benchmark and tests can feed each testbed or simulated host
// its own hardware story.
//
// The traces are compressed in time: a failure that builds over hours on a
// real host builds over a couple of minutes here, and the risk model's
// horizon is shortened in proportion. Their shapes follow what operators
// report before failures (a thermal runaway, a storm of correctable memory
// errors, sectors reallocated faster and faster, a link flapping more and
// more, I/O errors, an uncorrectable error shortly before the crash) and
// the busy-but-healthy patterns that a naive threshold mistakes for them
// (noise, a warm-up that levels off, a steady trickle of corrected errors,
// one burst of NIC errors, a host that runs hot but steady).
package healthtrace

import (
	"encoding/json"
	"fmt"
	"math"
	"math/rand"
	"os"
	"path/filepath"
	"time"

	"github.com/ferryvm/ferry/internal/health"
)

// TripC is the critical trip point of every trace's thermal zone, and
// HwmonCritC its hwmon sensor's critical temperature, in °C.
const (
	TripC      = 90
	HwmonCritC = 95
)

// Compression is how much faster than real time the traces run: 150 s of
// trace are 100 minutes of a real host's life. Counters' rates are stated
// in real time (errors a minute, as the risk model's limits are) and
// counted Compression times faster; a risk model judging these traces must
// be told (predict.RiskConfig.TimeScale) and given a horizon shortened as
// much (45 s for 30 minutes).
const Compression = 40

// State is what a host's hardware says at one moment: levels for gauges,
// rates a minute of real time for counters, totals for alarms.
type State struct {
	Zone, Hwmon, DiskTemp float64 // °C
	CEPerMin              float64 // correctable memory errors
	UE                    float64 // uncorrectable memory errors so far
	IOErrPerMin           float64 // block I/O errors
	SectorsPerMin         float64 // SMART reallocated sectors
	SMARTFailed           bool
	FlapsPerMin           float64 // NIC carrier changes
	RxErrBurst            float64 // NIC receive errors in this step
}

// Trace is one host's story.
type Trace struct {
	Name string
	// Failing traces end with the host's death at DiesAt (trace time);
	// healthy ones run as long and the host lives.
	Failing bool
	DiesAt  time.Duration
	// HeldOut traces were never looked at while the model and its limits
	// were chosen; their figures are reported apart.
	HeldOut bool
	// Story says what the trace shows, for reports.
	Story string
	at    func(t, d float64, rng *rand.Rand) State
}

// Length is how long a trace runs: its death, or as long for healthy ones.
const Length = 150 * time.Second

// baseline is a healthy host: temperatures that wobble a little, nothing
// counting.
func baseline(rng *rand.Rand) State {
	return State{Zone: 45 + 2*rng.NormFloat64(), Hwmon: 50 + 2*rng.NormFloat64(), DiskTemp: 35 + rng.NormFloat64()}
}

// All returns every trace, tuning ones first.
func All() []Trace {
	return []Trace{
		{Name: "thermal-runaway", Failing: true, DiesAt: Length, Story: "a thermal zone heats steadily to past its trip point",
			at: func(t, d float64, rng *rand.Rand) State {
				s := baseline(rng)
				s.Zone = 50 + (TripC+2-50)*t/d + 1.5*rng.NormFloat64()
				return s
			}},
		{Name: "ce-storm", Failing: true, DiesAt: Length, Story: "correctable memory errors multiply (exponentially, to 27 a minute) until the DIMM fails",
			at: func(t, d float64, rng *rand.Rand) State {
				s := baseline(rng)
				s.CEPerMin = 0.3 * math.Exp(4.5*t/d)
				return s
			}},
		{Name: "disk-sectors", Failing: true, DiesAt: Length, Story: "a disk reallocates sectors faster and faster (to 3 a minute)",
			at: func(t, d float64, rng *rand.Rand) State {
				s := baseline(rng)
				s.SectorsPerMin = 3 * t / d
				return s
			}},
		{Name: "nic-flaps", Failing: true, DiesAt: Length, Story: "the underlay link flaps more and more often (to 6 a minute) until it stays down",
			at: func(t, d float64, rng *rand.Rand) State {
				s := baseline(rng)
				s.FlapsPerMin = 6 * t / d
				return s
			}},
		{Name: "noisy-flat", Story: "temperatures that swing widely around a safe level",
			at: func(t, d float64, rng *rand.Rand) State {
				s := baseline(rng)
				s.Zone = 50 + 6*rng.NormFloat64()
				return s
			}},
		{Name: "warm-plateau", Story: "a warm-up under load that levels off well below the trip point",
			at: func(t, d float64, rng *rand.Rand) State {
				s := baseline(rng)
				s.Zone = 45 + 25*math.Min(t/(d*2/3), 1) + rng.NormFloat64()
				return s
			}},
		{Name: "steady-ce", Story: "a steady trickle of corrected memory errors (2 a minute)",
			at: func(t, d float64, rng *rand.Rand) State {
				s := baseline(rng)
				s.CEPerMin = 2
				return s
			}},
		{Name: "nic-burst", Story: "one burst of 100 receive errors (a cable reseated), then nothing",
			at: func(t, d float64, rng *rand.Rand) State {
				s := baseline(rng)
				if t >= d/2 && t < d/2+1 {
					s.RxErrBurst = 100
				}
				return s
			}},
		// Held out: not looked at while choosing the model.
		{Name: "hwmon-accelerating", Failing: true, DiesAt: Length, HeldOut: true, Story: "a sensor's temperature rises ever faster (quadratically) past its critical value",
			at: func(t, d float64, rng *rand.Rand) State {
				s := baseline(rng)
				s.Hwmon = 50 + (HwmonCritC+3-50)*(t/d)*(t/d) + rng.NormFloat64()
				return s
			}},
		{Name: "ue-then-death", Failing: true, DiesAt: Length, HeldOut: true, Story: "an uncorrectable memory error, then the crash 50 s later",
			at: func(t, d float64, rng *rand.Rand) State {
				s := baseline(rng)
				if t >= d-50 {
					s.UE = 1
				}
				return s
			}},
		{Name: "io-errors", Failing: true, DiesAt: Length, HeldOut: true, Story: "a disk's I/O errors grow from none to 4 a minute",
			at: func(t, d float64, rng *rand.Rand) State {
				s := baseline(rng)
				s.IOErrPerMin = 4 * t / d
				return s
			}},
		{Name: "hot-steady", HeldOut: true, Story: "a host that runs hot (80 °C) but steady",
			at: func(t, d float64, rng *rand.Rand) State {
				s := baseline(rng)
				s.Zone = 80 + 2*rng.NormFloat64()
				return s
			}},
		{Name: "sporadic-flaps", HeldOut: true, Story: "a link that flaps now and then (one every 2 minutes on average)",
			at: func(t, d float64, rng *rand.Rand) State {
				s := baseline(rng)
				s.FlapsPerMin = 0.5
				return s
			}},
	}
}

// Player writes a trace under one host's health root, step by step.
type Player struct {
	Trace Trace
	Root  string
	rng   *rand.Rand
	last  float64 // trace time of the last step, seconds
	// running totals of the counters
	ce, ioerr, sectors, flaps, rxerr float64
}

// NewPlayer prepares to write trace under root; seed makes its noise
// repeatable.
func NewPlayer(trace Trace, root string, seed int64) *Player {
	return &Player{Trace: trace, Root: root, rng: rand.New(rand.NewSource(seed))}
}

// Baseline returns a healthy trace, for hosts without a story.
func Baseline() Trace {
	return Trace{Name: "baseline", Story: "a healthy host", at: func(t, d float64, rng *rand.Rand) State { return baseline(rng) }}
}

// Step writes the host's state at trace time t.
func (p *Player) Step(t time.Duration) error {
	d := p.Trace.DiesAt.Seconds()
	if d == 0 {
		d = Length.Seconds()
	}
	now := t.Seconds()
	s := p.Trace.at(now, d, p.rng)
	dt := math.Max(now-p.last, 0)
	p.last = now
	// Counters advance by their expected count in the real time this step
	// stands for, drawn as Poisson.
	real := dt * Compression / 60 // minutes
	p.ce += poisson(p.rng, s.CEPerMin*real)
	p.ioerr += poisson(p.rng, s.IOErrPerMin*real)
	p.sectors += poisson(p.rng, s.SectorsPerMin*real)
	p.flaps += poisson(p.rng, s.FlapsPerMin*real)
	p.rxerr += s.RxErrBurst
	return p.write(s)
}

func (p *Player) write(s State) error {
	milli := func(c float64) string { return fmt.Sprint(int(c * 1000)) }
	files := map[string]string{
		"sys/class/thermal/thermal_zone0/temp":              milli(s.Zone),
		"sys/class/thermal/thermal_zone0/trip_point_0_type": "critical",
		"sys/class/thermal/thermal_zone0/trip_point_0_temp": milli(TripC),
		"sys/class/hwmon/hwmon0/temp1_input":                milli(s.Hwmon),
		"sys/class/hwmon/hwmon0/temp1_crit":                 milli(HwmonCritC),
		"sys/devices/system/edac/mc/mc0/ce_count":           fmt.Sprint(p.ce),
		"sys/devices/system/edac/mc/mc0/ue_count":           fmt.Sprint(s.UE),
		"sys/block/sda/device/ioerr_cnt":                    fmt.Sprintf("0x%x", int(p.ioerr)),
		"sys/class/net/eth0/carrier_changes":                fmt.Sprint(p.flaps),
		"sys/class/net/eth0/statistics/rx_errors":           fmt.Sprint(p.rxerr),
	}
	doc := map[string]any{
		"device":       map[string]any{"name": "/dev/sda"},
		"smart_status": map[string]any{"passed": !s.SMARTFailed},
		"ata_smart_attributes": map[string]any{"table": []any{
			map[string]any{"id": 5, "raw": map[string]any{"value": p.sectors}},
		}},
		"temperature": map[string]any{"current": math.Round(s.DiskTemp)},
	}
	b, err := json.Marshal(doc)
	if err != nil {
		return err
	}
	files[filepath.Join(health.SMARTDir, "sda.json")] = string(b)
	for rel, content := range files {
		path := filepath.Join(p.Root, rel)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			return err
		}
		// Written whole and renamed: a reader never sees half a file.
		tmp := path + ".tmp"
		if err := os.WriteFile(tmp, []byte(content+"\n"), 0o644); err != nil {
			return err
		}
		if err := os.Rename(tmp, path); err != nil {
			return err
		}
	}
	return nil
}

// poisson draws a Poisson count of mean m (Knuth's method for small means,
// a rounded normal for large ones).
func poisson(rng *rand.Rand, m float64) float64 {
	if m <= 0 {
		return 0
	}
	if m > 30 {
		return math.Max(0, math.Round(m+math.Sqrt(m)*rng.NormFloat64()))
	}
	l, k, p := math.Exp(-m), 0.0, 1.0
	for {
		p *= rng.Float64()
		if p <= l {
			return k
		}
		k++
	}
}
