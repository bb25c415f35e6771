package vrrp

import (
	"encoding/binary"
	"errors"
	"fmt"
	"net/netip"
)

// Protocol is VRRP's IP protocol number; Group the IPv4 multicast group
// its advertisements go to (RFC 5798, 5.1.1).
const (
	Protocol = 112
	Group    = "224.0.0.18"
)

// Advert is one VRRPv3 advertisement (RFC 5798, 5.2): the router's
// priority for the virtual router VRID, how often it advertises (in
// centiseconds) and the virtual addresses.
type Advert struct {
	VRID      uint8
	Priority  uint8
	Interval  uint16 // centiseconds, 12 bits
	Addresses []netip.Addr
}

const headerLen = 8

// Marshal encodes a as sent from src to dst (the checksum covers an IPv4
// pseudo-header in version 3).
func (a Advert) Marshal(src, dst netip.Addr) ([]byte, error) {
	if a.Interval == 0 || a.Interval > 0x0fff {
		return nil, fmt.Errorf("vrrp: interval %d centiseconds out of 1..4095", a.Interval)
	}
	if len(a.Addresses) == 0 || len(a.Addresses) > 255 {
		return nil, errors.New("vrrp: an advertisement carries 1..255 addresses")
	}
	b := make([]byte, headerLen, headerLen+4*len(a.Addresses))
	b[0] = 3<<4 | 1 // version 3, type advertisement
	b[1] = a.VRID
	b[2] = a.Priority
	b[3] = uint8(len(a.Addresses))
	binary.BigEndian.PutUint16(b[4:], a.Interval&0x0fff)
	for _, ad := range a.Addresses {
		if !ad.Is4() {
			return nil, fmt.Errorf("vrrp: %s is not IPv4", ad)
		}
		v := ad.As4()
		b = append(b, v[:]...)
	}
	binary.BigEndian.PutUint16(b[6:], checksum(b, src, dst))
	return b, nil
}

// Parse decodes an advertisement that came from src to dst, checking its
// version, type and checksum.
func Parse(b []byte, src, dst netip.Addr) (Advert, error) {
	var a Advert
	if len(b) < headerLen {
		return a, fmt.Errorf("vrrp: %d bytes is shorter than a header", len(b))
	}
	if v, t := b[0]>>4, b[0]&0x0f; v != 3 || t != 1 {
		return a, fmt.Errorf("vrrp: version %d type %d (want 3, advertisement)", v, t)
	}
	n := int(b[3])
	if len(b) < headerLen+4*n {
		return a, fmt.Errorf("vrrp: %d addresses announced in %d bytes", n, len(b))
	}
	b = b[:headerLen+4*n]
	if checksum(b, src, dst) != 0 {
		return a, errors.New("vrrp: bad checksum")
	}
	a.VRID, a.Priority = b[1], b[2]
	a.Interval = binary.BigEndian.Uint16(b[4:]) & 0x0fff
	for i := range n {
		a.Addresses = append(a.Addresses, netip.AddrFrom4([4]byte(b[headerLen+4*i:headerLen+4*i+4])))
	}
	return a, nil
}

// checksum is the Internet checksum of the pseudo-header (src, dst, zero,
// protocol, length) and b; over a message that holds its own checksum it
// is zero when that is right.
func checksum(b []byte, src, dst netip.Addr) uint16 {
	var sum uint32
	add := func(p []byte) {
		for i := 0; i+1 < len(p); i += 2 {
			sum += uint32(binary.BigEndian.Uint16(p[i:]))
		}
		if len(p)%2 == 1 {
			sum += uint32(p[len(p)-1]) << 8
		}
	}
	s, d := src.As4(), dst.As4()
	add(s[:])
	add(d[:])
	sum += Protocol + uint32(len(b))
	add(b)
	for sum>>16 != 0 {
		sum = sum&0xffff + sum>>16
	}
	return ^uint16(sum)
}
