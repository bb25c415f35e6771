package agent

import (
	"runtime"
	"time"

	"github.com/ferryvm/ferry/internal/metrics"
)

// Figures is this host's state for a metrics scrape: its guests by the
// phase it last reported, its memory and what its guests hold, its CPUs
// and load, its traffic by class. (Its links are the link prober's.)
func (a *Agent) Figures() metrics.HostFigures {
	f := metrics.HostFigures{Guests: map[string]int{}, CPUs: a.cfg.CPUs, MemoryBytes: int64(a.cfg.MemoryMiB) << 20, Load1: load1()}
	if f.CPUs == 0 {
		f.CPUs = runtime.NumCPU()
	}
	if f.MemoryBytes == 0 {
		f.MemoryBytes = int64(memTotalMiB()) << 20
	}
	if a.cfg.Overlay != nil {
		if t, err := a.cfg.Overlay.Traffic(); err == nil {
			f.Network = &metrics.NetworkFigures{UnderlaySent: t.UnderlaySent, UnderlayReceived: t.UnderlayReceived,
				OverlaySent: t.OverlaySent, OverlayReceived: t.OverlayReceived}
		}
	}
	for _, p := range a.PathStates() {
		f.Paths = append(f.Paths, metrics.PathFigures{Peer: p.Peer, Dev: p.Dev, Up: p.Up, RTT: time.Duration(p.RTTMS * float64(time.Millisecond))})
	}
	f.GuestCPU = map[string]time.Duration{}
	for _, in := range a.instances() {
		in.mu.Lock()
		name, pid := in.name, in.rec.PID
		in.mu.Unlock()
		if used, err := a.rt.CPUTime(pid); err == nil {
			f.GuestCPU[name] = used
		}
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	for _, ph := range a.phases {
		f.Guests[ph]++
	}
	for _, in := range a.vms {
		f.AllocatedBytes += int64(in.memoryMiB) << 20
	}
	for _, in := range a.incoming {
		f.AllocatedBytes += int64(in.memoryMiB) << 20
	}
	return f
}
