// Package simqemu simulates QEMU for the agent's unit tests and the control
// plane's scale benchmark: guest processes that start, pause, run, shut down
// and crash; QMP monitors that answer the commands Ferry sends and emit the
// events it reads; and live migrations between them — pre-copy with rounds,
// pause-before-switchover, post-copy with pause and recovery, cancels and
// broken streams. A migration's stream crosses a real socket (the source
// dials the URI its target listens on, through the agents' tunnel where
// they use it), so losing the link, a tunnel or a process breaks it as it
// would break QEMU's; what is sent over it is simulated.
//
// All simulated hosts share one World, so that a migration finds its target
// and a guest outlives its agent's restart; each host sees it through its
// own Runtime.
package simqemu

import (
	"context"
	"encoding/json"
	"fmt"
	"math"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/image"
	"github.com/ferryvm/ferry/internal/qemu"
)

// World holds every simulated QEMU process.
type World struct {
	// Version is the QEMU version every process greets with.
	Version qemu.Version
	// LaunchDelay is how long a launch takes (QEMU's start-up).
	LaunchDelay time.Duration

	// bandwidth holds the float64 bits of SetBandwidth's rate.
	bandwidth atomic.Uint64

	mu      sync.Mutex
	nextPid int
	procs   map[int]*Proc
	// byEndpoint holds the processes by "host endpoint" (guest probes).
	byEndpoint map[string][]*Proc
	sockets    map[string]*Proc // QMP socket path -> process
	// failLaunch makes the next launches of a guest (by name) fail.
	failLaunch map[string]string
	// stall holds the guests whose outgoing streams send nothing.
	stall map[string]bool
}

// NewWorld returns an empty world.
func NewWorld() *World {
	w := &World{Version: qemu.Version{Major: 10, Minor: 0, Micro: 2},
		nextPid: 100000, procs: map[int]*Proc{}, byEndpoint: map[string][]*Proc{}, sockets: map[string]*Proc{}, failLaunch: map[string]string{}, stall: map[string]bool{}}
	w.SetBandwidth(4 << 30)
	return w
}

// SetBandwidth sets how many bytes per second a simulated migration sends
// (default 4 GiB/s: a 256 MiB guest moves in ~60 ms). It may change while
// migrations run; they follow it from their next round.
func (w *World) SetBandwidth(bytesPerSec float64) {
	w.bandwidth.Store(math.Float64bits(bytesPerSec))
}

// Bandwidth is the rate SetBandwidth set.
func (w *World) Bandwidth() float64 {
	return math.Float64frombits(w.bandwidth.Load())
}

// Info is what a simulated QEMU reports about itself (qemu.Probe's answer).
func (w *World) Info() *api.QEMUInfo {
	return &api.QEMUInfo{Version: w.Version.String(), Package: "simulated",
		Machines: []string{"pc-i440fx-10.0"}, Aliases: map[string]string{"pc": "pc-i440fx-10.0"},
		Capabilities: []string{"auto-converge", "events", "multifd", "pause-before-switchover", "postcopy-preempt", "postcopy-ram"},
		Parameters: []string{"avail-switchover-bandwidth", "cpu-throttle-increment", "cpu-throttle-initial", "downtime-limit", "max-bandwidth",
			"max-cpu-throttle", "max-postcopy-bandwidth", "multifd-channels", "multifd-compression", "throttle-trigger-threshold",
			"tls-authz", "tls-creds", "tls-hostname", "zero-page-detection"},
		MultifdCompression: []string{"zstd", "zlib"}}
}

// FailLaunch makes the next launch of guest name fail with msg.
func (w *World) FailLaunch(name, msg string) {
	w.mu.Lock()
	w.failLaunch[name] = msg
	w.mu.Unlock()
}

// Stall makes a guest's outgoing migration stream send nothing (on) or go
// on again, as a link that silently drops every packet would.
func (w *World) Stall(uuid string, on bool) {
	w.mu.Lock()
	w.stall[uuid] = on
	w.mu.Unlock()
}

