package agent

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/qemu"
	"github.com/ferryvm/ferry/internal/tunnel"
)

// runtimeRecord is what the agent keeps on disk about a running guest so a
// restarted agent can find and re-attach to it.
type runtimeRecord struct {
	UUID      string    `json:"uuid"`
	PID       int       `json:"pid"`
	QMP       string    `json:"qmp"`
	Console   string    `json:"console"`
	Endpoint  string    `json:"endpoint,omitempty"`
	Tap       string    `json:"tap,omitempty"`
	StartSeq  int64     `json:"start_seq"`
	MemoryMiB int       `json:"memory_mib"`
	Accel     string    `json:"accel"`
	Started   time.Time `json:"started"`
	// QEMUVersion is the version of the QEMU process (from its QMP
	// greeting): after an upgrade of the binary, re-attached guests still
	// run in the old one.
	QEMUVersion string `json:"qemu_version,omitempty"`
	// Incoming marks the target QEMU of a migration that has not been
	// resumed yet: a restarted agent resumes it only if this host owns the
	// VM and the stream completed, and kills it otherwise.
	Incoming    bool   `json:"incoming,omitempty"`
	MigrationID string `json:"migration_id,omitempty"`
	MAC         string `json:"mac,omitempty"`
	// HA marks a guest that is fenced when this host loses its lease.
	HA bool `json:"ha,omitempty"`
	// Restarts is how often this guest was restarted here after exiting
	// on its own (HA self-healing).
	Restarts int `json:"restarts,omitempty"`
}

// instance is a QEMU process this agent runs (or re-attached to).
type instance struct {
	name      string
	rec       runtimeRecord
	memoryMiB int
	qmp       qemu.QMP
	ownerRev  int64
	// migrationID is the migration this QEMU is the target (or source) of.
	migrationID string
	// migEvents carries MIGRATION event statuses to the migration driver so
	// it reacts at once.
	migEvents chan string
	steps     []api.MigrationEvent // the source's timeline, written once at the end
	// preparedFor is the migration this source QEMU was configured for
	// (capabilities, parameters, the stream's source end), and when.
	preparedFor string
	preparedAt  time.Time
	// incoming: this is a migration target not yet resumed; resumed: the
	// target has been checked for ownership and its CPUs run.
	incoming  bool
	resumed   bool
	mac       string
	resumedAt time.Time
	// For a migration's timeline, as QEMU timestamps its events: when the
	// guest last stopped (a source's switchover), when the stream had fully
	// arrived (a target), and when the target took ownership (guarded by mu).
	stoppedAt, streamDoneAt, takenOverAt time.Time
	ha                                   bool // fenced with the host's lease; restarted elsewhere by the HA manager
	// The ends of the agents' migration tunnel this guest's QEMU streams
	// through, while it migrates (guarded by mu).
	srcTunnel *tunnel.Source
	tgtTunnel *tunnel.Target
	// memory is the guest's memory use as last measured (guarded by mu).
	memory *api.MemoryLoad

	mu         sync.Mutex
	expectExit bool   // the agent asked it to stop
	exitReason string // from the SHUTDOWN event
	watchdog   bool   // a WATCHDOG event was seen
	fenced     bool   // killed by self-fencing
	// unhealthySince is when the guest's health check started failing.
	unhealthySince time.Time
	// healthTook are how long its last answered health checks took,
	// newest last (guarded by mu).
	healthTook []time.Duration
	guest      *api.Guest
	gone       chan struct{} // closed once QEMU has exited
	detached   chan struct{} // closed when the agent lets go without stopping it
}

func (a *Agent) recordPath(name string) string { return filepath.Join(a.vmDir(name), "runtime.json") }

func (a *Agent) saveRecord(name string, r runtimeRecord) error {
	b, _ := json.MarshalIndent(r, "", "  ")
	tmp := a.recordPath(name) + ".tmp"
	if err := os.WriteFile(tmp, b, 0o640); err != nil {
		return err
	}
	return os.Rename(tmp, a.recordPath(name))
}

// reattach adopts guests that a previous agent on this host started.
func (a *Agent) reattach(ctx context.Context) {
	dirs, _ := filepath.Glob(filepath.Join(a.cfg.DataDir, "vms", "*", "runtime.json"))
	for _, p := range dirs {
		name := filepath.Base(filepath.Dir(p))
		var r runtimeRecord
		b, err := os.ReadFile(p)
		if err != nil || json.Unmarshal(b, &r) != nil {
			continue
		}
		if !a.rt.IsGuest(r.PID, r.UUID) {
			a.log.Info("guest from a previous run is gone", "vm", name, "pid", r.PID)
			os.Remove(p)
			continue
		}
		cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		c, err := a.rt.Dial(cctx, r.QMP)
		cancel()
		if err != nil {
			a.log.Error("cannot re-attach to running guest", "vm", name, "pid", r.PID, "err", err)
			continue
		}
		in := &instance{name: name, rec: r, memoryMiB: r.MemoryMiB, qmp: qemu.QMP{Monitor: c}, ha: r.HA, gone: make(chan struct{}), detached: make(chan struct{}),
			migEvents: make(chan string, 16), mac: r.MAC, migrationID: r.MigrationID, incoming: r.Incoming}
		a.mu.Lock()
		if r.Incoming {
			a.incoming[name] = in
		} else {
			a.vms[name] = in
		}
		a.mu.Unlock()
		go a.monitor(in)
		a.log.Info("re-attached to running guest", "vm", name, "pid", r.PID, "incoming_migration", r.Incoming)
		a.queue.add(name)
	}
}

