package hostnet

import (
	"fmt"

	"github.com/vishvananda/netlink"
)

// Traffic is what a host's interfaces have carried since they came up:
// the underlay device (everything to and from other hosts) and the VXLAN
// device (the guests' overlay traffic, before encapsulation).
type Traffic struct {
	UnderlaySent, UnderlayReceived int64
	// OverlaySent and OverlayReceived are the guests' overlay traffic as
	// it crosses the underlay: the VXLAN device's bytes plus VXLANOverhead
	// per packet.
	OverlaySent, OverlayReceived int64
}

// Traffic reads the counters of the overlay's devices.
func (o *Overlay) Traffic() (Traffic, error) {
	var t Traffic
	unders, err := o.underlay()
	if err != nil {
		return t, err
	}
	vx, err := netlink.LinkByName(o.VXLAN)
	if err != nil {
		return t, fmt.Errorf("the VXLAN device %s: %w", o.VXLAN, err)
	}
	vs := vx.Attrs().Statistics
	if vs == nil {
		return t, fmt.Errorf("no counters on %s", o.VXLAN)
	}
	for _, u := range unders { // every path's
		us := u.Attrs().Statistics
		if us == nil {
			return t, fmt.Errorf("no counters on %s", u.Attrs().Name)
		}
		t.UnderlaySent += int64(us.TxBytes)
		t.UnderlayReceived += int64(us.RxBytes)
	}
	t.OverlaySent = int64(vs.TxBytes + vs.TxPackets*VXLANOverhead)
	t.OverlayReceived = int64(vs.RxBytes + vs.RxPackets*VXLANOverhead)
	return t, nil
}
