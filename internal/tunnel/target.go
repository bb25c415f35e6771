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

// handshakeTimeout bounds a TLS handshake on either end.
const handshakeTimeout = 10 * time.Second

// Target is the receiving end of a migration tunnel: a TLS listener that
// admits only the migration's source and hands each connection to the
// target QEMU's local socket.
type Target struct {
	ln     net.Listener
	cfg    *tls.Config
	source string
	log    *slog.Logger

	mu      sync.Mutex
	backend string // unix socket QEMU listens on (changes on a post-copy recovery)
	conns   connSet
	wg      sync.WaitGroup

	// Refused counts connections that did not pass the TLS checks.
	Refused atomic.Int64
	// Bytes counts what was carried to QEMU.
	Bytes atomic.Int64
}

// Listen opens a target end on addr ("host:0" picks a port) for a migration
// from host source, whose connections go to QEMU's socket at backend.
func Listen(addr string, creds *Credentials, source, backend string, log *slog.Logger) (*Target, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, err
	}
	t := &Target{ln: ln, cfg: creds.serverConfig(source), source: source, backend: backend, log: log}
	t.wg.Add(1)
	go t.accept()
	return t, nil
}

// Addr is the address the source connects to.
func (t *Target) Addr() string { return t.ln.Addr().String() }

// SetBackend points new connections at another QEMU socket (the one a
// post-copy recovery listens on).
func (t *Target) SetBackend(path string) {
	t.mu.Lock()
	t.backend = path
	t.mu.Unlock()
}

func (t *Target) accept() {
	defer t.wg.Done()
	for {
		c, err := t.ln.Accept()
		if err != nil {
			return
		}
		t.wg.Add(1)
		go func() {
			defer t.wg.Done()
			t.serve(c)
		}()
	}
}

func (t *Target) serve(raw net.Conn) {
	bc := newBatchConn(raw)
	c := tls.Server(bc, t.cfg)
	ctx, cancel := context.WithTimeout(context.Background(), handshakeTimeout)
	err := c.HandshakeContext(ctx)
	cancel()
	if err != nil {
		t.Refused.Add(1)
		t.log.Warn("migration tunnel: connection refused", "from", c.RemoteAddr(), "err", err)
		c.Close()
		return
	}
	t.mu.Lock()
	backend := t.backend
	t.mu.Unlock()
	q, err := net.DialTimeout("unix", backend, handshakeTimeout)
	if err != nil {
		t.log.Warn("migration tunnel: QEMU's socket", "path", backend, "err", err)
		c.Close()
		return
	}
	if !t.conns.add(c, q) {
		return
	}
	bc.batch()
	_, n := pipe(q, c, bc)
	t.Bytes.Add(n)
	t.conns.remove(c, q)
}

// Close stops listening and ends every connection.
func (t *Target) Close() {
	t.conns.closeAll()
	t.ln.Close()
	t.wg.Wait()
}