// monitor follows a guest's QMP events until QEMU exits (or the agent
// detaches), then asks for the VM to be reconciled.
func (a *Agent) monitor(in *instance) {
	for ev := range in.qmp.Events() {
		switch ev.Name {
		case "SHUTDOWN":
			var d struct {
				Guest  bool   `json:"guest"`
				Reason string `json:"reason"`
			}
			json.Unmarshal(ev.Data, &d)
			in.mu.Lock()
			in.exitReason = d.Reason
			in.mu.Unlock()
		case "STOP":
			in.mu.Lock()
			in.stoppedAt = eventTime(ev)
			in.mu.Unlock()
		case "MIGRATION":
			var d struct {
				Status string `json:"status"`
			}
			json.Unmarshal(ev.Data, &d)
			select {
			case in.migEvents <- d.Status:
			default:
			}
			in.mu.Lock()
			// Post-copy: the guest runs on the target while its pages
			// still arrive, as soon as the device state has (ownership
			// moves when the target takes it over).
			fast := in.incoming && (d.Status == "completed" || d.Status == "postcopy-active")
			if fast && in.streamDoneAt.IsZero() {
				in.streamDoneAt = eventTime(ev)
			}
			in.mu.Unlock()
			if fast {
				// Resume at once: every millisecond here is guest downtime.
				go a.resumeIncoming(context.Background(), in)
			}
			a.queue.add(in.name)
		case "WATCHDOG":
			in.mu.Lock()
			in.watchdog = true
			in.mu.Unlock()
			a.log.Warn("guest watchdog fired", "vm", in.name)
		}
	}
	select {
	case <-in.detached:
		return
	default:
	}
	// The QMP connection ended: QEMU exited or is about to.
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	err := a.rt.WaitGone(ctx, in.rec.PID, in.rec.UUID)
	cancel()
	if err != nil {
		a.log.Error("QMP connection lost but QEMU still runs; killing it", "vm", in.name, "pid", in.rec.PID)
		kctx, kcancel := context.WithTimeout(context.Background(), 10*time.Second)
		a.rt.Kill(kctx, in.rec.PID, in.rec.UUID)
		kcancel()
	}
	close(in.gone)
	a.queue.add(in.name)
}

// eventTime is when QEMU says an event happened (its own clock, to the
// microsecond), or now if it did not say.
func eventTime(ev qemu.Event) time.Time {
	if ev.Timestamp.IsZero() {
		return time.Now()
	}
	return ev.Timestamp
}

func (in *instance) alive() bool {
	select {
	case <-in.gone:
		return false
	default:
		return true
	}
}

// detach lets go of a guest without stopping it (agent shutdown).
func (in *instance) detach() {
	select {
	case <-in.detached:
	default:
		close(in.detached)
	}
	in.qmp.Close()
}

// exitSummary describes why an exited guest stopped, for its status.
func (in *instance) exitSummary() (phase, msg string) {
	in.mu.Lock()
	defer in.mu.Unlock()
	switch {
	case in.watchdog:
		return api.PhaseFailed, "the guest's watchdog fired and QEMU stopped it"
	case in.exitReason == "guest-shutdown":
		return api.PhaseStopped, "the guest shut itself down"
	case in.exitReason == "guest-reset" || in.exitReason == "guest-panic":
		return api.PhaseFailed, "the guest reset or panicked (" + in.exitReason + ")"
	case in.exitReason != "":
		return api.PhaseFailed, "QEMU shut down unexpectedly (" + in.exitReason + ")"
	default:
		return api.PhaseFailed, "QEMU exited unexpectedly"
	}
}

// freePort picks a free TCP port on addr for a user-mode port forward.
func freePort(addr string) (int, error) {
	l, err := net.Listen("tcp", net.JoinHostPort(addr, "0"))
	if err != nil {
		return 0, fmt.Errorf("no free port on %s: %w", addr, err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// healthChecks is how many answered health checks a guest's service time
// is the median of.
const healthChecks = 10

// tookHealth records how long an answered health check took (in.mu held).
func (in *instance) tookHealth(d time.Duration) {
	if len(in.healthTook) == healthChecks {
		in.healthTook = append(in.healthTook[:0], in.healthTook[1:]...)
	}
	in.healthTook = append(in.healthTook, d)
}

// healthMedianMS is the median of the last health checks' times in
// milliseconds, 0 before any (in.mu held).
func (in *instance) healthMedianMS() float64 {
	if len(in.healthTook) == 0 {
		return 0
	}
	d := slices.Clone(in.healthTook)
	slices.Sort(d)
	return float64(d[len(d)/2].Microseconds()) / 1000
}