func (w *World) stalled(uuid string) bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.stall[uuid]
}

// Procs returns the live processes of a guest (by uuid), on any host.
func (w *World) Procs(uuid string) []*Proc {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []*Proc
	for _, p := range w.procs {
		if p.UUID == uuid && p.Alive() {
			out = append(out, p)
		}
	}
	return out
}

// All returns every live process.
func (w *World) All() []*Proc {
	w.mu.Lock()
	defer w.mu.Unlock()
	var out []*Proc
	for _, p := range w.procs {
		if p.Alive() {
			out = append(out, p)
		}
	}
	return out
}

// Runtime is one simulated host's view of the world; it implements the
// agent's Runtime.
type Runtime struct {
	w    *World
	Host string
}

// Runtime returns host's runtime.
func (w *World) Runtime(host string) *Runtime { return &Runtime{w: w, Host: host} }

// Launch starts a simulated QEMU: paused with -S, listening for a migration
// with -incoming defer (after migrate-incoming), else running.
func (r *Runtime) Launch(ctx context.Context, cfg *qemu.Config, logPath string) (int, error) {
	if err := cfg.Validate(); err != nil {
		return 0, err
	}
	w := r.w
	if w.LaunchDelay > 0 {
		select {
		case <-time.After(w.LaunchDelay):
		case <-ctx.Done():
			return 0, fmt.Errorf("qemu failed to start: %w", ctx.Err())
		}
	}
	w.mu.Lock()
	if msg, ok := w.failLaunch[cfg.Name]; ok {
		delete(w.failLaunch, cfg.Name)
		w.mu.Unlock()
		os.WriteFile(logPath, []byte("qemu-system-x86_64: "+msg+"\n"), 0o640)
		return 0, fmt.Errorf("qemu failed to start: exit status 1\n%s", msg)
	}
	if old := w.sockets[cfg.QMPSocket]; old != nil && old.Alive() {
		w.mu.Unlock()
		return 0, fmt.Errorf("qemu failed to start: socket %s in use", cfg.QMPSocket)
	}
	w.nextPid++
	p := newProc(w, w.nextPid, r.Host, cfg)
	w.procs[p.Pid] = p
	w.byEndpoint[p.Host+" "+p.Endpoint] = append(w.byEndpoint[p.Host+" "+p.Endpoint], p)
	w.sockets[cfg.QMPSocket] = p
	w.mu.Unlock()
	os.WriteFile(cfg.PidFile, []byte(fmt.Sprintf("%d\n", p.Pid)), 0o640)
	return p.Pid, nil
}

// Dial connects a monitor to the process listening on socket.
func (r *Runtime) Dial(ctx context.Context, socket string) (qemu.Monitor, error) {
	r.w.mu.Lock()
	p := r.w.sockets[socket]
	r.w.mu.Unlock()
	if p == nil || !p.Alive() {
		return nil, fmt.Errorf("qmp: dial %s: connection refused", socket)
	}
	return p.connect(), nil
}

// IsGuest reports whether pid is the live process of guest uuid.
func (r *Runtime) IsGuest(pid int, uuid string) bool {
	p := r.w.proc(pid)
	return p != nil && p.UUID == uuid && p.Alive()
}

// Kill ends a process at once (as SIGKILL does).
func (r *Runtime) Kill(ctx context.Context, pid int, uuid string) error {
	if p := r.w.proc(pid); p != nil && p.UUID == uuid {
		p.Crash()
	}
	return nil
}

// WaitGone waits until the process has exited.
func (r *Runtime) WaitGone(ctx context.Context, pid int, uuid string) error {
	p := r.w.proc(pid)
	if p == nil || p.UUID != uuid {
		return nil
	}
	select {
	case <-p.gone:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("qemu: pid %d still running: %w", pid, ctx.Err())
	}
}

