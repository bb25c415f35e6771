// Package hostnet configures a host's guest network through netlink: a
// bridge for guest taps, a VXLAN device that joins the bridges of all hosts
// into one layer-2 overlay (head-end replication to every peer, no
// multicast), and per-guest tap devices.
package hostnet

import (
	"errors"
	"fmt"
	"net"
	"os"
	"syscall"

	"github.com/vishvananda/netlink"
)

// VXLANOverhead is what VXLAN encapsulation adds to each frame.
const VXLANOverhead = 50

// Overlay is one host's end of the guest overlay network.
type Overlay struct {
	Bridge     string     // e.g. ferry0
	VXLAN      string     // e.g. fvx0
	VNI        int        // VXLAN network identifier
	Port       int        // UDP port (4789)
	Local      net.IP     // this host's underlay address
	BridgeAddr *net.IPNet // this host's address on the overlay (for probing guests)
	// Paths are the host's underlay devices when it has several (Local
	// is then on none of them, and the kernel routes each encapsulated
	// packet over a healthy one); empty: the device holding Local.
	Paths    []string
	underMTU int
}

// Ensure creates (or adopts) the bridge and VXLAN device and brings them up.
func (o *Overlay) Ensure() error {
	unders, err := o.underlay()
	if err != nil {
		return err
	}
	o.underMTU = 0
	for _, u := range unders {
		if o.underMTU == 0 || u.Attrs().MTU < o.underMTU {
			o.underMTU = u.Attrs().MTU
		}
	}
	vtepDev := 0
	if len(o.Paths) == 0 {
		vtepDev = unders[0].Attrs().Index // bound to the one underlay device
	}
	br, err := netlink.LinkByName(o.Bridge)
	if err != nil {
		la := netlink.NewLinkAttrs()
		la.Name = o.Bridge
		if err := netlink.LinkAdd(&netlink.Bridge{LinkAttrs: la}); err != nil && !errors.Is(err, os.ErrExist) {
			return fmt.Errorf("creating bridge %s: %w", o.Bridge, err)
		}
		if br, err = netlink.LinkByName(o.Bridge); err != nil {
			return err
		}
	}
	vx, err := netlink.LinkByName(o.VXLAN)
	if err == nil {
		if v, ok := vx.(*netlink.Vxlan); !ok || v.VxlanId != o.VNI || !v.SrcAddr.Equal(o.Local) || v.VtepDevIndex != vtepDev {
			// Stale device from another configuration: recreate it.
			netlink.LinkDel(vx)
			vx = nil
		}
	}
	if vx == nil {
		la := netlink.NewLinkAttrs()
		la.Name = o.VXLAN
		la.MTU = o.MTU()
		v := &netlink.Vxlan{LinkAttrs: la, VxlanId: o.VNI, SrcAddr: o.Local, Port: o.Port,
			Learning: false, VtepDevIndex: vtepDev}
		if err := netlink.LinkAdd(v); err != nil {
			return fmt.Errorf("creating vxlan %s: %w", o.VXLAN, err)
		}
		if vx, err = netlink.LinkByName(o.VXLAN); err != nil {
			return err
		}
	}
	if err := netlink.LinkSetMaster(vx, br); err != nil {
		return fmt.Errorf("attaching %s to %s: %w", o.VXLAN, o.Bridge, err)
	}
	netlink.LinkSetMTU(br, o.MTU())
	if o.BridgeAddr != nil {
		addr := &netlink.Addr{IPNet: o.BridgeAddr}
		if err := netlink.AddrReplace(br, addr); err != nil {
			return fmt.Errorf("address on %s: %w", o.Bridge, err)
		}
	}
	for _, l := range []netlink.Link{vx, br} {
		if err := netlink.LinkSetUp(l); err != nil {
			return fmt.Errorf("bringing up %s: %w", l.Attrs().Name, err)
		}
	}
	return nil
}

// underlay is the host's underlay devices: its paths, or the device that
// holds its address.
func (o *Overlay) underlay() ([]netlink.Link, error) {
	if len(o.Paths) == 0 {
		l, err := linkWithAddr(o.Local)
		if err != nil {
			return nil, err
		}
		return []netlink.Link{l}, nil
	}
	var out []netlink.Link
	for _, name := range o.Paths {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return nil, fmt.Errorf("underlay path %s: %w", name, err)
		}
		out = append(out, l)
	}
	return out, nil
}

// Check reports what is wrong with the overlay on this host: its bridge or
// VXLAN device missing or down.
func (o *Overlay) Check() error {
	for _, name := range []string{o.Bridge, o.VXLAN} {
		l, err := netlink.LinkByName(name)
		if err != nil {
			return fmt.Errorf("guest overlay: %s is missing", name)
		}
		if l.Attrs().Flags&net.FlagUp == 0 {
			return fmt.Errorf("guest overlay: %s is down", name)
		}
	}
	return nil
}

// MTU is the guests' MTU on the overlay.
func (o *Overlay) MTU() int {
	m := o.underMTU
	if m == 0 {
		m = 1500
	}
	return m - VXLANOverhead
}

