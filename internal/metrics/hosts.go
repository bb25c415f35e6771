package metrics

import (
	"slices"
	"sort"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// HostFigures is what one host's agent reports at a scrape.
type HostFigures struct {
	// Guests counts this host's guests by phase (running, starting, ...).
	Guests map[string]int
	// MemoryBytes is what the host offers guests, AllocatedBytes what its
	// guests hold of it.
	MemoryBytes, AllocatedBytes int64
	CPUs                        int
	// Load1 is the host's one-minute load average.
	Load1 float64
	// Links are the host's last measurements of its paths to the others.
	Links []LinkFigures
	// Network is what the host's devices carried (nil: not known, e.g. a
	// host without the overlay).
	Network *NetworkFigures
	// GuestCPU is the CPU time each local guest's QEMU has used, by name.
	GuestCPU map[string]time.Duration
	// Paths are the host's underlay paths to each peer, when it has
	// several (package paths).
	Paths []PathFigures
}

// PathFigures is one underlay path from this host to a peer.
type PathFigures struct {
	Peer, Dev string
	Up        bool
	RTT       time.Duration // the last answer's
}

// NetworkFigures are byte counters of a host's traffic by class: all it
// sent and received on its underlay, and the guests' overlay share of it
// (encapsulation included). Migration streams are counted by
// ferry_migration_sent_bytes_total; the control plane is the rest.
type NetworkFigures struct {
	UnderlaySent, UnderlayReceived int64
	OverlaySent, OverlayReceived   int64
}

// LinkFigures is one path from this host to a peer.
type LinkFigures struct {
	Peer string
	RTT  time.Duration
	// Bandwidth is one TCP stream's rate, bytes per second (0: not
	// measured yet).
	Bandwidth float64
	// Loss is the share of packets the recent probes suggest were lost
	// (0..1), Jitter the mean difference of successive round trips, and
	// Degraded whether the link is judged degraded.
	Loss     float64
	Jitter   time.Duration
	Degraded bool
}

// RegisterHost adds a host whose figures each scrape reports (figures is
// called then); the returned function removes it (its agent stopped).
func RegisterHost(name string, figures func() HostFigures) (unregister func()) {
	hosts.mu.Lock()
	defer hosts.mu.Unlock()
	hosts.seq++
	id := hosts.seq
	hosts.by[id] = hostSource{name, figures}
	return func() {
		hosts.mu.Lock()
		defer hosts.mu.Unlock()
		delete(hosts.by, id)
	}
}

type hostSource struct {
	name    string
	figures func() HostFigures
}

// hostCollector asks every registered host for its figures at a scrape.
type hostCollector struct {
	mu  sync.Mutex
	seq int
	by  map[int]hostSource
}

var hosts = &hostCollector{by: map[int]hostSource{}}

var (
	descGuests    = prometheus.NewDesc("ferry_guests", "Guests on this host by phase (running, starting, stopping, stopped, failed, pending).", []string{"host", "state"}, nil)
	descMemory    = prometheus.NewDesc("ferry_host_memory_bytes", "Memory this host offers guests.", []string{"host"}, nil)
	descAllocated = prometheus.NewDesc("ferry_host_memory_allocated_bytes", "Memory this host's guests hold.", []string{"host"}, nil)
	descCPUs      = prometheus.NewDesc("ferry_host_cpus", "CPUs this host offers guests.", []string{"host"}, nil)
	descLoad      = prometheus.NewDesc("ferry_host_load1", "This host's one-minute load average.", []string{"host"}, nil)
	descRTT       = prometheus.NewDesc("ferry_link_rtt_seconds", "Round trip from this host to a peer, last measured (TCP handshake).", []string{"host", "peer"}, nil)
	descBandwidth = prometheus.NewDesc("ferry_link_bandwidth_bytes_per_second", "One TCP stream's rate from this host to a peer, last measured.", []string{"host", "peer"}, nil)
	descLoss      = prometheus.NewDesc("ferry_link_loss_ratio", "Packet loss from this host to a peer that its recent probes suggest (0..1).", []string{"host", "peer"}, nil)
	descJitter    = prometheus.NewDesc("ferry_link_jitter_seconds", "Mean difference between successive round trips from this host to a peer.", []string{"host", "peer"}, nil)
	descNetwork   = prometheus.NewDesc("ferry_network_bytes_total", "Bytes this host's devices carried: class underlay (everything to and from other hosts) or overlay (its guests' share of it, encapsulation included); direction sent or received.", []string{"host", "class", "direction"}, nil)
	descGuestCPU  = prometheus.NewDesc("ferry_guest_cpu_seconds_total", "CPU time a guest's QEMU process has used on this host (all its threads). Summed over hosts by vm, its rate is the guest's use wherever it ran; --metrics-source reads the guests' load histories from it.", []string{"host", "vm"}, nil)
	descPathUp    = prometheus.NewDesc("ferry_path_up", "1 while this host's underlay path (device) to a peer answers and carries traffic; 0 while it is withdrawn from the route.", []string{"host", "peer", "dev"}, nil)
	descPathRTT   = prometheus.NewDesc("ferry_path_rtt_seconds", "Round trip of the last probe that this host's underlay path (device) to a peer answered.", []string{"host", "peer", "dev"}, nil)
	descDegraded  = prometheus.NewDesc("ferry_link_degraded", "1 while the link from this host to a peer is judged degraded (lossy or slow); live moves avoid it.", []string{"host", "peer"}, nil)
)

// hostFamilies are the families hostCollector reports.
var hostFamilies = []string{"ferry_guests", "ferry_host_memory_bytes", "ferry_host_memory_allocated_bytes", "ferry_host_cpus",
	"ferry_host_load1", "ferry_link_rtt_seconds", "ferry_link_bandwidth_bytes_per_second", "ferry_link_loss_ratio",
	"ferry_link_jitter_seconds", "ferry_link_degraded", "ferry_network_bytes_total", "ferry_guest_cpu_seconds_total",
	"ferry_path_up", "ferry_path_rtt_seconds"}

// Describe implements prometheus.Collector.
func (c *hostCollector) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{descGuests, descMemory, descAllocated, descCPUs, descLoad, descRTT, descBandwidth, descLoss, descJitter, descDegraded, descNetwork, descGuestCPU, descPathUp, descPathRTT} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (c *hostCollector) Collect(ch chan<- prometheus.Metric) {
	c.mu.Lock()
	srcs := make([]hostSource, 0, len(c.by))
	for _, s := range c.by {
		srcs = append(srcs, s)
	}
	c.mu.Unlock()
	sort.Slice(srcs, func(i, j int) bool { return srcs[i].name < srcs[j].name })
	for _, s := range srcs {
		f := s.figures()
		for _, state := range guestStates {
			ch <- prometheus.MustNewConstMetric(descGuests, prometheus.GaugeValue, float64(f.Guests[state]), s.name, state)
		}
		for state, n := range f.Guests {
			if !slices.Contains(guestStates, state) {
				ch <- prometheus.MustNewConstMetric(descGuests, prometheus.GaugeValue, float64(n), s.name, state)
			}
		}
		ch <- prometheus.MustNewConstMetric(descMemory, prometheus.GaugeValue, float64(f.MemoryBytes), s.name)
		ch <- prometheus.MustNewConstMetric(descAllocated, prometheus.GaugeValue, float64(f.AllocatedBytes), s.name)
		ch <- prometheus.MustNewConstMetric(descCPUs, prometheus.GaugeValue, float64(f.CPUs), s.name)
		ch <- prometheus.MustNewConstMetric(descLoad, prometheus.GaugeValue, f.Load1, s.name)
		if n := f.Network; n != nil {
			for _, c := range []struct {
				class, dir string
				v          int64
			}{{"underlay", "sent", n.UnderlaySent}, {"underlay", "received", n.UnderlayReceived},
				{"overlay", "sent", n.OverlaySent}, {"overlay", "received", n.OverlayReceived}} {
				ch <- prometheus.MustNewConstMetric(descNetwork, prometheus.CounterValue, float64(c.v), s.name, c.class, c.dir)
			}
		}
		for _, p := range f.Paths {
			up := 0.0
			if p.Up {
				up = 1
			}
			ch <- prometheus.MustNewConstMetric(descPathUp, prometheus.GaugeValue, up, s.name, p.Peer, p.Dev)
			ch <- prometheus.MustNewConstMetric(descPathRTT, prometheus.GaugeValue, p.RTT.Seconds(), s.name, p.Peer, p.Dev)
		}
		for vm, used := range f.GuestCPU {
			ch <- prometheus.MustNewConstMetric(descGuestCPU, prometheus.CounterValue, used.Seconds(), s.name, vm)
		}
		for _, l := range f.Links {
			ch <- prometheus.MustNewConstMetric(descRTT, prometheus.GaugeValue, l.RTT.Seconds(), s.name, l.Peer)
			ch <- prometheus.MustNewConstMetric(descLoss, prometheus.GaugeValue, l.Loss, s.name, l.Peer)
			ch <- prometheus.MustNewConstMetric(descJitter, prometheus.GaugeValue, l.Jitter.Seconds(), s.name, l.Peer)
			degraded := 0.0
			if l.Degraded {
				degraded = 1
			}
			ch <- prometheus.MustNewConstMetric(descDegraded, prometheus.GaugeValue, degraded, s.name, l.Peer)
			if l.Bandwidth > 0 {
				ch <- prometheus.MustNewConstMetric(descBandwidth, prometheus.GaugeValue, l.Bandwidth, s.name, l.Peer)
			}
		}
	}
}

// guestStates are the phases ferry_guests always reports (0 where none),
// so that a dashboard's series do not come and go.
var guestStates = []string{"pending", "starting", "running", "stopping", "stopped", "failed"}
