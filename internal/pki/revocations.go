package pki

import (
	"crypto/x509"
	"encoding/pem"
	"fmt"
	"os"
	"sync"
	"syscall"
	"time"
)

// RevocationFile answers whether a certificate is on the revocation list
// kept in a file (DER or PEM), re-reading the file when it changes. etcd
// and QEMU consult their lists only when a connection is made; this is for
// the checks Ferry makes on connections that are already open.
type RevocationFile struct {
	path string
	ca   *x509.Certificate

	mu      sync.Mutex
	stamp   fileStamp
	serials map[string]int // serial (hex) → reason
	err     error          // why the file in place could not be used, if it could not
}

// fileStamp tells versions of a file apart: a list replaced by rename
// (WriteFileAtomic) has a new inode even within one clock tick.
type fileStamp struct {
	mod  time.Time
	size int64
	ino  uint64
}

// NewRevocationFile checks certificates against the list at path, which
// must be signed by ca. A missing file revokes nothing.
func NewRevocationFile(path string, ca *x509.Certificate) *RevocationFile {
	return &RevocationFile{path: path, ca: ca}
}

// Revoked reports whether c is on the list, for any reason. A file that
// cannot be read, parsed or verified leaves the last good list in use (Err
// says why).
func (r *RevocationFile) Revoked(c *x509.Certificate) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.refresh()
	_, ok := r.serials[SerialHex(c)]
	return ok
}

// Distrusted reports whether c is on the list for a reason other than its
// renewal: its holder (a removed host or user) is no longer trusted, and
// connections it made before must end too. A certificate superseded by a
// renewal is refused on new connections only; its holder moves to the new
// one on its own.
func (r *RevocationFile) Distrusted(c *x509.Certificate) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.refresh()
	reason, ok := r.serials[SerialHex(c)]
	return ok && reason != ReasonSuperseded
}

// Err is why the file in place is not in use, or nil.
func (r *RevocationFile) Err() error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.refresh()
	return r.err
}

func stampOf(st os.FileInfo) fileStamp {
	stamp := fileStamp{mod: st.ModTime(), size: st.Size()}
	if sys, ok := st.Sys().(*syscall.Stat_t); ok {
		stamp.ino = sys.Ino
	}
	return stamp
}

func (r *RevocationFile) refresh() {
	st, err := os.Stat(r.path)
	if err != nil {
		if os.IsNotExist(err) {
			r.err = nil
			return
		}
		r.err = err
		return
	}
	stamp := stampOf(st)
	if stamp == r.stamp {
		return
	}
	serials, err := r.load()
	if err != nil {
		r.err = fmt.Errorf("pki: revocation list %s: %w", r.path, err)
		return
	}
	r.stamp, r.serials, r.err = stamp, serials, nil
}

func (r *RevocationFile) load() (map[string]int, error) {
	data, err := os.ReadFile(r.path)
	if err != nil {
		return nil, err
	}
	if b, _ := pem.Decode(data); b != nil {
		data = b.Bytes
	}
	crl, err := x509.ParseRevocationList(data)
	if err != nil {
		return nil, err
	}
	if err := crl.CheckSignatureFrom(r.ca); err != nil {
		return nil, fmt.Errorf("not signed by the CA: %w", err)
	}
	serials := make(map[string]int, len(crl.RevokedCertificateEntries))
	for _, e := range crl.RevokedCertificateEntries {
		serials[e.SerialNumber.Text(16)] = e.ReasonCode
	}
	return serials, nil
}
