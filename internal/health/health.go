// Package health reads the signals that tell a host is about to fail:
// correctable and uncorrectable memory errors (EDAC), disk health (SMART)
// and the block layer's I/O errors, NIC errors and link flaps, temperatures
// (thermal zones and hwmon sensors), and signals the agent itself observes:
// QEMU errors and how long lease renewals take.
//
// Every file-backed source reads under a configurable root ("/" on a real
// host), so tests and the testbed feed each host recorded or synthetic
// traces by writing files of the same layout under a directory of their
// own. The NIC counters are read from sysfs (/sys/class/net/*/statistics),
// the same counters netlink reports, because a file under a root can be
// replayed and a netlink socket cannot.
//
// Reading turns nothing into risk: that is the predict package's work,
// over the history the agent keeps of these readings.
package health

import (
	"context"
	"errors"
	"log/slog"
	"sort"
)

// Kind says how a signal's values are read over time.
type Kind int

const (
	// Counter values only grow (until a reset): what matters is the rate.
	Counter Kind = iota
	// Gauge values are levels: a temperature, a latency.
	Gauge
	// Alarm counters count events that are failures in themselves
	// (uncorrectable memory errors): any increase means the host is failing.
	Alarm
	// Fault values are states that are failures while non-zero (a failed
	// SMART self-assessment, an NVMe critical warning).
	Fault
)

// String names a kind for the API and the CLI.
func (k Kind) String() string {
	switch k {
	case Counter:
		return "counter"
	case Gauge:
		return "gauge"
	case Alarm:
		return "alarm"
	case Fault:
		return "fault"
	}
	return "unknown"
}

// Reading is one signal's value at one sampling.
type Reading struct {
	// Signal names the signal uniquely on its host, source first:
	// "edac/mc0/ce", "nic/eth0/rx_errors", "thermal/thermal_zone0".
	Signal string
	Kind   Kind
	Value  float64
	// Limit is the level (gauges) or rate per second (counters) at which
	// the component is failing, where the hardware states one (a thermal
	// zone's critical trip point, a sensor's crit value); zero leaves it
	// to the risk model's defaults for the source.
	Limit float64
	// Unit names the value's unit for people: "C", "s", "errors".
	Unit string
}

// Source is one kind of health signal on a host.
type Source interface {
	// Name is the source's name, the first element of its signals.
	Name() string
	// Read returns the source's current readings; a source the host does
	// not have returns none and no error.
	Read(ctx context.Context) ([]Reading, error)
}

// Reader reads every source of a host.
type Reader struct {
	Sources []Source
	Log     *slog.Logger
}

// NewReader returns a reader of the file-backed sources under root and of
// the agent's own signals in self (nil for none).
func NewReader(root string, self *Self, log *slog.Logger) *Reader {
	r := &Reader{Log: log, Sources: []Source{
		EDAC{Root: root}, Block{Root: root}, NewSMART(root), NIC{Root: root}, Thermal{Root: root},
	}}
	if self != nil {
		r.Sources = append(r.Sources, self)
	}
	return r
}

// Read returns the readings of every source, sorted by signal. A source that
// fails is logged and skipped: one broken sensor must not blind the others.
func (r *Reader) Read(ctx context.Context) []Reading {
	var all []Reading
	for _, s := range r.Sources {
		rs, err := s.Read(ctx)
		if err != nil {
			if errors.Is(err, context.Canceled) {
				return nil
			}
			if r.Log != nil {
				r.Log.Warn("reading a health source", "source", s.Name(), "err", err)
			}
			continue
		}
		all = append(all, rs...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i].Signal < all[j].Signal })
	return all
}
