package simqemu

import (
	"context"
	"encoding/json"
	"fmt"
	"sync"
	"time"

	"github.com/ferryvm/ferry/internal/qemu"
	"github.com/google/uuid"
)

// Proc is one simulated QEMU process.
type Proc struct {
	w                          *World
	Pid                        int
	UUID, Name, Host, Endpoint string
	Machine                    string
	MemoryMiB                  int
	gone                       chan struct{}
	autostart                  bool // no -S: the CPUs run once the guest is in

	mu     sync.Mutex
	bootID string    // the guest's boot: a live migration carries it over
	booted time.Time // when that boot happened
	state  string    // QEMU's run state: prelaunch, running, paused, inmigrate, postmigrate, shutdown
	exited bool
	mons   []*monitor
	caps   map[string]bool
	params map[string]any
	mig    *migration // the current or last migration, either side
	dirty  float64    // bytes/s the guest dirties (0: idle)
	zero   float64    // share of its memory that is zeros
	// cpu is how many CPUs the guest uses (SetCPU) since cpuAt, and
	// cpuUsed what it used before.
	cpu     float64
	cpuAt   time.Time
	cpuUsed time.Duration
	// wait is how many CPUs' worth of time the guest waits for a CPU
	// (SetWait; a contended host) since waitAt, and waited before. It
	// is the host's doing: a guest that migrates leaves it behind.
	wait   float64
	waitAt time.Time
	waited time.Duration
	// calc is a dirty-rate measurement: when it began and for how long.
	calcAt   time.Time
	calcSecs int64
}

func newProc(w *World, pid int, host string, cfg *qemu.Config) *Proc {
	p := &Proc{w: w, Pid: pid, UUID: cfg.UUID, Name: cfg.Name, Host: host, Endpoint: endpointOf(cfg), Machine: cfg.Machine,
		MemoryMiB: cfg.MemoryMiB, bootID: uuid.NewString(), booted: time.Now(), gone: make(chan struct{}),
		autostart: !cfg.Paused, caps: map[string]bool{}, params: map[string]any{"downtime-limit": int64(300)}}
	switch {
	case cfg.Incoming != "":
		p.state = "inmigrate"
	case cfg.Paused:
		p.state = "prelaunch"
	default:
		p.state = "running"
	}
	return p
}

// Alive reports whether the process has not exited.
func (p *Proc) Alive() bool {
	select {
	case <-p.gone:
		return false
	default:
		return true
	}
}

// Running reports whether the guest's CPUs run.
func (p *Proc) Running() bool {
	p.mu.Lock()
	defer p.mu.Unlock()
	return !p.exited && p.state == "running"
}

// State is the process's run state.
func (p *Proc) State() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state
}

// SetDirty makes the guest dirty bytesPerSec of its memory (a busy guest:
// its migration needs more rounds, or never converges).
func (p *Proc) SetDirty(bytesPerSec float64) {
	p.mu.Lock()
	p.dirty = bytesPerSec
	p.mu.Unlock()
}

// SetZeroShare says which share of the guest's memory is zeros.
func (p *Proc) SetZeroShare(z float64) {
	p.mu.Lock()
	p.zero = z
	p.mu.Unlock()
}

// Crash ends the process at once, as SIGKILL or a QEMU crash does.
func (p *Proc) Crash() { p.exit("") }

// exit ends the process, with a SHUTDOWN event first if reason is set.
func (p *Proc) exit(reason string) {
	p.mu.Lock()
	if p.exited {
		p.mu.Unlock()
		return
	}
	if reason != "" {
		p.emitLocked("SHUTDOWN", map[string]any{"guest": reason != "host-qmp-quit", "reason": reason})
	}
	p.exited, p.state = true, "shutdown"
	mons, mig := p.mons, p.mig
	p.mons = nil
	p.mu.Unlock()
	if mig != nil {
		mig.procExited(p)
	}
	close(p.gone)
	for _, m := range mons {
		m.close()
	}
}

// setState changes the run state and emits STOP or RESUME (mu held).
func (p *Proc) setStateLocked(s string) {
	was := p.state == "running"
	p.state = s
	switch now := s == "running"; {
	case was && !now:
		p.emitLocked("STOP", nil)
	case !was && now:
		p.emitLocked("RESUME", nil)
	}
}

// emitLocked sends an event to every connected monitor (mu held).
func (p *Proc) emitLocked(name string, data any) {
	ev := qemu.Event{Name: name, Timestamp: time.Now()}
	if data != nil {
		ev.Data, _ = json.Marshal(data)
	}
	for _, m := range p.mons {
		select {
		case m.events <- ev:
		default:
		}
	}
}

func (p *Proc) emit(name string, data any) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.emitLocked(name, data)
}

// connect attaches a new QMP monitor.
func (p *Proc) connect() *monitor {
	m := &monitor{p: p, events: make(chan qemu.Event, 256), done: make(chan struct{})}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.exited {
		m.close()
		return m
	}
	p.mons = append(p.mons, m)
	return m
}

// monitor is a simulated QMP connection; it implements qemu.Monitor.
type monitor struct {
	p      *Proc
	events chan qemu.Event
	once   sync.Once
	done   chan struct{}
}

func (m *monitor) close() {
	m.once.Do(func() {
		close(m.done)
		close(m.events)
	})
}

func (m *monitor) Events() <-chan qemu.Event { return m.events }

func (m *monitor) Version() qemu.Version { return m.p.w.Version }

