package paths

import (
	"fmt"
	"net"
	"net/netip"
	"os"

	"github.com/vishvananda/netlink"
)

// NetlinkRouter installs routes in the kernel of the calling network
// namespace.
type NetlinkRouter struct{}

// Replace sets the route to dst (a /32) with source src over hops: one
// next hop, or a multipath route with one per hop.
func (NetlinkRouter) Replace(dst, src netip.Addr, hops []Hop) error {
	r := &netlink.Route{Dst: &net.IPNet{IP: dst.AsSlice(), Mask: net.CIDRMask(dst.BitLen(), dst.BitLen())}, Src: src.AsSlice()}
	var next []*netlink.NexthopInfo
	for _, h := range hops {
		l, err := netlink.LinkByName(h.Dev)
		if err != nil {
			return fmt.Errorf("path device %s: %w", h.Dev, err)
		}
		next = append(next, &netlink.NexthopInfo{LinkIndex: l.Attrs().Index, Gw: h.Via.AsSlice()})
	}
	switch len(next) {
	case 0:
		return fmt.Errorf("no next hop for %s", dst)
	case 1:
		r.LinkIndex, r.Gw = next[0].LinkIndex, next[0].Gw
	default:
		r.MultiPath = next
	}
	if err := netlink.RouteReplace(r); err != nil {
		return fmt.Errorf("route to %s over %v: %w", dst, hops, err)
	}
	return nil
}

// HashByPorts makes the kernel spread flows over a multipath route's next
// hops by their layer-4 ports (fib_multipath_hash_policy=1), not only by
// their addresses: between two hosts, whose addresses are one pair, that
// is what spreads their connections over the paths.
func HashByPorts() error {
	return os.WriteFile("/proc/sys/net/ipv4/fib_multipath_hash_policy", []byte("1\n"), 0o644)
}
