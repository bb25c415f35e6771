package vrrp

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"sync"
	"time"

	"github.com/mdlayher/arp"
	"github.com/vishvananda/netlink"
	"golang.org/x/net/ipv4"
)

// Config configures a Router.
type Config struct {
	Iface     string // the interface the group lives on
	VRID      uint8
	Priority  uint8
	Interval  time.Duration // advertisement interval (a multiple of 10 ms)
	Addresses []netip.Addr  // the virtual addresses (IPv4, taken as /32)
	Preempt   bool
	// OnState is called (from the router's goroutine) on every change.
	OnState func(State)
	Log     *slog.Logger
}

// Router runs one virtual router on a real interface.
type Router struct {
	cfg Config

	mu       sync.Mutex
	state    State
	priority chan uint8
}

// NewRouter checks cfg and returns a Router; Run starts it.
func NewRouter(cfg Config) (*Router, error) {
	switch {
	case cfg.VRID == 0:
		return nil, errors.New("vrrp: the virtual router id is 1..255")
	case cfg.Priority == 0 || cfg.Priority == 255:
		return nil, errors.New("vrrp: the priority is 1..254 (255 is the owner of the address)")
	case cfg.Interval < 10*time.Millisecond || cfg.Interval > 40950*time.Millisecond || cfg.Interval%(10*time.Millisecond) != 0:
		return nil, fmt.Errorf("vrrp: the interval %s must be a multiple of 10 ms up to 40.95 s", cfg.Interval)
	case len(cfg.Addresses) == 0:
		return nil, errors.New("vrrp: no virtual address")
	}
	for _, a := range cfg.Addresses {
		if !a.Is4() {
			return nil, fmt.Errorf("vrrp: %s is not an IPv4 address", a)
		}
	}
	if cfg.Log == nil {
		cfg.Log = slog.Default()
	}
	return &Router{cfg: cfg, priority: make(chan uint8, 1)}, nil
}

// State is the router's state now.
func (r *Router) State() State {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.state
}

// SetPriority changes the priority (1..254) while it runs.
func (r *Router) SetPriority(p uint8) {
	if p == 0 || p == 255 {
		return
	}
	select {
	case <-r.priority:
	default:
	}
	r.priority <- p
}

type received struct {
	adv  Advert
	from netip.Addr
}

// Run takes part in the group until ctx ends; a master then releases the
// addresses (an advertisement with priority 0) and removes them.
func (r *Router) Run(ctx context.Context) error {
	ifi, err := net.InterfaceByName(r.cfg.Iface)
	if err != nil {
		return fmt.Errorf("vrrp: %w", err)
	}
	link, err := netlink.LinkByName(r.cfg.Iface)
	if err != nil {
		return fmt.Errorf("vrrp: %w", err)
	}
	primary, err := r.primary(link)
	if err != nil {
		return err
	}
	c, err := net.ListenPacket(fmt.Sprintf("ip4:%d", Protocol), "0.0.0.0")
	if err != nil {
		return fmt.Errorf("vrrp: raw socket: %w", err)
	}
	defer c.Close()
	pc := ipv4.NewPacketConn(c)
	group := &net.IPAddr{IP: net.ParseIP(Group)}
	if err := pc.JoinGroup(ifi, group); err != nil {
		return fmt.Errorf("vrrp: joining %s on %s: %w", Group, r.cfg.Iface, err)
	}
	for _, err := range []error{pc.SetMulticastInterface(ifi), pc.SetMulticastTTL(255), pc.SetMulticastLoopback(false),
		pc.SetControlMessage(ipv4.FlagTTL|ipv4.FlagDst|ipv4.FlagInterface, true)} {
		if err != nil {
			return fmt.Errorf("vrrp: %w", err)
		}
	}
	garp, err := arp.Dial(ifi)
	if err != nil {
		return fmt.Errorf("vrrp: ARP on %s: %w", r.cfg.Iface, err)
	}
	defer garp.Close()

	in := make(chan received, 16)
	go r.read(pc, ifi.Index, primary, in)

	m := &Machine{VRID: r.cfg.VRID, Priority: r.cfg.Priority, Interval: r.cfg.Interval, Preempt: r.cfg.Preempt, Primary: primary}
	do := func(acts []Action) {
		for _, a := range acts {
			switch a {
			case SendAdvert, SendRelease:
				prio := m.Priority
				if a == SendRelease {
					prio = 0
				}
				r.send(pc, ifi.Index, primary, prio)
			case TakeAddress:
				r.take(link, garp, ifi)
			case DropAddress:
				r.drop(link)
			}
		}
		r.mu.Lock()
		changed := r.state != m.State()
		r.state = m.State()
		r.mu.Unlock()
		if changed {
			r.cfg.Log.Info("vrrp state", "vrid", r.cfg.VRID, "state", m.State(), "priority", m.Priority, "addresses", r.cfg.Addresses)
			if r.cfg.OnState != nil {
				r.cfg.OnState(m.State())
			}
		}
	}
	// An address left from a run that ended without cleaning up is not
	// ours until we win.
	r.drop(link)
	do(m.Start(time.Now()))
	timer := time.NewTimer(time.Until(m.Next()))
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			do(m.Stop())
			return nil
		case p := <-r.priority:
			m.SetPriority(p)
		case msg := <-in:
			do(m.Receive(time.Now(), msg.adv, msg.from))
		case <-timer.C:
			do(m.Tick(time.Now()))
		}
		timer.Reset(max(0, time.Until(m.Next())))
	}
}

