package simqemu

import (
	"bufio"
	"errors"
	"fmt"
	"net"
	"strings"
	"time"

	"github.com/ferryvm/ferry/internal/qemu"
)

// A simulated migration's stream. The source dials the URI its target
// listens on and greets it ("SIMQEMU <pid> <resume>"); the target answers
// "OK". Then the source sends "DATA <bytes>" for every slice of memory it
// would have sent and counts it once the target acknowledged it ("ACK"), so
// a link that stops carrying packets stops the progress, as it does QEMU's.
// "POSTCOPY" tells the target that the guest now runs there, "DONE" that
// every page arrived.

// tick is how often a sending source moves a slice of memory.
const tick = 5 * time.Millisecond

// migration is one process's side of its current or last migration (QEMU
// keeps one: query-migrate reports it). The owning Proc's mu guards it.
type migration struct {
	source  bool
	status  string
	errDesc string
	start   time.Time
	// setup, total and downtime in ms, fixed once the migration ended.
	setupMS, totalMS, downtimeMS int64

	total, transferred, remaining int64
	rounds                        int64
	dirtied                       float64 // bytes dirtied during this round
	stoppedAt                     time.Time
	stoppedByUs                   bool // the migration paused the guest (resume it on failure)
	wantPostcopy                  bool
	cont                          chan struct{} // closed by migrate-continue
	// Auto-converge, as QEMU does it: at a sync at least a second after
	// the last check, a period in which the guest dirtied more than the
	// trigger threshold of what was sent counts as high; two in a row
	// raise the CPU throttle.
	throttle                int
	highCount               int
	lastCheck               time.Time
	periodXfer, periodDirty float64

	conn net.Conn
	ln   net.Listener
}

// migrationCommand carries out the migration commands.
func (p *Proc) migrationCommand(cmd string, a map[string]any) (any, error) {
	uri, _ := a["uri"].(string)
	switch cmd {
	case "query-migrate":
		return p.queryMigrate(), nil
	case "migrate-incoming":
		return nil, p.migrateIncoming(uri)
	case "migrate-recover":
		return nil, p.migrateRecover(uri)
	case "migrate":
		resume, _ := a["resume"].(bool)
		return nil, p.migrate(uri, resume)
	case "migrate_cancel":
		return nil, p.migrateCancel()
	case "migrate-continue":
		return nil, p.migrateContinue()
	case "migrate-start-postcopy":
		return nil, p.migrateStartPostcopy()
	case "migrate-pause":
		return nil, p.migratePause()
	}
	return nil, &qemu.QMPError{Class: "CommandNotFound", Desc: fmt.Sprintf("The command %s has not been found", cmd)}
}

// setMigStatusLocked moves mig to status and tells the monitors (mu held).
func (p *Proc) setMigStatusLocked(mig *migration, status string) {
	mig.status = status
	p.emitLocked("MIGRATION", map[string]any{"status": status})
}

func active(status string) bool {
	switch status {
	case "setup", "active", "pre-switchover", "device", "cancelling":
		return true
	}
	return qemu.InPostcopy(status)
}

func (p *Proc) queryMigrate() map[string]any {
	p.mu.Lock()
	defer p.mu.Unlock()
	mig := p.mig
	if mig == nil {
		return map[string]any{}
	}
	out := map[string]any{"status": mig.status}
	if !mig.source {
		return out
	}
	total := mig.totalMS
	if total == 0 {
		total = time.Since(mig.start).Milliseconds()
	}
	out["total-time"], out["setup-time"] = total, mig.setupMS
	if mig.status == "completed" {
		out["downtime"] = mig.downtimeMS
	} else {
		out["expected-downtime"] = int64(float64(mig.remaining) / p.bandwidthLocked() * 1000)
	}
	if mig.errDesc != "" {
		out["error-desc"] = mig.errDesc
	}
	if mig.status != "setup" {
		out["ram"] = map[string]any{"transferred": mig.transferred, "remaining": mig.remaining, "total": mig.total,
			"mbps": p.bandwidthLocked() * 8 / 1e6, "dirty-sync-count": mig.rounds, "page-size": 4096,
			"dirty-pages-rate": int64(p.dirty * float64(100-mig.throttle) / 100 / 4096)}
		if mig.throttle > 0 {
			out["cpu-throttle-percentage"] = mig.throttle
		}
	}
	return out
}

