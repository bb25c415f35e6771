package linkemu

import (
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// AttachTap opens the TAP device name (made beforehand, e.g. with `ip
// tuntap add dev NAME mode tap`) in network namespace ns ("" for this
// process's). Reads return the frames the namespace sends out of the
// device; writes deliver frames into it. The device has carrier only while
// it is open.
func AttachTap(ns, name string) (*os.File, error) {
	if len(name) >= unix.IFNAMSIZ {
		return nil, fmt.Errorf("tap name %q is too long", name)
	}
	if ns != "" {
		var f *os.File
		err := InNS(ns, func() (err error) {
			f, err = AttachTap("", name)
			return err
		})
		return f, err
	}
	fd, err := unix.Open("/dev/net/tun", unix.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return nil, fmt.Errorf("/dev/net/tun: %w", err)
	}
	var req struct {
		name  [unix.IFNAMSIZ]byte
		flags uint16
		_     [22]byte
	}
	copy(req.name[:], name)
	req.flags = unix.IFF_TAP | unix.IFF_NO_PI
	if _, _, errno := unix.Syscall(unix.SYS_IOCTL, uintptr(fd), uintptr(unix.TUNSETIFF), uintptr(unsafe.Pointer(&req))); errno != 0 {
		unix.Close(fd)
		return nil, fmt.Errorf("attaching to tap %s in %s: %w", name, nsName(ns), errno)
	}
	// Non-blocking before os.NewFile, so that reads go through Go's poller
	// (a TUN fd polls only after TUNSETIFF).
	if err := unix.SetNonblock(fd, true); err != nil {
		unix.Close(fd)
		return nil, err
	}
	return os.NewFile(uintptr(fd), "tap:"+nsName(ns)+"/"+name), nil
}

func nsName(ns string) string {
	if ns == "" {
		return "this namespace"
	}
	return ns
}
