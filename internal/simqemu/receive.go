package simqemu

// The target side of a simulated migration: it listens, takes the stream
// in, and notices a broken one.

import (
	"bufio"
	"fmt"
	"net"
	"strconv"
	"strings"
	"time"

	"github.com/ferryvm/ferry/internal/qemu"
)

// listen opens a migration URI: unix:PATH or tcp:HOST:PORT.
func listen(uri string) (net.Listener, error) {
	if path, ok := strings.CutPrefix(uri, "unix:"); ok {
		return net.Listen("unix", path)
	}
	if addr, ok := strings.CutPrefix(uri, "tcp:"); ok {
		return net.Listen("tcp", addr)
	}
	return nil, fmt.Errorf("unknown migration protocol: %s", uri)
}

// migrateIncoming makes a process started with -incoming defer listen.
func (p *Proc) migrateIncoming(uri string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != "inmigrate" || p.mig != nil {
		return qmpErr("The incoming migration has already been started")
	}
	ln, err := listen(uri)
	if err != nil {
		return qmpErr("Failed to listen on %s: %v", uri, err)
	}
	mig := &migration{status: "setup", start: time.Now(), ln: ln}
	p.mig = mig
	p.setMigStatusLocked(mig, "setup")
	go p.receive(mig, ln)
	return nil
}

// migrateRecover makes a paused post-copy target listen for the rest.
func (p *Proc) migrateRecover(uri string) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	mig := p.mig
	if mig == nil || mig.source || mig.status != qemu.StatusPostcopyPaused {
		return qmpErr("Migrate recover can only be run when postcopy is paused.")
	}
	ln, err := listen(uri)
	if err != nil {
		return qmpErr("Failed to listen on %s: %v", uri, err)
	}
	mig.ln = ln
	go p.receive(mig, ln)
	return nil
}

// receive is the target's end: accept one stream and take what it carries.
func (p *Proc) receive(mig *migration, ln net.Listener) {
	conn, err := ln.Accept()
	ln.Close()
	if err != nil {
		return // the process exited
	}
	r := bufio.NewReader(conn)
	conn.SetReadDeadline(time.Now().Add(10 * time.Second))
	hello, err := r.ReadString('\n')
	conn.SetReadDeadline(time.Time{})
	var pid, resume int
	if err != nil || func() error { _, err := fmt.Sscanf(hello, "SIMQEMU %d %d\n", &pid, &resume); return err }() != nil {
		conn.Close()
		p.receiveBroken(mig, nil)
		return
	}
	p.adoptBoot(pid)
	p.mu.Lock()
	if p.exited || p.mig != mig {
		p.mu.Unlock()
		conn.Close()
		return
	}
	mig.conn = conn
	if resume == 1 {
		p.setMigStatusLocked(mig, qemu.StatusPostcopyRecover)
	} else {
		p.setMigStatusLocked(mig, "active")
	}
	p.mu.Unlock()
	if _, err := conn.Write([]byte("OK\n")); err != nil {
		p.receiveBroken(mig, conn)
		return
	}
	if resume == 1 {
		p.mu.Lock()
		p.setMigStatusLocked(mig, qemu.StatusPostcopyActive)
		p.mu.Unlock()
	}
	for {
		line, err := r.ReadString('\n')
		if err != nil {
			p.receiveBroken(mig, conn)
			return
		}
		line = strings.TrimSpace(line)
		p.mu.Lock()
		switch {
		case strings.HasPrefix(line, "DATA "):
			n, _ := strconv.ParseInt(strings.TrimPrefix(line, "DATA "), 10, 64)
			mig.transferred += n
		case line == "POSTCOPY":
			// The device state arrived: the guest may run here now.
			p.setMigStatusLocked(mig, qemu.StatusPostcopyActive)
			p.arrivedLocked()
		case line == "DONE":
			if mig.status != qemu.StatusPostcopyActive {
				p.arrivedLocked()
			}
			p.setMigStatusLocked(mig, "completed")
			mig.conn = nil
			p.mu.Unlock()
			conn.Close()
			return
		}
		p.mu.Unlock()
		if strings.HasPrefix(line, "DATA ") {
			// A failed write shows as a broken stream on the next read,
			// after whatever the source sent before it closed.
			conn.Write([]byte("ACK\n"))
		}
	}
}

// arrivedLocked ends the incoming state: the guest is in, paused unless
// the process was started to run (mu held).
func (p *Proc) arrivedLocked() {
	if p.autostart {
		p.setStateLocked("running")
	} else {
		p.setStateLocked("paused")
	}
}

// receiveBroken handles the loss of the incoming stream: in post-copy the
// target waits for a new one; before, it has nothing to run and exits, as
// QEMU does ("load of migration failed").
func (p *Proc) receiveBroken(mig *migration, conn net.Conn) {
	p.mu.Lock()
	if p.exited || p.mig != mig || mig.status == "completed" || (conn != nil && mig.conn != conn) {
		p.mu.Unlock()
		return
	}
	if mig.conn != nil {
		mig.conn.Close()
		mig.conn = nil
	}
	if qemu.InPostcopy(mig.status) {
		if mig.status != qemu.StatusPostcopyPaused {
			p.setMigStatusLocked(mig, qemu.StatusPostcopyPaused)
		}
		p.mu.Unlock()
		return
	}
	p.setMigStatusLocked(mig, "failed")
	p.mu.Unlock()
	p.Crash()
}

// adoptBoot makes the guest arriving the source's: the same boot, and the
// same work (its CPU use).
func (p *Proc) adoptBoot(sourcePid int) {
	src := p.w.proc(sourcePid)
	if src == nil || src == p {
		return
	}
	id, at := src.Boot()
	src.mu.Lock()
	cores := src.cpu
	src.mu.Unlock()
	p.mu.Lock()
	p.bootID, p.booted = id, at
	p.mu.Unlock()
	p.SetCPU(cores)
}
