package linkemu

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"net"
	"slices"
	"time"
)

// Measured is what a link delivered between two namespaces.
type Measured struct {
	RTTMin    time.Duration `json:"rtt_min"`
	RTTMedian time.Duration `json:"rtt_median"`
	RTTP99    time.Duration `json:"rtt_p99"`
	// Loss is the share of probes that did not come back (both ways).
	Loss   float64 `json:"loss"`
	Probes int     `json:"probes"`
	// Throughput is one TCP stream's goodput from a to b, bits per second.
	Throughput float64 `json:"throughput_bits"`
}

// Probe sends n UDP probes every interval from namespace a to an echo in
// namespace b (at bAddr) and times those that come back.
func Probe(ctx context.Context, a, b, bAddr string, n int, interval time.Duration) (Measured, error) {
	var echo *net.UDPConn
	if err := InNS(b, func() (err error) {
		echo, err = net.ListenUDP("udp4", &net.UDPAddr{IP: net.ParseIP(bAddr)})
		return err
	}); err != nil {
		return Measured{}, err
	}
	defer echo.Close()
	go func() {
		buf := make([]byte, 64)
		for {
			k, from, err := echo.ReadFromUDP(buf)
			if err != nil {
				return
			}
			echo.WriteToUDP(buf[:k], from)
		}
	}()
	var conn *net.UDPConn
	if err := InNS(a, func() (err error) {
		conn, err = net.DialUDP("udp4", nil, echo.LocalAddr().(*net.UDPAddr))
		return err
	}); err != nil {
		return Measured{}, err
	}
	defer conn.Close()
	sent := make([]time.Time, n)
	rtts := make([]time.Duration, 0, n)
	done := make(chan struct{})
	go func() {
		defer close(done)
		buf := make([]byte, 64)
		for {
			k, err := conn.Read(buf)
			if err != nil {
				return
			}
			if k >= 8 {
				if i := binary.BigEndian.Uint64(buf); i < uint64(n) && !sent[i].IsZero() {
					rtts = append(rtts, time.Since(sent[i]))
				}
			}
		}
	}()
	msg := make([]byte, 32)
	for i := 0; i < n && ctx.Err() == nil; i++ {
		binary.BigEndian.PutUint64(msg, uint64(i))
		sent[i] = time.Now()
		conn.Write(msg)
		time.Sleep(interval)
	}
	time.Sleep(time.Second) // the last answers, on a slow link
	conn.Close()
	<-done
	m := Measured{Probes: n, Loss: 1 - float64(len(rtts))/float64(n)}
	if len(rtts) > 0 {
		slices.Sort(rtts)
		m.RTTMin, m.RTTMedian, m.RTTP99 = rtts[0], rtts[len(rtts)/2], rtts[len(rtts)*99/100]
	}
	return m, ctx.Err()
}

// Throughput streams from namespace a to namespace b (at bAddr) for d over
// one TCP connection and returns the goodput the receiver counted, in bits
// per second, over the last three quarters of d (after slow start).
func Throughput(ctx context.Context, a, b, bAddr string, d time.Duration) (float64, error) {
	var ln net.Listener
	if err := InNS(b, func() (err error) {
		ln, err = net.Listen("tcp4", net.JoinHostPort(bAddr, "0"))
		return err
	}); err != nil {
		return 0, err
	}
	defer ln.Close()
	type result struct {
		bits float64
		err  error
	}
	res := make(chan result, 1)
	warm := d / 4
	go func() {
		c, err := ln.Accept()
		if err != nil {
			res <- result{err: err}
			return
		}
		defer c.Close()
		buf := make([]byte, 256<<10)
		start := time.Now()
		var counted int64
		var from time.Time
		for {
			k, err := c.Read(buf)
			if time.Since(start) >= warm {
				if from.IsZero() {
					from = time.Now()
				}
				counted += int64(k)
			}
			if err != nil {
				if errors.Is(err, io.EOF) && !from.IsZero() {
					res <- result{bits: float64(counted*8) / time.Since(from).Seconds()}
				} else {
					res <- result{err: fmt.Errorf("receiving: %v", err)}
				}
				return
			}
		}
	}()
	var c net.Conn
	if err := InNS(a, func() (err error) {
		var dl net.Dialer
		c, err = dl.DialContext(ctx, "tcp4", ln.Addr().String())
		return err
	}); err != nil {
		return 0, err
	}
	buf := make([]byte, 256<<10)
	end := time.Now().Add(d)
	for time.Now().Before(end) && ctx.Err() == nil {
		c.SetWriteDeadline(end)
		if _, err := c.Write(buf); err != nil && !errors.Is(err, context.DeadlineExceeded) && !isTimeout(err) {
			c.Close()
			return 0, err
		}
	}
	c.Close()
	select {
	case r := <-res:
		return r.bits, r.err
	case <-time.After(30 * time.Second):
		return 0, errors.New("the receiver never saw the end of the stream")
	}
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}