// SyncPeers makes the VXLAN flood (broadcast, unknown unicast, multicast) to
// exactly these underlay addresses. This host's own address is never added:
// frames sent to it loop back and the bridge learns local guests on the
// VXLAN port.
func (o *Overlay) SyncPeers(peers []net.IP) error {
	vx, err := netlink.LinkByName(o.VXLAN)
	if err != nil {
		return err
	}
	want := map[string]net.IP{}
	for _, p := range peers {
		if p == nil || p.Equal(o.Local) {
			continue
		}
		want[p.String()] = p
	}
	neighs, err := netlink.NeighList(vx.Attrs().Index, syscall.AF_BRIDGE)
	if err != nil {
		return err
	}
	zero := net.HardwareAddr{0, 0, 0, 0, 0, 0}
	for _, n := range neighs {
		if n.IP == nil || n.HardwareAddr.String() != zero.String() {
			continue
		}
		if _, ok := want[n.IP.String()]; ok {
			delete(want, n.IP.String())
			continue
		}
		if err := netlink.NeighDel(&n); err != nil {
			return fmt.Errorf("removing flood entry %s: %w", n.IP, err)
		}
	}
	for _, p := range want {
		n := &netlink.Neigh{LinkIndex: vx.Attrs().Index, Family: syscall.AF_BRIDGE, Flags: netlink.NTF_SELF,
			State: netlink.NUD_PERMANENT | netlink.NUD_NOARP, HardwareAddr: zero, IP: p}
		if err := netlink.NeighAppend(n); err != nil {
			return fmt.Errorf("adding flood entry %s: %w", p, err)
		}
	}
	return nil
}

// CreateTap makes a persistent tap device for a guest and attaches it to the bridge.
func CreateTap(name, bridge string, mtu int) error {
	br, err := netlink.LinkByName(bridge)
	if err != nil {
		return fmt.Errorf("bridge %s: %w", bridge, err)
	}
	if old, err := netlink.LinkByName(name); err == nil {
		netlink.LinkDel(old)
	}
	la := netlink.NewLinkAttrs()
	la.Name = name
	la.MTU = mtu
	tap := &netlink.Tuntap{LinkAttrs: la, Mode: netlink.TUNTAP_MODE_TAP,
		Flags: netlink.TUNTAP_NO_PI | netlink.TUNTAP_VNET_HDR | netlink.TUNTAP_ONE_QUEUE}
	if err := netlink.LinkAdd(tap); err != nil {
		return fmt.Errorf("creating tap %s: %w", name, err)
	}
	for _, f := range tap.Fds {
		f.Close() // persistent: QEMU opens it by name
	}
	l, err := netlink.LinkByName(name)
	if err != nil {
		return err
	}
	if err := netlink.LinkSetMaster(l, br); err != nil {
		netlink.LinkDel(l)
		return fmt.Errorf("attaching %s to %s: %w", name, bridge, err)
	}
	if err := netlink.LinkSetUp(l); err != nil {
		netlink.LinkDel(l)
		return err
	}
	return nil
}

// DeleteTap removes a tap device; a missing one is not an error.
func DeleteTap(name string) error {
	l, err := netlink.LinkByName(name)
	if err != nil {
		return nil
	}
	return netlink.LinkDel(l)
}

// TapName is a guest's tap device name: short (15-byte limit) and stable.
func TapName(uuid string) string {
	s := ""
	for _, c := range uuid {
		if c != '-' {
			s += string(c)
		}
		if len(s) == 11 {
			break
		}
	}
	return "fy" + s
}

// DeviceWithAddr names the interface that holds ip.
func DeviceWithAddr(ip net.IP) (string, error) {
	l, err := linkWithAddr(ip)
	if err != nil {
		return "", err
	}
	return l.Attrs().Name, nil
}

func linkWithAddr(ip net.IP) (netlink.Link, error) {
	links, err := netlink.LinkList()
	if err != nil {
		return nil, err
	}
	for _, l := range links {
		addrs, _ := netlink.AddrList(l, netlink.FAMILY_V4)
		for _, a := range addrs {
			if a.IP.Equal(ip) {
				return l, nil
			}
		}
	}
	return nil, fmt.Errorf("no interface holds the underlay address %s", ip)
}

// PinMAC makes the bridge deliver frames for mac to tap at once, instead of
// waiting to learn it: after a migration the bridge may still believe the
// guest lives behind the VXLAN port. The entry goes away with the tap.
func PinMAC(tap, mac string) error {
	l, err := netlink.LinkByName(tap)
	if err != nil {
		return err
	}
	hw, err := net.ParseMAC(mac)
	if err != nil {
		return err
	}
	return netlink.NeighSet(&netlink.Neigh{LinkIndex: l.Attrs().Index, Family: syscall.AF_BRIDGE,
		Flags: netlink.NTF_MASTER, State: netlink.NUD_NOARP, HardwareAddr: hw})
}
