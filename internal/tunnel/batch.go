package tunnel

import (
	"bufio"
	"crypto/tls"
	"io"
	"net"
	"sync"
)

// Batching. crypto/tls writes every record (at most 16 KiB) with a system
// call of its own and reads a record's header and body separately; on hosts
// where a system call is expensive (these virtual machines: 68% of the
// tunnel's CPU in a profile, against 22% for AES-GCM) that, not the cipher,
// is what a tunnel costs. So the TCP connection under the TLS one buffers:
// writes are gathered and sent once per block the tunnel carries, reads
// pull up to bufSize from the socket at a time; and decrypted records are
// handed to QEMU in blocks too.

// batchConn is the TCP connection under a tunnel's TLS connection.
type batchConn struct {
	net.Conn
	r *bufio.Reader

	mu       sync.Mutex
	w        []byte
	batching bool // after the handshake: Write gathers until Flush
}

func newBatchConn(c net.Conn) *batchConn {
	return &batchConn{Conn: c, r: bufio.NewReaderSize(c, bufSize)}
}

func (b *batchConn) Read(p []byte) (int, error) { return b.r.Read(p) }

// Buffered is how much has been read from the socket and not consumed.
func (b *batchConn) Buffered() int { return b.r.Buffered() }

func (b *batchConn) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if !b.batching {
		return b.Conn.Write(p)
	}
	b.w = append(b.w, p...)
	return len(p), nil
}

// batch starts gathering writes (once the handshake is done).
func (b *batchConn) batch() {
	b.mu.Lock()
	b.batching = true
	b.mu.Unlock()
}

// unbatch sends what was gathered and writes directly from now on.
func (b *batchConn) unbatch() error {
	err := b.Flush()
	b.mu.Lock()
	b.batching = false
	b.mu.Unlock()
	return err
}

// Flush sends what was gathered.
func (b *batchConn) Flush() error {
	b.mu.Lock()
	defer b.mu.Unlock()
	if len(b.w) == 0 {
		return nil
	}
	_, err := b.Conn.Write(b.w)
	b.w = b.w[:0]
	return err
}

// tlsWriter writes to a TLS connection over a batchConn and flushes the
// gathered records once per write.
type tlsWriter struct {
	c  *tls.Conn
	bc *batchConn
}

func (w tlsWriter) Write(p []byte) (int, error) {
	n, err := w.c.Write(p)
	if err == nil {
		err = w.bc.Flush()
	}
	return n, err
}

// copyFromTLS copies decrypted data from c (over bc) to dst, writing a
// block once nothing more is waiting in the socket buffer or the block is
// full.
func copyFromTLS(dst io.Writer, c *tls.Conn, bc *batchConn) (int64, error) {
	buf := make([]byte, bufSize)
	var total int64
	fill := 0
	for {
		n, err := c.Read(buf[fill:])
		fill += n
		if fill > 0 && (fill == len(buf) || bc.Buffered() == 0 || err != nil) {
			w, werr := dst.Write(buf[:fill])
			total += int64(w)
			fill = 0
			if werr != nil {
				return total, werr
			}
		}
		if err == io.EOF {
			return total, nil
		}
		if err != nil {
			return total, err
		}
	}
}