func (m *monitor) Close() error {
	p := m.p
	p.mu.Lock()
	for i, x := range p.mons {
		if x == m {
			p.mons = append(p.mons[:i], p.mons[i+1:]...)
			break
		}
	}
	p.mu.Unlock()
	m.close()
	return nil
}

// Execute runs a QMP command against the simulated process.
func (m *monitor) Execute(ctx context.Context, cmd string, args any, out any) error {
	select {
	case <-m.done:
		return qemu.ErrClosed
	default:
	}
	var a map[string]any
	if args != nil {
		b, _ := json.Marshal(args)
		json.Unmarshal(b, &a)
	}
	ret, err := m.p.command(cmd, a)
	if err != nil {
		return fmt.Errorf("%s: %w", cmd, err)
	}
	if out != nil && ret != nil {
		b, _ := json.Marshal(ret)
		return json.Unmarshal(b, out)
	}
	return nil
}

func qmpErr(format string, args ...any) error {
	return &qemu.QMPError{Class: "GenericError", Desc: fmt.Sprintf(format, args...)}
}

// command carries out one QMP command.
func (p *Proc) command(cmd string, a map[string]any) (any, error) {
	switch cmd {
	case "query-status":
		p.mu.Lock()
		defer p.mu.Unlock()
		return qemu.Status{Running: p.state == "running", Status: p.state}, nil
	case "cont":
		p.mu.Lock()
		defer p.mu.Unlock()
		if p.state == "inmigrate" {
			p.autostart = true // QEMU: run once the guest is in
			return nil, nil
		}
		p.setStateLocked("running")
		return nil, nil
	case "stop":
		p.mu.Lock()
		defer p.mu.Unlock()
		p.setStateLocked("paused")
		return nil, nil
	case "quit":
		go p.exit("host-qmp-quit")
		return nil, nil
	case "system_powerdown":
		if p.Running() {
			go func() { time.Sleep(20 * time.Millisecond); p.exit("guest-shutdown") }()
		}
		return nil, nil
	case "system_reset":
		go p.exit("guest-reset")
		return nil, nil
	case "migrate-set-capabilities":
		p.mu.Lock()
		defer p.mu.Unlock()
		caps, _ := a["capabilities"].([]any)
		for _, c := range caps {
			cm, _ := c.(map[string]any)
			name, _ := cm["capability"].(string)
			on, _ := cm["state"].(bool)
			p.caps[name] = on
		}
		return nil, nil
	case "migrate-set-parameters":
		p.mu.Lock()
		defer p.mu.Unlock()
		for k, v := range a {
			p.params[k] = v
		}
		return nil, nil
	case "query-migrate-parameters":
		p.mu.Lock()
		defer p.mu.Unlock()
		return p.params, nil
	case "object-add", "object-del", "announce-self":
		return nil, nil
	case "calc-dirty-rate":
		p.mu.Lock()
		defer p.mu.Unlock()
		secs, _ := number(a["calc-time"])
		p.calcAt, p.calcSecs = time.Now(), max(1, int64(secs))
		return nil, nil
	case "query-dirty-rate":
		p.mu.Lock()
		defer p.mu.Unlock()
		switch {
		case p.calcAt.IsZero():
			return map[string]any{"status": "unstarted"}, nil
		case time.Since(p.calcAt) < time.Duration(p.calcSecs)*time.Second:
			return map[string]any{"status": "measuring"}, nil
		}
		return map[string]any{"status": "measured", "mode": "page-sampling", "calc-time": p.calcSecs,
			"dirty-rate": int64(p.dirty * float64(100-p.throttleLocked()) / 100 / (1 << 20))}, nil
	}
	return p.migrationCommand(cmd, a)
}

// MigrationStatus is what query-migrate would say of the process's current
// or last migration ("" if it never migrated).
func (p *Proc) MigrationStatus() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mig == nil {
		return ""
	}
	return p.mig.status
}

// Boot is the guest's boot identity and time, as its health probe reports
// them: a guest that moved live keeps both; one started afresh gets new ones.
func (p *Proc) Boot() (id string, at time.Time) {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.bootID, p.booted
}

// SetCPU makes the guest use cores CPUs from now on.
func (p *Proc) SetCPU(cores float64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.cpuUsed = p.cpuTimeLocked()
	p.cpu, p.cpuAt = cores, time.Now()
}

// SetWait makes the guest wait cores CPUs' worth of time for its CPUs
// from now on, as on a contended host.
func (p *Proc) SetWait(cores float64) {
	p.mu.Lock()
	defer p.mu.Unlock()
	p.waited = p.waitedLocked()
	p.wait, p.waitAt = cores, time.Now()
}

// CPUWait is how long the guest has waited for its CPUs so far.
func (p *Proc) CPUWait() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.waitedLocked()
}

func (p *Proc) waitedLocked() time.Duration {
	if p.waitAt.IsZero() {
		return p.waited
	}
	return p.waited + time.Duration(p.wait*float64(time.Since(p.waitAt)))
}

// CPUTime is the CPU time the guest has used so far.
func (p *Proc) CPUTime() time.Duration {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.cpuTimeLocked()
}

func (p *Proc) cpuTimeLocked() time.Duration {
	if p.cpuAt.IsZero() {
		return p.cpuUsed
	}
	return p.cpuUsed + time.Duration(p.cpu*float64(time.Since(p.cpuAt)))
}
