package simqemu

// The QMP commands that steer a running simulated migration.

import "github.com/ferryvm/ferry/internal/qemu"

func (p *Proc) migrateCancel() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	mig := p.mig
	if mig == nil || !mig.source || !active(mig.status) {
		return nil // QEMU: nothing to cancel is no error
	}
	if qemu.InPostcopy(mig.status) {
		return qmpErr("Postcopy is not supported to be cancelled")
	}
	p.setMigStatusLocked(mig, "cancelling")
	p.endLocked(mig, "cancelled")
	return nil
}

func (p *Proc) migrateContinue() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	mig := p.mig
	if mig == nil || mig.status != "pre-switchover" {
		return qmpErr("Migration not in expected state: %s", statusOf(mig))
	}
	close(mig.cont)
	return nil
}

func (p *Proc) migrateStartPostcopy() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	mig := p.mig
	if !p.caps["postcopy-ram"] {
		return qmpErr("Enable postcopy with migrate_set_capability before the start of migration")
	}
	if mig == nil || !mig.source || !active(mig.status) {
		return qmpErr("Postcopy must be started after migration has been started")
	}
	mig.wantPostcopy = true
	return nil
}

// migratePause breaks a post-copy stream on purpose (either side).
func (p *Proc) migratePause() error {
	p.mu.Lock()
	defer p.mu.Unlock()
	mig := p.mig
	if mig == nil || (mig.status != qemu.StatusPostcopyActive && mig.status != qemu.StatusPostcopyRecover) {
		return qmpErr("migrate-pause is currently only supported during postcopy-active or postcopy-recover state")
	}
	if mig.conn != nil {
		mig.conn.Close()
		mig.conn = nil
	}
	p.setMigStatusLocked(mig, qemu.StatusPostcopyPaused)
	return nil
}