// MakeDisk creates an empty file where the disk goes.
func (r *Runtime) MakeDisk(ctx context.Context, path string, sizeMiB int, backing, backingFmt string) error {
	return os.WriteFile(path, nil, 0o640)
}

// Flush does nothing: simulated disks hold nothing.
func (r *Runtime) Flush(path string) {}

// CreateTap, DeleteTap and PinMAC do nothing: simulated guests have no taps.
func (r *Runtime) CreateTap(name, bridge string, mtu int) error { return nil }

// DeleteTap implements the agent's Runtime.
func (r *Runtime) DeleteTap(name string) error { return nil }

// PinMAC implements the agent's Runtime.
func (r *Runtime) PinMAC(tap, mac string) error { return nil }

// SampleMemory is what the simulation says of the guest's memory
// (Proc.SetZeroShare; its other pages do not compress).
func (r *Runtime) SampleMemory(pid, memoryMiB int, again time.Duration) (qemu.MemorySample, error) {
	p := r.w.proc(pid)
	if p == nil || !p.Alive() {
		return qemu.MemorySample{}, fmt.Errorf("no qemu %d", pid)
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	return qemu.MemorySample{ZeroShare: p.zero, CompressRatio: 1, DirtyCompressRatio: 1}, nil
}

// CPUTime is the CPU time the simulated guest has used (Proc.SetCPU).
func (r *Runtime) CPUTime(pid int) (time.Duration, error) {
	p := r.w.proc(pid)
	if p == nil || !p.Alive() {
		return 0, fmt.Errorf("no qemu %d", pid)
	}
	return p.CPUTime(), nil
}

// CPUWait is how long the simulated guest has waited for its CPUs
// (Proc.SetWait).
func (r *Runtime) CPUWait(pid int) (time.Duration, error) {
	p := r.w.proc(pid)
	if p == nil || !p.Alive() {
		return 0, fmt.Errorf("no qemu %d", pid)
	}
	return p.CPUWait(), nil
}

// Probe answers for the guest whose endpoint this is: healthy while its
// CPUs run.
func (r *Runtime) Probe(ctx context.Context, endpoint string) *api.Guest {
	r.w.mu.Lock()
	var p *Proc
	for _, q := range r.w.byEndpoint[r.Host+" "+endpoint] {
		if q.Alive() {
			p = q
		}
	}
	r.w.mu.Unlock()
	if p == nil || !p.Running() {
		return &api.Guest{Healthy: false}
	}
	id, at := p.Boot()
	return &api.Guest{Healthy: true, BootID: id, UptimeS: time.Since(at).Seconds(), LastSeen: time.Now().UTC()}
}

func (w *World) proc(pid int) *Proc {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.procs[pid]
}

// endpointOf is the guest's HTTP endpoint from its command line: the
// user-mode port forward, or its overlay address.
func endpointOf(cfg *qemu.Config) string {
	if n := cfg.Net; n != nil {
		for _, f := range n.HostFwd {
			return fmt.Sprintf("%s:%d", f.HostAddr, f.HostPort)
		}
	}
	for _, f := range strings.Fields(cfg.Append) {
		if ip, ok := strings.CutPrefix(f, "ferry.ip="); ok {
			ip, _, _ = strings.Cut(ip, "/")
			return ip + ":80"
		}
	}
	return ""
}

// WriteImage puts a stand-in for the built-in tiny image in dir (what
// image.Find looks for): simulated guests boot nothing from it.
func WriteImage(dir string) error {
	d := filepath.Join(dir, "tiny")
	if err := os.MkdirAll(d, 0o755); err != nil {
		return err
	}
	m, _ := json.Marshal(image.Manifest{KernelPackage: "simulated", KernelVersion: "0", Built: time.Now().UTC()})
	for name, data := range map[string][]byte{"vmlinuz": nil, "initrd.img": nil, "manifest.json": m} {
		if err := os.WriteFile(filepath.Join(d, name), data, 0o644); err != nil {
			return err
		}
	}
	return nil
}