// bandwidthLocked is the rate the source sends at: the world's, or less
// if max-bandwidth says so (mu held).
func (p *Proc) bandwidthLocked() float64 {
	bw := p.w.Bandwidth()
	if m, ok := number(p.params["max-bandwidth"]); ok && m > 0 && m < bw {
		bw = m
	}
	return bw
}

func number(v any) (float64, bool) {
	switch n := v.(type) {
	case float64:
		return n, true
	case int64:
		return float64(n), true
	case int:
		return float64(n), true
	}
	return 0, false
}

func dial(uri string) (net.Conn, error) {
	if path, ok := strings.CutPrefix(uri, "unix:"); ok {
		return net.DialTimeout("unix", path, 5*time.Second)
	}
	if addr, ok := strings.CutPrefix(uri, "tcp:"); ok {
		return net.DialTimeout("tcp", addr, 5*time.Second)
	}
	return nil, fmt.Errorf("unknown migration protocol: %s", uri)
}

// migrate starts an outgoing migration, or resumes a paused post-copy one.
func (p *Proc) migrate(uri string, resume bool) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	mig := p.mig
	if resume {
		if mig == nil || !mig.source || mig.status != qemu.StatusPostcopyPaused {
			return qmpErr("Cannot resume if there is no paused migration")
		}
		p.setMigStatusLocked(mig, qemu.StatusPostcopyRecoverSetup)
		go p.send(mig, uri, true)
		return nil
	}
	if mig != nil && active(mig.status) {
		return qmpErr("There's a migration process in progress")
	}
	if p.state == "inmigrate" || p.state == "postmigrate" {
		return qmpErr("Guest is waiting for an incoming migration")
	}
	mig = &migration{source: true, start: time.Now(), total: int64(p.MemoryMiB) << 20, rounds: 0, cont: make(chan struct{})}
	mig.remaining = mig.total
	p.mig = mig
	p.setMigStatusLocked(mig, "setup")
	go p.send(mig, uri, false)
	return nil
}

// send is the source's end of the stream.
func (p *Proc) send(mig *migration, uri string, resume bool) {
	conn, err := dial(uri)
	if err == nil {
		err = handshake(conn, p.Pid, resume)
	}
	p.mu.Lock()
	if p.mig != mig || p.exited || !active(mig.status) {
		p.mu.Unlock()
		if conn != nil {
			conn.Close()
		}
		return
	}
	if err != nil {
		if conn != nil {
			conn.Close()
		}
		p.mu.Unlock()
		p.sendBroken(mig, nil, fmt.Sprintf("Failed to connect to '%s': %v", uri, err))
		return
	}
	mig.conn = conn
	if resume {
		p.setMigStatusLocked(mig, qemu.StatusPostcopyRecover)
		p.setMigStatusLocked(mig, qemu.StatusPostcopyActive)
	} else {
		mig.setupMS, mig.rounds = time.Since(mig.start).Milliseconds(), 1
		p.setMigStatusLocked(mig, "active")
	}
	p.mu.Unlock()
	r := bufio.NewReader(conn)
	for {
		next, err := p.sendStep(mig, conn, r)
		if err != nil {
			p.sendBroken(mig, conn, "Unable to write to socket: "+err.Error())
			return
		}
		if !next {
			return
		}
	}
}

