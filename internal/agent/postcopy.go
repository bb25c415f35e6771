package agent

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/qemu"
	"github.com/ferryvm/ferry/internal/tunnel"
)

// Post-copy after the switchover: the guest runs on the target and faults in
// the pages it has not got yet from the source, which meanwhile sends the
// rest. If the stream breaks now, neither side can give up — the guest's
// memory is split between them — so both QEMUs pause (postcopy-paused) and
// the agents recover it over a new stream, through the migration record:
//
//	source: its QEMU paused (or the stream stalled: it pauses it) -> RecoverSeq+1
//	target: pauses its QEMU too if it has not noticed, listens anew
//	        (migrate-recover)                                     -> RecoverReadySeq, RecoverURI
//	source: migrate resume=true to it; QEMU goes on where it stopped
//
// A link that silently drops packets shows as no progress: the source then
// breaks the stream itself (migrate-pause). A resume that does not get
// through (the link is still down) ends back in postcopy-paused, and the
// source asks again.

// postcopyStall is how long a post-copy stream may send nothing before the
// source breaks it to recover.
const postcopyStall = 3 * time.Second

// recoverTimeout is how long the source waits for a resumed stream to get
// going before it breaks it and asks for another.
const recoverTimeout = 30 * time.Second

// followPostcopy is the target's part once the guest runs here in post-copy:
// complete the migration when the last page arrived, and answer the
// source's requests for a new stream.
func (a *Agent) followPostcopy(ctx context.Context, in *instance, m *api.Migration) error {
	qctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	info, err := in.qmp.QueryMigrate(qctx)
	cancel()
	if err != nil {
		return nil // the QEMU exited or is busy; its exit is handled as the guest's
	}
	switch {
	case info.Status == "completed":
		in.closeTunnel()
		a.st.UpdateMigration(ctx, m.VM, func(cur *api.Migration) error {
			if cur.ID != m.ID || api.MigrationTerminal(cur.Phase) {
				return errors.New("moved on")
			}
			cur.Phase, cur.Finished = api.MigCompleted, time.Now().UTC()
			cur.Timeline = append(cur.Timeline, a.step("post-copy completed: every page arrived", cur.Finished))
			return nil
		})
		a.log.Info("post-copy migration completed", "vm", m.VM, "recoveries", m.Recoveries)
		return nil
	case info.Status == "failed":
		// Pages the guest still needs are gone with the stream: the guest
		// cannot go on. HA restarts it from its disk.
		a.log.Error("post-copy migration failed after the switchover; the guest cannot continue", "vm", m.VM, "err", info.ErrorDesc)
		a.finishMigration(ctx, m.VM, api.MigFailed, "post-copy failed after the switchover: "+info.ErrorDesc)
		return a.stop(ctx, in, true, 0, api.PhaseFailed)
	case m.RecoverSeq > m.RecoverReadySeq:
		return a.listenRecovery(ctx, in, m, info.Status)
	}
	return nil
}

// listenRecovery answers the source's request for a new post-copy stream:
// pause this side if it has not noticed the break, then listen again.
func (a *Agent) listenRecovery(ctx context.Context, in *instance, m *api.Migration, status string) error {
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	if status == qemu.StatusPostcopyActive {
		// The source broke the stream, but over a dead link this side may
		// wait for it forever: break it here too.
		if err := in.qmp.MigratePause(cctx); err != nil {
			a.log.Warn("pausing post-copy on the target", "vm", m.VM, "err", err)
		}
		return nil // the MIGRATION event (postcopy-paused) brings us back
	}
	if status != qemu.StatusPostcopyPaused {
		return nil // still recovering from an earlier request
	}
	seq := m.RecoverSeq
	var uri string
	if transportOf(m) == api.TransportAgent {
		sock := incomingSocket(a.cfg.RunDir, m.VM, seq)
		os.Remove(sock)
		if err := in.qmp.MigrateRecover(cctx, "unix:"+sock); err != nil {
			return fmt.Errorf("post-copy recovery: %w", err)
		}
		in.mu.Lock()
		t := in.tgtTunnel
		in.mu.Unlock()
		if t == nil {
			// The tunnel died with an earlier agent: open a new end.
			creds, err := tunnel.LoadCredentials(a.cfg.MigrationTLSDir)
			if err != nil {
				return err
			}
			if t, err = tunnel.Listen(net.JoinHostPort(a.cfg.Address, "0"), creds, m.Source, sock, a.log.With("vm", m.VM)); err != nil {
				return err
			}
			in.mu.Lock()
			in.tgtTunnel = t
			in.mu.Unlock()
		}
		t.SetBackend(sock)
		uri = "tcp:" + t.Addr()
	} else {
		port, err := freePort(a.cfg.Address)
		if err != nil {
			return err
		}
		uri = "tcp:" + net.JoinHostPort(a.cfg.Address, strconv.Itoa(port))
		if err := in.qmp.MigrateRecover(cctx, uri); err != nil {
			return fmt.Errorf("post-copy recovery: %w", err)
		}
	}
	_, _, err := a.st.UpdateMigration(ctx, m.VM, func(cur *api.Migration) error {
		if cur.ID != m.ID || cur.RecoverSeq != seq {
			return errors.New("moved on")
		}
		cur.RecoverReadySeq, cur.RecoverURI = seq, uri
		cur.Timeline = append(cur.Timeline, a.step(fmt.Sprintf("post-copy recovery %d: target listening", seq), time.Now()))
		return nil
	})
	a.log.Info("post-copy recovery: listening for the source", "vm", m.VM, "seq", seq, "uri", uri)
	return err
}

