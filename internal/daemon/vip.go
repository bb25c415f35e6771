package daemon

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/netip"
	"syscall"
	"time"

	"github.com/ferryvm/ferry/internal/agent"
	"github.com/ferryvm/ferry/internal/hostnet"
	"github.com/ferryvm/ferry/internal/vrrp"
)

// VIPConfig is how a host takes part in the API's VRRP group.
type VIPConfig struct {
	Dev      string        // the interface (default: the one holding --advertise)
	VRID     uint8         // default 51
	Priority uint8         // default 100
	Interval time.Duration // default 100 ms
}

// vipHealthy is how recently the host's lease must have been renewed for
// it to hold the API's address at its full priority.
const vipHealthy = time.Second

// serveVIP serves the API on its virtual address too, and runs this host's
// VRRP router for it: the host bids with its priority while its lease
// renews (its API can answer for the cluster), and with priority 1 while
// it does not, so that a healthy host takes the address over.
func (h *Host) serveVIP(ctx context.Context, srv *http.Server, ag *agent.Agent) (stop func(), err error) {
	cfg := h.VIP
	if cfg.VRID == 0 {
		cfg.VRID = 51
	}
	if cfg.Priority == 0 {
		cfg.Priority = 100
	}
	if cfg.Interval == 0 {
		cfg.Interval = 100 * time.Millisecond
	}
	if cfg.Dev == "" {
		dev, err := hostnet.DeviceWithAddr(h.Advertise)
		if err != nil {
			return nil, fmt.Errorf("--api-vip: %w (say --vrrp-dev)", err)
		}
		cfg.Dev = dev
	}
	_, port, _ := net.SplitHostPort(h.Listen)
	// IP_FREEBIND: the address is on this host only while it holds it.
	lc := net.ListenConfig{Control: func(_, _ string, c syscall.RawConn) error {
		var serr error
		err := c.Control(func(fd uintptr) { serr = syscall.SetsockoptInt(int(fd), syscall.IPPROTO_IP, syscall.IP_FREEBIND, 1) })
		if err != nil {
			return err
		}
		return serr
	}}
	ln, err := lc.Listen(ctx, "tcp", net.JoinHostPort(h.APIVIP.String(), port))
	if err != nil {
		return nil, fmt.Errorf("--api-vip: listening on %s: %w", h.APIVIP, err)
	}
	r, err := vrrp.NewRouter(vrrp.Config{Iface: cfg.Dev, VRID: cfg.VRID, Priority: cfg.Priority, Interval: cfg.Interval,
		Addresses: []netip.Addr{h.APIVIP}, Preempt: true, Log: h.Log.With("part", "vrrp")})
	if err != nil {
		ln.Close()
		return nil, err
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{}, 2)
	go func() {
		defer func() { done <- struct{}{} }()
		srv.ServeTLS(ln, "", "")
	}()
	go func() {
		defer func() { done <- struct{}{} }()
		if err := r.Run(ctx); err != nil && ctx.Err() == nil {
			h.Log.Error("vrrp for the API's virtual address", "err", err)
		}
	}()
	go func() {
		t := time.NewTicker(250 * time.Millisecond)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				if ag.LeaseAge() < vipHealthy {
					r.SetPriority(cfg.Priority)
				} else {
					r.SetPriority(1)
				}
			}
		}
	}()
	h.Log.Info("API virtual address", "vip", h.APIVIP, "dev", cfg.Dev, "vrid", cfg.VRID, "priority", cfg.Priority, "port", port)
	return func() {
		cancel() // the router releases the address
		ln.Close()
		<-done
		<-done
	}, nil
}
