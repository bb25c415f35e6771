package daemon

import (
	"fmt"
	"net/netip"
	"strings"

	"github.com/ferryvm/ferry/internal/paths"
	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// localPaths reads each underlay device's IPv4 address.
func localPaths(devs []string) ([]paths.Local, error) {
	var out []paths.Local
	for _, d := range devs {
		l, err := netlink.LinkByName(d)
		if err != nil {
			return nil, fmt.Errorf("--path %s: %w", d, err)
		}
		addrs, err := netlink.AddrList(l, unix.AF_INET)
		if err != nil || len(addrs) == 0 {
			return nil, fmt.Errorf("--path %s: the device has no IPv4 address (%v)", d, err)
		}
		a, _ := netip.AddrFromSlice(addrs[0].IP.To4())
		bits, _ := addrs[0].Mask.Size()
		out = append(out, paths.Local{Dev: d, Addr: netip.PrefixFrom(a, bits)})
	}
	return out, nil
}

// ParsePathPeer reads --path-peer NAME=ADDRESS/PATHADDR/PATHADDR...
func ParsePathPeer(s string) (paths.Peer, error) {
	bad := func(why string) (paths.Peer, error) {
		return paths.Peer{}, fmt.Errorf("--path-peer %q: %s (want NAME=ADDRESS/PATHADDR/PATHADDR..., e.g. client=198.18.2.200/198.18.0.200/198.18.1.200)", s, why)
	}
	name, rest, ok := strings.Cut(s, "=")
	if !ok || name == "" {
		return bad("no name")
	}
	parts := strings.Split(rest, "/")
	if len(parts) < 2 {
		return bad("no path address")
	}
	var p paths.Peer
	p.Name = name
	for i, part := range parts {
		a, err := netip.ParseAddr(part)
		if err != nil || !a.Is4() {
			return bad(fmt.Sprintf("%q is not an IPv4 address", part))
		}
		if i == 0 {
			p.Service = a
		} else {
			p.Paths = append(p.Paths, a)
		}
	}
	return p, nil
}