// sourcePostcopy is the source's recovery state for one migration.
type sourcePostcopy struct {
	resumedSeq  int       // the request whose stream we resumed over
	resumedAt   time.Time // when
	lastBytes   int64
	lastMoved   time.Time
	pausedByUs  bool
	wasRecovery bool // a stream was resumed and is running again
}

// followPostcopySource handles a post-copy status on the source: it breaks
// a stalled stream, asks for and resumes over new ones, and records each
// recovery. m is the latest record.
func (a *Agent) followPostcopySource(ctx context.Context, in *instance, m *api.Migration, info qemu.MigrationInfo, st *sourcePostcopy) {
	now := time.Now()
	switch info.Status {
	case qemu.StatusPostcopyActive:
		if info.RAM != nil && info.RAM.Transferred != st.lastBytes {
			st.lastBytes, st.lastMoved = info.RAM.Transferred, now
			if st.resumedSeq > 0 && st.resumedSeq == m.RecoverSeq && !st.wasRecovery {
				st.wasRecovery = true
				a.recordRecovery(ctx, m, st.resumedSeq)
			}
			return
		}
		if st.lastMoved.IsZero() {
			st.lastMoved = now
		}
		if now.Sub(st.lastMoved) > postcopyStall {
			a.log.Warn("post-copy stream stalled; breaking it to recover", "vm", m.VM, "stalled_for", now.Sub(st.lastMoved).Round(time.Millisecond))
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			if err := in.qmp.MigratePause(cctx); err != nil {
				a.log.Warn("pausing post-copy", "vm", m.VM, "err", err)
			}
			cancel()
			st.lastMoved = now
		}
	case qemu.StatusPostcopyPaused:
		st.wasRecovery = false
		if m.RecoverSeq <= m.RecoverReadySeq && m.RecoverSeq <= st.resumedSeq {
			// Nothing asked yet (or our last resume failed): ask for a stream.
			seq := m.RecoverSeq + 1
			_, _, err := a.st.UpdateMigration(ctx, m.VM, func(cur *api.Migration) error {
				if cur.ID != m.ID || cur.RecoverSeq >= seq {
					return errors.New("moved on")
				}
				cur.RecoverSeq = seq
				cur.Timeline = append(cur.Timeline, a.step(fmt.Sprintf("post-copy stream broken; recovery %d asked for", seq), now))
				return nil
			})
			if err == nil {
				a.log.Warn("post-copy paused; asking the target for a new stream", "vm", m.VM, "seq", seq)
			}
			return
		}
		if m.RecoverReadySeq == m.RecoverSeq && st.resumedSeq < m.RecoverSeq {
			a.resumePostcopy(ctx, in, m, st)
		}
	case qemu.StatusPostcopyRecoverSetup, qemu.StatusPostcopyRecover:
		if !st.resumedAt.IsZero() && now.Sub(st.resumedAt) > recoverTimeout {
			a.log.Warn("post-copy recovery did not get going; breaking it to try again", "vm", m.VM)
			cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
			in.qmp.MigratePause(cctx)
			cancel()
			st.resumedAt = now
		}
	}
}