func handshake(conn net.Conn, pid int, resume bool) error {
	conn.SetDeadline(time.Now().Add(10 * time.Second))
	defer conn.SetDeadline(time.Time{})
	r := 0
	if resume {
		r = 1
	}
	if _, err := fmt.Fprintf(conn, "SIMQEMU %d %d\n", pid, r); err != nil {
		return err
	}
	buf := make([]byte, 3)
	if _, err := conn.Read(buf); err != nil {
		return err
	}
	if string(buf) != "OK\n" {
		return errors.New("the target refused the stream")
	}
	return nil
}

// sendStep moves one slice of memory and takes the migration's next step:
// a new round, post-copy, the switchover. It reports whether to go on.
func (p *Proc) sendStep(mig *migration, conn net.Conn, r *bufio.Reader) (bool, error) {
	time.Sleep(tick)
	p.mu.Lock()
	if p.mig != mig || p.exited || mig.conn != conn {
		p.mu.Unlock()
		return false, nil // cancelled, paused or exited: whoever did it set the status
	}
	bw := p.bandwidthLocked()
	n := min(int64(bw*tick.Seconds()), mig.remaining)
	stalled := p.w.stalled(p.UUID)
	if stalled {
		n = 0
	}
	postcopy := mig.status == qemu.StatusPostcopyActive
	if !postcopy && mig.status == "active" {
		d := p.dirty * float64(100-mig.throttle) / 100 * tick.Seconds()
		mig.dirtied = min(float64(mig.total), mig.dirtied+d)
		mig.periodDirty += d
	}
	p.mu.Unlock()
	if n > 0 {
		if _, err := fmt.Fprintf(conn, "DATA %d\n", n); err != nil {
			return false, err
		}
		if _, err := r.ReadString('\n'); err != nil {
			return false, err
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mig != mig || mig.conn != conn {
		return false, nil
	}
	mig.transferred += n
	mig.remaining -= n
	mig.periodXfer += float64(n)
	switch {
	case postcopy && mig.remaining == 0:
		return false, p.completeLocked(mig, conn)
	case postcopy || stalled:
		return true, nil
	case mig.status == "active" && mig.wantPostcopy && p.caps["postcopy-ram"]:
		p.stopForSwitchoverLocked(mig)
		if _, err := conn.Write([]byte("POSTCOPY\n")); err != nil {
			return false, err
		}
		p.setMigStatusLocked(mig, qemu.StatusPostcopyActive)
		return true, nil
	case mig.remaining > 0:
		return true, nil
	}
	return p.endRoundLocked(mig, conn, bw)
}

// endRoundLocked ends a pre-copy round: what the guest dirtied meanwhile is
// the next round, unless it fits in the downtime limit at rate bw; then the
// guest stops (waiting at pre-switchover where asked) and the rest goes.
func (p *Proc) endRoundLocked(mig *migration, conn net.Conn, bw float64) (bool, error) {
	mig.remaining, mig.dirtied = int64(mig.dirtied), 0
	limit, _ := number(p.params["downtime-limit"])
	rate := bw
	if s, ok := number(p.params["avail-switchover-bandwidth"]); ok && s > 0 {
		rate = s
	}
	if float64(mig.remaining)/rate*1000 > limit {
		mig.rounds++
		p.autoConvergeLocked(mig)
		return true, nil
	}
	p.stopForSwitchoverLocked(mig)
	if p.caps["pause-before-switchover"] {
		p.setMigStatusLocked(mig, "pre-switchover")
		cont := mig.cont
		p.mu.Unlock()
		<-cont // migrate-continue, or a cancel
		p.mu.Lock()
		if p.mig != mig || mig.status != "pre-switchover" {
			return false, nil
		}
	}
	p.setMigStatusLocked(mig, "device")
	// The rest goes while the guest is stopped.
	rest := time.Duration(float64(mig.remaining) / bw * float64(time.Second))
	p.mu.Unlock()
	time.Sleep(rest)
	_, err := fmt.Fprintf(conn, "DATA %d\n", mig.remaining)
	p.mu.Lock()
	if err != nil {
		return false, err
	}
	if p.mig != mig || mig.conn != conn {
		return false, nil
	}
	mig.transferred += mig.remaining
	mig.remaining = 0
	return false, p.completeLocked(mig, conn)
}

// autoConvergeLocked raises the throttle at a sync as QEMU's auto-converge
// does (migration_trigger_throttle), with its parameters.
func (p *Proc) autoConvergeLocked(mig *migration) {
	if !p.caps["auto-converge"] || time.Since(mig.lastCheck) < time.Second {
		return
	}
	param := func(name string, def float64) int {
		if v, ok := number(p.params[name]); ok {
			return int(v)
		}
		return int(def)
	}
	high := mig.periodDirty > mig.periodXfer*float64(param("throttle-trigger-threshold", 50))/100
	mig.lastCheck, mig.periodDirty, mig.periodXfer = time.Now(), 0, 0
	if !high {
		return
	}
	if mig.highCount++; mig.highCount < 2 {
		return
	}
	mig.highCount = 0
	if mig.throttle == 0 {
		mig.throttle = param("cpu-throttle-initial", 20)
	} else {
		mig.throttle += param("cpu-throttle-increment", 10)
	}
	mig.throttle = min(mig.throttle, param("max-cpu-throttle", 99))
}

// throttleLocked is the CPU throttle the current migration holds the guest
// at (mu held).
func (p *Proc) throttleLocked() int {
	if mig := p.mig; mig != nil && mig.source && active(mig.status) {
		return mig.throttle
	}
	return 0
}

// stopForSwitchoverLocked stops the guest's CPUs for the switchover.
func (p *Proc) stopForSwitchoverLocked(mig *migration) {
	mig.stoppedAt = time.Now()
	if p.state == "running" {
		mig.stoppedByUs = true
		p.setStateLocked("finish-migrate")
	}
}

// completeLocked sends the end of the stream and completes the migration.
func (p *Proc) completeLocked(mig *migration, conn net.Conn) error {
	if _, err := conn.Write([]byte("DONE\n")); err != nil {
		return err
	}
	mig.conn = nil
	conn.Close()
	mig.totalMS = time.Since(mig.start).Milliseconds()
	mig.downtimeMS = max(1, time.Since(mig.stoppedAt).Milliseconds())
	p.state = "postmigrate"
	p.setMigStatusLocked(mig, "completed")
	return nil
}

// sendBroken handles the loss of the outgoing stream: post-copy pauses
// until a new one, a pre-copy fails and the guest runs on here.
func (p *Proc) sendBroken(mig *migration, conn net.Conn, why string) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.mig != mig || p.exited || !active(mig.status) || (conn != nil && mig.conn != conn) {
		return
	}
	if mig.conn != nil {
		mig.conn.Close()
		mig.conn = nil
	}
	if qemu.InPostcopy(mig.status) {
		p.setMigStatusLocked(mig, qemu.StatusPostcopyPaused)
		return
	}
	mig.errDesc = why
	p.endLocked(mig, "failed")
}

// endLocked ends a pre-copy migration that did not complete: the guest
// runs again here if the migration stopped it.
func (p *Proc) endLocked(mig *migration, status string) {
	mig.totalMS = time.Since(mig.start).Milliseconds()
	if mig.conn != nil {
		mig.conn.Close()
		mig.conn = nil
	}
	select {
	case <-mig.cont:
	default:
		close(mig.cont)
	}
	if mig.stoppedByUs {
		mig.stoppedByUs = false
		p.setStateLocked("running")
	}
	p.setMigStatusLocked(mig, status)
}

func statusOf(mig *migration) string {
	if mig == nil {
		return "none"
	}
	return mig.status
}

// procExited closes a dead process's end of its migration: its peer sees
// the stream break.
func (mig *migration) procExited(p *Proc) {
	p.mu.Lock()
	conn, ln := mig.conn, mig.ln
	mig.conn, mig.ln = nil, nil
	p.mu.Unlock()
	if conn != nil {
		conn.Close()
	}
	if ln != nil {
		ln.Close()
	}
}
