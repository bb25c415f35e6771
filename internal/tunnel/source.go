package tunnel

import (
	"context"
	"crypto/tls"
	"log/slog"
	"net"
	"sync"
	"sync/atomic"
	"time"
)

// dialTimeout bounds reaching the target. It is long because a post-copy
// recovery may start while the link is still down: the connection attempt
// then succeeds by itself once the link is back (TCP retries its SYN).
const dialTimeout = 2 * time.Minute

// Source is the sending end of a migration tunnel: a unix socket the source
// QEMU migrates to, each of whose connections is carried to the target's
// end over TLS.
type Source struct {
	ln     *net.UnixListener
	path   string
	creds  *Credentials
	name   string // the target host, whose certificate must name it
	log    *slog.Logger
	ctx    context.Context
	cancel context.CancelFunc

	mu    sync.Mutex
	addr  string // the target's end
	conns connSet
	wg    sync.WaitGroup

	// Bytes counts what was carried from QEMU to the target.
	Bytes atomic.Int64
	// Failed counts connections that could not reach the target.
	Failed atomic.Int64
}

// Send opens the source end: QEMU migrates to "unix:"+path, and each of its
// connections is carried to addr, where host target must answer.
func Send(path, addr string, creds *Credentials, target string, log *slog.Logger) (*Source, error) {
	removeStale(path)
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: path, Net: "unix"})
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithCancel(context.Background())
	s := &Source{ln: ln, path: path, creds: creds, name: target, log: log, addr: addr, ctx: ctx, cancel: cancel}
	s.wg.Add(1)
	go s.accept()
	return s, nil
}

// URI is what the source QEMU migrates to.
func (s *Source) URI() string { return "unix:" + s.path }

// SetTarget sends new connections to another target end (a post-copy
// recovery's).
func (s *Source) SetTarget(addr string) {
	s.mu.Lock()
	s.addr = addr
	s.mu.Unlock()
}

func (s *Source) accept() {
	defer s.wg.Done()
	for {
		q, err := s.ln.Accept()
		if err != nil {
			return
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.serve(q)
		}()
	}
}

func (s *Source) serve(q net.Conn) {
	s.mu.Lock()
	addr := s.addr
	s.mu.Unlock()
	if !s.conns.add(q) {
		return
	}
	d := &net.Dialer{Timeout: dialTimeout, KeepAlive: 5 * time.Second}
	ctx, cancel := context.WithTimeout(s.ctx, dialTimeout)
	defer cancel()
	raw, err := d.DialContext(ctx, "tcp", addr)
	var bc *batchConn
	var c *tls.Conn
	if err == nil {
		bc = newBatchConn(raw)
		c = tls.Client(bc, s.creds.clientConfig(s.name))
		if err = c.HandshakeContext(ctx); err != nil {
			raw.Close()
		}
	}
	if err != nil {
		s.Failed.Add(1)
		s.log.Warn("migration tunnel: reaching the target", "addr", addr, "err", err)
		s.conns.remove(q)
		q.Close()
		return
	}
	if !s.conns.add(c) {
		return
	}
	bc.batch()
	n, _ := pipe(q, c, bc)
	s.Bytes.Add(n)
	s.conns.remove(q, c)
}

// Close stops accepting, ends every connection and removes the socket.
func (s *Source) Close() {
	s.conns.closeAll()
	s.cancel()
	s.ln.Close()
	s.wg.Wait()
	removeStale(s.path)
}