// resumePostcopy sends the rest of the guest's pages over the stream the
// target now listens on.
func (a *Agent) resumePostcopy(ctx context.Context, in *instance, m *api.Migration, st *sourcePostcopy) {
	uri := m.RecoverURI
	if transportOf(m) == api.TransportAgent {
		in.mu.Lock()
		s := in.srcTunnel
		in.mu.Unlock()
		if s == nil {
			creds, err := tunnel.LoadCredentials(a.cfg.MigrationTLSDir)
			if err != nil {
				a.log.Error("post-copy recovery: migration credentials", "vm", m.VM, "err", err)
				return
			}
			sock := fmt.Sprintf("%s/%s.mout", a.cfg.RunDir, m.VM)
			if s, err = tunnel.Send(sock, strings.TrimPrefix(uri, "tcp:"), creds, m.Target, a.log.With("vm", m.VM)); err != nil {
				a.log.Error("post-copy recovery: tunnel", "vm", m.VM, "err", err)
				return
			}
			in.mu.Lock()
			in.srcTunnel = s
			in.mu.Unlock()
		}
		s.SetTarget(strings.TrimPrefix(uri, "tcp:"))
		uri = s.URI()
	}
	cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	err := in.qmp.MigrateResume(cctx, uri)
	cancel()
	st.resumedSeq, st.resumedAt = m.RecoverSeq, time.Now()
	if err != nil {
		a.log.Warn("post-copy recovery: resuming", "vm", m.VM, "seq", m.RecoverSeq, "err", err)
		return
	}
	a.log.Info("post-copy recovery: resuming the stream", "vm", m.VM, "seq", m.RecoverSeq, "uri", m.RecoverURI)
}

// recordRecovery notes in the record that a post-copy stream was resumed.
func (a *Agent) recordRecovery(ctx context.Context, m *api.Migration, seq int) {
	a.st.UpdateMigration(ctx, m.VM, func(cur *api.Migration) error {
		if cur.ID != m.ID || api.MigrationTerminal(cur.Phase) {
			return errors.New("moved on")
		}
		cur.Recoveries++
		cur.Timeline = append(cur.Timeline, a.step(fmt.Sprintf("post-copy recovery %d: stream resumed", seq), time.Now()))
		return nil
	})
	a.log.Info("post-copy recovered", "vm", m.VM, "seq", seq)
}

// postcopyShare is the share of the link post-copy's background stream
// may take when the operator set no bandwidth: the pages the guest faults
// on then find the link's queue short (a full queue delayed each by up to
// its length, and the guest's service by seconds).
const postcopyShare = 0.8

// startPostcopy switches the migration to post-copy, its background
// stream kept to postcopyShare of the rate the first pass measured.
func (f *sourceFollower) startPostcopy(ctx context.Context) bool {
	cctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	rate := f.linkRate
	if l := f.measuredLink(); l > 0 && (rate == 0 || l < rate) {
		// QEMU's rate in the first pass counts zero pages as if sent
		// whole; the measured link is the better figure.
		rate = l
	}
	if f.m.Options.MaxBandwidth == 0 && rate > 0 && slices.Contains(f.a.cfg.QEMU.Parameters, "max-postcopy-bandwidth") {
		bw := int64(rate * postcopyShare)
		if err := f.in.qmp.SetMigrationParameters(cctx, map[string]any{"max-postcopy-bandwidth": bw}); err == nil {
			f.in.steps = append(f.in.steps, f.a.step(fmt.Sprintf("post-copy background stream kept to %.0f MB/s", float64(bw)/1e6), time.Now()))
		}
	}
	if err := f.in.qmp.MigrateStartPostcopy(cctx); err != nil {
		f.a.log.Warn("switching to post-copy", "vm", f.m.VM, "err", err)
		return false
	}
	f.postcopyStarted = true
	f.a.log.Info("switched to post-copy", "vm", f.m.VM)
	return true
}

// measuredLink is the link's bandwidth the hosts measured, bytes per
// second, as the prediction recorded it (0: none).
func (f *sourceFollower) measuredLink() float64 {
	if p := f.m.Prediction; p != nil {
		return p.Link.Bandwidth
	}
	return 0
}