// primary is the interface's first IPv4 address that is not virtual.
func (r *Router) primary(link netlink.Link) (netip.Addr, error) {
	addrs, err := netlink.AddrList(link, netlink.FAMILY_V4)
	if err != nil {
		return netip.Addr{}, fmt.Errorf("vrrp: addresses of %s: %w", r.cfg.Iface, err)
	}
	for _, a := range addrs {
		ip, _ := netip.AddrFromSlice(a.IP.To4())
		if !r.virtual(ip) {
			return ip, nil
		}
	}
	return netip.Addr{}, fmt.Errorf("vrrp: %s has no IPv4 address of its own", r.cfg.Iface)
}

func (r *Router) virtual(ip netip.Addr) bool {
	for _, v := range r.cfg.Addresses {
		if v == ip {
			return true
		}
	}
	return false
}

func (r *Router) read(pc *ipv4.PacketConn, ifindex int, self netip.Addr, out chan<- received) {
	buf := make([]byte, 1500)
	for {
		n, cm, src, err := pc.ReadFrom(buf)
		if err != nil {
			return // closed
		}
		if cm == nil || cm.TTL != 255 || cm.IfIndex != ifindex {
			continue // RFC 5798 7.1: only from a neighbour on this link
		}
		from, _ := netip.AddrFromSlice(src.(*net.IPAddr).IP.To4())
		dst, _ := netip.AddrFromSlice(cm.Dst.To4())
		if from == self {
			continue
		}
		a, err := Parse(buf[:n], from, dst)
		if err != nil {
			r.cfg.Log.Debug("vrrp: dropped", "from", from, "err", err)
			continue
		}
		if a.VRID != r.cfg.VRID {
			continue
		}
		select {
		case out <- received{a, from}:
		default:
		}
	}
}

func (r *Router) send(pc *ipv4.PacketConn, ifindex int, src netip.Addr, prio uint8) {
	a := Advert{VRID: r.cfg.VRID, Priority: prio, Interval: uint16(r.cfg.Interval / (10 * time.Millisecond)), Addresses: r.cfg.Addresses}
	b, err := a.Marshal(src, netip.MustParseAddr(Group))
	if err != nil {
		r.cfg.Log.Warn("vrrp: advertisement", "err", err)
		return
	}
	cm := &ipv4.ControlMessage{Src: src.AsSlice(), IfIndex: ifindex}
	if _, err := pc.WriteTo(b, cm, &net.IPAddr{IP: net.ParseIP(Group)}); err != nil {
		r.cfg.Log.Warn("vrrp: sending an advertisement", "err", err)
	}
}

// take adds the virtual addresses and announces them with gratuitous ARP
// (three, 100 ms apart, so that one lost does not leave neighbours with
// the old holder's MAC).
func (r *Router) take(link netlink.Link, garp *arp.Client, ifi *net.Interface) {
	for _, v := range r.cfg.Addresses {
		a := &netlink.Addr{IPNet: &net.IPNet{IP: v.AsSlice(), Mask: net.CIDRMask(32, 32)}}
		if err := netlink.AddrReplace(link, a); err != nil {
			r.cfg.Log.Warn("vrrp: adding the virtual address", "addr", v, "err", err)
		}
	}
	go func() {
		for i := range 3 {
			if i > 0 {
				time.Sleep(100 * time.Millisecond)
			}
			for _, v := range r.cfg.Addresses {
				p, err := arp.NewPacket(arp.OperationRequest, ifi.HardwareAddr, v, ethernetBroadcast, v)
				if err == nil {
					err = garp.WriteTo(p, ethernetBroadcast)
				}
				if err != nil {
					r.cfg.Log.Debug("vrrp: gratuitous ARP", "addr", v, "err", err)
				}
			}
		}
	}()
}

var ethernetBroadcast = net.HardwareAddr{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}

func (r *Router) drop(link netlink.Link) {
	for _, v := range r.cfg.Addresses {
		a := &netlink.Addr{IPNet: &net.IPNet{IP: v.AsSlice(), Mask: net.CIDRMask(32, 32)}}
		netlink.AddrDel(link, a) // absent: nothing to do
	}
}
