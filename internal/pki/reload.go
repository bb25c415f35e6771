package pki

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// Reloader serves a certificate from files and picks up a replaced pair on
// the next handshake, so that a renewed certificate is used without
// restarting anything (the agent, or the guests with it).
type Reloader struct {
	certFile, keyFile string

	mu      sync.Mutex
	mtime   time.Time
	current *tls.Certificate
}

// NewReloader loads certFile/keyFile; they must be a valid pair now.
func NewReloader(certFile, keyFile string) (*Reloader, error) {
	r := &Reloader{certFile: certFile, keyFile: keyFile}
	if _, err := r.get(); err != nil {
		return nil, err
	}
	return r, nil
}

// get returns the current pair, reloading it when the certificate file
// changed. A pair caught half-written keeps the previous one in use.
func (r *Reloader) get() (*tls.Certificate, error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	st, err := os.Stat(r.certFile)
	if err == nil && r.current != nil && st.ModTime().Equal(r.mtime) {
		return r.current, nil
	}
	c, lerr := tls.LoadX509KeyPair(r.certFile, r.keyFile)
	if lerr != nil {
		if r.current != nil {
			return r.current, nil
		}
		return nil, fmt.Errorf("pki: %s: %w", filepath.Base(r.certFile), lerr)
	}
	if err == nil {
		r.mtime = st.ModTime()
	}
	r.current = &c
	return r.current, nil
}

// Leaf is the certificate currently served.
func (r *Reloader) Leaf() (*x509.Certificate, error) {
	c, err := r.get()
	if err != nil {
		return nil, err
	}
	return x509.ParseCertificate(c.Certificate[0])
}

// GetCertificate is for tls.Config of a server.
func (r *Reloader) GetCertificate(*tls.ClientHelloInfo) (*tls.Certificate, error) { return r.get() }

// GetClientCertificate is for tls.Config of a client.
func (r *Reloader) GetClientCertificate(*tls.CertificateRequestInfo) (*tls.Certificate, error) {
	return r.get()
}

// ReplacePair writes a new certificate and key over certFile/keyFile: the
// key first, then the certificate (which a Reloader watches), each
// atomically.
func ReplacePair(certFile, keyFile string, certPEM, keyPEM []byte) error {
	if _, err := tls.X509KeyPair(certPEM, keyPEM); err != nil {
		return fmt.Errorf("pki: the new certificate does not match its key: %w", err)
	}
	tmp := keyFile + ".tmp"
	if err := os.WriteFile(tmp, keyPEM, 0o600); err != nil {
		return err
	}
	if err := os.Rename(tmp, keyFile); err != nil {
		return err
	}
	return WriteFileAtomic(certFile, certPEM)
}

// NeedsRenewal reports whether c should be renewed: less than before is
// left, or, with before 0, a third of its lifetime or less.
func NeedsRenewal(c *x509.Certificate, now time.Time, before time.Duration) bool {
	if before <= 0 {
		before = c.NotAfter.Sub(c.NotBefore) / 3
	}
	return c.NotAfter.Sub(now) < before
}
