// Package tunnel carries a live migration's stream between two hosts'
// agents over mutual TLS: QEMU on each side talks to a local unix socket,
// and the agents carry every connection QEMU opens (the main stream, multifd
// channels, the post-copy preempt channel, a recovery stream) over TLS 1.3.
//
// Why not QEMU's own TLS channel: it encrypts every element of the stream's
// iovec as a TLS record of its own, and RAM goes out as a page header and a
// page — two records per 4 KiB page, and on the receiving side two system
// calls per record (measured: 41,454 sendmsg and 82,648 recvmsg for 20,603
// pages; docs/BENCHMARKS.md). Carried here, the stream goes in 16 KiB
// records read and written in large blocks. The security properties are the
// same: only the migration CA's certificates are accepted, the target admits
// only the certificate of the migration's source (its exact subject) unless
// revoked, the source accepts only a certificate for the target's name, and
// QEMU's own sockets are local to the host (in the agent's run directory).
package tunnel

import (
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/ferryvm/ferry/internal/pki"
)

// Credentials are a host's migration certificate, the migration CA and its
// revocation list, read from the QEMU-layout directory pki.IssueMigration
// writes (server-cert.pem, server-key.pem, ca-cert.pem, ca-crl.pem).
type Credentials struct {
	Cert tls.Certificate
	CA   *x509.Certificate
	Pool *x509.CertPool
	CRL  *pki.RevocationFile
}

// LoadCredentials reads a host's migration credentials from dir.
func LoadCredentials(dir string) (*Credentials, error) {
	cert, err := tls.LoadX509KeyPair(filepath.Join(dir, "server-cert.pem"), filepath.Join(dir, "server-key.pem"))
	if err != nil {
		return nil, fmt.Errorf("tunnel: migration certificate: %w", err)
	}
	ca, err := pki.LoadCert(filepath.Join(dir, "ca-cert.pem"))
	if err != nil {
		return nil, fmt.Errorf("tunnel: migration CA: %w", err)
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return &Credentials{Cert: cert, CA: ca, Pool: pool, CRL: pki.NewRevocationFile(filepath.Join(dir, "ca-crl.pem"), ca)}, nil
}

// checkPeer refuses a verified peer certificate that is revoked or, when
// wantCN is set, is not the migration certificate of host wantCN.
func (c *Credentials) checkPeer(cs tls.ConnectionState, wantCN string) error {
	if len(cs.PeerCertificates) == 0 {
		return errors.New("tunnel: no peer certificate")
	}
	leaf := cs.PeerCertificates[0]
	if c.CRL.Revoked(leaf) {
		return fmt.Errorf("tunnel: certificate %s of %q is revoked", pki.SerialHex(leaf), leaf.Subject.CommonName)
	}
	if wantCN == "" {
		return nil
	}
	if o := leaf.Subject.Organization; len(o) != 1 || o[0] != pki.MigrationOrg || leaf.Subject.CommonName != wantCN {
		return fmt.Errorf("tunnel: %s may not send this stream, only %s", subject(leaf), pki.MigrationDN(wantCN))
	}
	return nil
}

func subject(c *x509.Certificate) string {
	return "O=" + strings.Join(c.Subject.Organization, "+") + ",CN=" + c.Subject.CommonName
}

// serverConfig is the target's TLS: its migration certificate, and only a
// client certificate of the migration CA whose subject is source's.
func (c *Credentials) serverConfig(source string) *tls.Config {
	return &tls.Config{
		MinVersion:                  tls.VersionTLS13,
		Certificates:                []tls.Certificate{c.Cert},
		ClientAuth:                  tls.RequireAndVerifyClientCert,
		ClientCAs:                   c.Pool,
		VerifyConnection:            func(cs tls.ConnectionState) error { return c.checkPeer(cs, source) },
		DynamicRecordSizingDisabled: true,
	}
}

// clientConfig is the source's TLS: its migration certificate, and only a
// server certificate of the migration CA for the target's name.
func (c *Credentials) clientConfig(target string) *tls.Config {
	return &tls.Config{
		MinVersion:                  tls.VersionTLS13,
		Certificates:                []tls.Certificate{c.Cert},
		RootCAs:                     c.Pool,
		ServerName:                  target,
		VerifyConnection:            func(cs tls.ConnectionState) error { return c.checkPeer(cs, target) },
		DynamicRecordSizingDisabled: true,
	}
}

// bufSize is the block in which the stream is read and written: large
// enough that a 16 KiB TLS record is rarely split across calls.
const bufSize = 256 << 10

// pipe carries a local connection (QEMU's) over a TLS one (tc, over bc)
// both ways until both directions have ended; a direction that ends cleanly
// half-closes the other side, an error closes both. It returns the bytes
// carried each way.
func pipe(local net.Conn, tc *tls.Conn, bc *batchConn) (out, in int64) {
	type result struct {
		n   int64
		err error
	}
	outc, inc := make(chan result, 1), make(chan result, 1)
	go func() {
		n, err := io.CopyBuffer(tlsWriter{tc, bc}, onlyReader{local}, make([]byte, bufSize))
		if err == nil {
			// crypto/tls sends close_notify under a write deadline it
			// then expires: it must go out directly, not gathered.
			if err = bc.unbatch(); err == nil {
				err = tc.CloseWrite()
			}
		}
		outc <- result{n, err}
	}()
	go func() {
		n, err := copyFromTLS(onlyWriter{local}, tc, bc)
		if err == nil {
			err = closeWrite(local)
		}
		inc <- result{n, err}
	}()
	for i := 0; i < 2; i++ {
		var r result
		select {
		case r = <-outc:
			out, outc = r.n, nil
		case r = <-inc:
			in, inc = r.n, nil
		}
		if r.err != nil {
			local.Close()
			tc.Close()
		}
	}
	local.Close()
	tc.Close()
	return out, in
}

func closeWrite(c net.Conn) error {
	switch c := c.(type) {
	case *tls.Conn:
		return c.CloseWrite()
	case interface{ CloseWrite() error }:
		return c.CloseWrite()
	}
	return nil
}

// onlyReader and onlyWriter hide ReadFrom/WriteTo so io.CopyBuffer uses
// the large buffer (a TCP or unix conn would otherwise splice in 32 KiB).
type onlyReader struct{ io.Reader }
type onlyWriter struct{ io.Writer }

// connSet tracks an end's open connections so that Close can end them.
type connSet struct {
	mu     sync.Mutex
	conns  map[net.Conn]bool
	closed bool
}

// add tracks cs, or closes them if the end is closed already.
func (s *connSet) add(cs ...net.Conn) bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		for _, c := range cs {
			c.Close()
		}
		return false
	}
	if s.conns == nil {
		s.conns = map[net.Conn]bool{}
	}
	for _, c := range cs {
		s.conns[c] = true
	}
	return true
}

func (s *connSet) remove(cs ...net.Conn) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, c := range cs {
		delete(s.conns, c)
	}
}

// closeAll marks the set closed and ends every connection in it.
func (s *connSet) closeAll() {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.closed = true
	for c := range s.conns {
		c.Close()
	}
}

// removeStale removes a socket file left by an earlier run.
func removeStale(path string) {
	if st, err := os.Lstat(path); err == nil && st.Mode()&os.ModeSocket != 0 {
		os.Remove(path)
	}
}

func parseLeaf(c tls.Certificate) (*x509.Certificate, error) {
	if c.Leaf != nil {
		return c.Leaf, nil
	}
	return x509.ParseCertificate(c.Certificate[0])
}
