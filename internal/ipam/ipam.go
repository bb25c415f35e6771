// Package ipam is the guests' address plan: which addresses of the overlay
// subnet guests get, which are kept for hosts and infrastructure, and the
// MAC that goes with each address. It chooses; the store records the claim
// (one key per address, taken in the transaction that creates the VM).
package ipam

import (
	"fmt"
	"net/netip"

	"github.com/ferryvm/ferry/internal/errdefs"
)

// Subnet is the address space guests get their addresses from, and Gateway
// the address reserved for the host side of the guest network.
var (
	Subnet  = netip.MustParsePrefix("198.19.0.0/16")
	Gateway = netip.MustParseAddr("198.19.255.254")
)

// HostOverlayAddr is a host's own address on the overlay, derived from the
// last byte of its underlay address (hosts share one underlay subnet).
func HostOverlayAddr(underlay netip.Addr) netip.Prefix {
	b := underlay.As4()
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{198, 19, 254, b[3]}), Subnet.Bits())
}

// MACFor derives a guest's MAC from its address, so both are unique together.
func MACFor(ip netip.Addr) string {
	b := ip.As4()
	return fmt.Sprintf("52:54:00:%02x:%02x:%02x", b[1], b[2], b[3])
}

// Free picks the skip+1-th lowest guest address not in used. Guests get
// 198.19.0.10 up to 198.19.253.254: .0.1-.0.9 are kept for infrastructure,
// 198.19.254.0/24 for the hosts' overlay addresses and 198.19.255.0/24 for
// gateways and clients. Concurrent creators that lost a race retry with a
// larger skip, so that they spread out.
func Free(used map[netip.Addr]bool, skip int) (netip.Addr, error) {
	for a := netip.AddrFrom4([4]byte{198, 19, 0, 10}); Subnet.Contains(a); a = a.Next() {
		b := a.As4()
		if b[2] >= 254 {
			break
		}
		if !used[a] && b[3] != 0 && b[3] != 255 {
			if skip == 0 {
				return a, nil
			}
			skip--
		}
	}
	return netip.Addr{}, errdefs.New(errdefs.ErrFailedPrecondition, "guest address space 198.19.0.0/16 is exhausted")
}

// Random picks a guest address at random (from the same range as Free).
// Creators try a random address first and claim it in one transaction, so
// that a create need not read every claim: at 20,000 guests that read is
// the create's whole cost. The chance of hitting a taken address is the
// fill ratio; after a few misses the creator falls back to Free. A side
// effect users see: guests do not get consecutive addresses, and a freed
// address is seldom handed out again soon (stale ARP entries elsewhere
// point at nobody rather than at a new guest).
func Random(n func(int) int) netip.Addr {
	for {
		third := n(254)                // 198.19.0.x to 198.19.253.x
		fourth := 1 + n(254)           // .1 to .254
		if third == 0 && fourth < 10 { // .0.1-.0.9: infrastructure
			continue
		}
		return netip.AddrFrom4([4]byte{198, 19, byte(third), byte(fourth)})
	}
}
