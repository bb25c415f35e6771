package main

import (
	"fmt"
	"net"

	"github.com/vishvananda/netlink"
)

// setupNetwork brings up lo and the first other interface with the address
// and default gateway given on the kernel command line.
func setupNetwork(cidr, gw string) error {
	lo, err := netlink.LinkByName("lo")
	if err == nil {
		netlink.LinkSetUp(lo)
	}
	if cidr == "" {
		return fmt.Errorf("no ferry.ip on the kernel command line")
	}
	addr, err := netlink.ParseAddr(cidr)
	if err != nil {
		return fmt.Errorf("ferry.ip %q: %w", cidr, err)
	}
	links, err := netlink.LinkList()
	if err != nil {
		return err
	}
	var nic netlink.Link
	for _, l := range links {
		if l.Attrs().Flags&net.FlagLoopback == 0 && l.Type() == "device" {
			nic = l
			break
		}
	}
	if nic == nil {
		return fmt.Errorf("no network interface found")
	}
	if err := netlink.AddrAdd(nic, addr); err != nil {
		return fmt.Errorf("adding %s to %s: %w", cidr, nic.Attrs().Name, err)
	}
	if err := netlink.LinkSetUp(nic); err != nil {
		return err
	}
	if gw != "" {
		ip := net.ParseIP(gw)
		if ip == nil {
			return fmt.Errorf("ferry.gw %q is not an address", gw)
		}
		if err := netlink.RouteAdd(&netlink.Route{LinkIndex: nic.Attrs().Index, Gw: ip}); err != nil {
			return fmt.Errorf("default route via %s: %w", gw, err)
		}
	}
	return nil
}
