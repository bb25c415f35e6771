// Package vrrp is a VRRPv3 router for IPv4 (RFC 5798): the hosts that can
// serve an address elect one of themselves to hold it, the one with the
// highest priority (ties: the highest primary address); it advertises
// every Interval, and when it stops for Master_Down_Interval (three
// intervals and a skew that lets the next best win) a backup takes the
// address over and announces it with gratuitous ARP.
//
// Ferry speaks the protocol itself rather than managing keepalived: the
// priority is the agent's own judgement of its health (it holds its lease,
// its API serves), set as that changes, with no second daemon, its
// configuration and its scripts to keep in step; and it interoperates with
// keepalived in the same group (tested), so a site's existing routers can
// share the address. The virtual address is taken as an extra address of
// the interface, with the interface's own MAC, as keepalived does without
// use_vmac.
//
// The state machine (Machine) is pure: it is given the time and what
// arrived, and returns what to do; Router drives it on a real interface.
package vrrp

import (
	"net/netip"
	"time"
)

// State is a router's state for one virtual router.
type State int

// States (RFC 5798, 6.4).
const (
	Initialize State = iota
	Backup
	Master
)

func (s State) String() string {
	return [...]string{"initialize", "backup", "master"}[s]
}

// Action is something the machine asks its driver to do, in order.
type Action int

// Actions.
const (
	SendAdvert  Action = iota // send an advertisement with the current priority
	SendRelease               // send an advertisement with priority 0 (leaving)
	TakeAddress               // add the virtual addresses and announce them (gratuitous ARP)
	DropAddress               // remove the virtual addresses
)

// Machine is one router's state for one virtual router.
type Machine struct {
	VRID     uint8
	Priority uint8         // 1..254 (255 is the address owner)
	Interval time.Duration // its advertisement interval
	Preempt  bool          // a higher-priority backup takes over from a lower master
	Primary  netip.Addr    // this router's address on the interface (ties)

	state          State
	masterInterval time.Duration // the master's, as advertised
	advertAt       time.Time     // master: when the next advertisement is due
	downAt         time.Time     // backup: when the master is judged gone
}

// State is the machine's state now.
func (m *Machine) State() State { return m.state }

// skew lets a backup with a higher priority time out first.
func (m *Machine) skew() time.Duration {
	return time.Duration(256-int(m.Priority)) * m.masterInterval / 256
}

func (m *Machine) masterDown() time.Duration { return 3*m.masterInterval + m.skew() }

// Start leaves Initialize: as a backup that waits for a master.
func (m *Machine) Start(now time.Time) []Action {
	m.masterInterval = m.Interval
	if m.Priority == 255 {
		return m.becomeMaster(now)
	}
	m.state = Backup
	m.downAt = now.Add(m.masterDown())
	return nil
}

func (m *Machine) becomeMaster(now time.Time) []Action {
	m.state = Master
	m.advertAt = now.Add(m.Interval)
	return []Action{SendAdvert, TakeAddress}
}

// Next is when the machine must be ticked next.
func (m *Machine) Next() time.Time {
	switch m.state {
	case Master:
		return m.advertAt
	case Backup:
		return m.downAt
	}
	return time.Time{}
}

// Tick runs the timers.
func (m *Machine) Tick(now time.Time) []Action {
	switch m.state {
	case Backup:
		if !now.Before(m.downAt) {
			return m.becomeMaster(now)
		}
	case Master:
		if !now.Before(m.advertAt) {
			m.advertAt = now.Add(m.Interval)
			return []Action{SendAdvert}
		}
	}
	return nil
}

// Receive handles an advertisement for this virtual router from the
// router whose primary address is from.
func (m *Machine) Receive(now time.Time, a Advert, from netip.Addr) []Action {
	if a.VRID != m.VRID {
		return nil
	}
	interval := time.Duration(a.Interval) * 10 * time.Millisecond
	switch m.state {
	case Backup:
		switch {
		case a.Priority == 0:
			m.downAt = now.Add(m.skew()) // the master left: take over soon
		case !m.Preempt || a.Priority >= m.Priority:
			m.masterInterval = interval
			m.downAt = now.Add(m.masterDown())
		}
	case Master:
		switch {
		case a.Priority == 0:
			m.advertAt = now.Add(m.Interval)
			return []Action{SendAdvert}
		case a.Priority > m.Priority || (a.Priority == m.Priority && from.Compare(m.Primary) > 0):
			m.state = Backup
			m.masterInterval = interval
			m.downAt = now.Add(m.masterDown())
			return []Action{DropAddress}
		}
	}
	return nil
}

// SetPriority changes the priority (the router's health changed). A master
// whose priority falls keeps the address until a better router claims it;
// a backup's takes effect at its next timeout.
func (m *Machine) SetPriority(p uint8) { m.Priority = p }

// Stop leaves the virtual router: a master releases the address at once
// (priority 0, so that a backup takes over after its skew, not after
// Master_Down_Interval).
func (m *Machine) Stop() []Action {
	was := m.state
	m.state = Initialize
	if was == Master {
		return []Action{SendRelease, DropAddress}
	}
	return nil
}
