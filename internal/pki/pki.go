// Package pki makes and loads the cluster's certificates: a CA generated on
// first start, server certificates for API listeners and client certificates
// whose Organization carries the holder's role.
package pki

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"
)

// File names inside a PKI directory.
const (
	CACert     = "ca.crt"
	CAKey      = "ca.key"
	ServerCert = "server.crt"
	ServerKey  = "server.key"
	AdminCert  = "admin.crt"
	AdminKey   = "admin.key"
	// UserCACert/UserCAKey: the CA of people's and tools' certificates
	// (roles), apart from the cluster CA of hosts. etcd trusts only the
	// cluster CA, so no user certificate, whatever its role, reaches etcd's
	// client or peer ports; the API trusts both.
	UserCACert = "user-ca.crt"
	UserCAKey  = "user-ca.key"
)

// CA is a certificate authority held in memory.
type CA struct {
	Cert *x509.Certificate
	Key  *ecdsa.PrivateKey
	PEM  []byte
}

// EnsureCA loads the CA from dir, creating it if there is none.
func EnsureCA(dir, commonName string) (*CA, error) {
	return ensureCA(dir, CACert, CAKey, commonName)
}

func ensureCA(dir, certFile, keyFile, commonName string) (*CA, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, err
	}
	cp, kp := filepath.Join(dir, certFile), filepath.Join(dir, keyFile)
	if _, err := os.Stat(cp); err == nil {
		return loadCA(cp, kp)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, err
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: commonName, Organization: []string{"ferry"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(10, 0, 0),
		IsCA:                  true,
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, err
	}
	if err := writeKey(kp, key); err != nil {
		return nil, err
	}
	if err := os.WriteFile(cp, pemCert(der), 0o644); err != nil {
		return nil, err
	}
	return loadCA(cp, kp)
}

// LoadCA reads the cluster CA from dir.
func LoadCA(dir string) (*CA, error) {
	return loadCA(filepath.Join(dir, CACert), filepath.Join(dir, CAKey))
}

func loadCA(certPath, keyPath string) (*CA, error) {
	cb, err := os.ReadFile(certPath)
	if err != nil {
		return nil, err
	}
	kb, err := os.ReadFile(keyPath)
	if err != nil {
		return nil, err
	}
	cblk, _ := pem.Decode(cb)
	kblk, _ := pem.Decode(kb)
	if cblk == nil || kblk == nil {
		return nil, errors.New("pki: CA files are not PEM")
	}
	cert, err := x509.ParseCertificate(cblk.Bytes)
	if err != nil {
		return nil, err
	}
	key, err := x509.ParseECPrivateKey(kblk.Bytes)
	if err != nil {
		return nil, err
	}
	return &CA{Cert: cert, Key: key, PEM: cb}, nil
}

// Issue signs a new leaf certificate. Hosts (IPs or DNS names) make it a
// server certificate too; org carries the role of a client.
func (ca *CA) Issue(dir, certFile, keyFile, commonName, org string, hosts []string, validity time.Duration) error {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return err
	}
	tmpl := leafTemplate(commonName, org, hosts, validity)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return err
	}
	if err := writeKey(filepath.Join(dir, keyFile), key); err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, certFile), pemCert(der), 0o644)
}

// EnsureLeaf issues certFile/keyFile unless a valid one exists for at least
// another 30 days.
func (ca *CA) EnsureLeaf(dir, certFile, keyFile, commonName, org string, hosts []string) error {
	if c, err := tls.LoadX509KeyPair(filepath.Join(dir, certFile), filepath.Join(dir, keyFile)); err == nil {
		if leaf, err := x509.ParseCertificate(c.Certificate[0]); err == nil && time.Until(leaf.NotAfter) > 30*24*time.Hour && sameHosts(leaf, hosts) {
			return nil
		}
	}
	return ca.Issue(dir, certFile, keyFile, commonName, org, hosts, 365*24*time.Hour)
}

func sameHosts(c *x509.Certificate, hosts []string) bool {
	for _, h := range hosts {
		if c.VerifyHostname(h) != nil {
			return false
		}
	}
	return true
}

// ServerTLS is the TLS config of an API listener: our certificate, and
// client certificates required and verified against the cluster CA.
// The certificate is re-read when its file is replaced (a renewal).
func ServerTLS(dir string) (*tls.Config, error) {
	rl, err := NewReloader(filepath.Join(dir, ServerCert), filepath.Join(dir, ServerKey))
	if err != nil {
		return nil, fmt.Errorf("pki: server certificate: %w", err)
	}
	pools, err := newClientPools(dir)
	if err != nil {
		return nil, err
	}
	base := &tls.Config{
		GetCertificate: rl.GetCertificate,
		// A certificate, if given, must verify; without one the API serves
		// only the join routes (a host with a token has no certificate yet)
		// and refuses everything else (apiserver.authenticate).
		ClientAuth: tls.VerifyClientCertIfGiven,
		MinVersion: tls.VersionTLS13,
	}
	cfg := base.Clone()
	// Clients verify against the cluster CA and the user CA, whose
	// certificate a host that joined learns from the store after it starts.
	cfg.GetConfigForClient = func(*tls.ClientHelloInfo) (*tls.Config, error) {
		c := base.Clone()
		c.ClientCAs = pools.get()
		return c, nil
	}
	cfg.ClientCAs = pools.get()
	return cfg, nil
}

// clientPools is the pool of CAs an API server admits clients of: the
// cluster CA and, once its file is there, the user CA; re-read when the
// user CA file changes.
type clientPools struct {
	dir     string
	cluster []byte

	mu    sync.Mutex
	stamp fileStamp
	pool  *x509.CertPool
}

func newClientPools(dir string) (*clientPools, error) {
	b, err := os.ReadFile(filepath.Join(dir, CACert))
	if err != nil {
		return nil, fmt.Errorf("pki: CA certificate: %w", err)
	}
	p := &clientPools{dir: dir, cluster: b}
	if p.get() == nil {
		return nil, errors.New("pki: CA certificate is not PEM")
	}
	return p, nil
}

func (p *clientPools) get() *x509.CertPool {
	p.mu.Lock()
	defer p.mu.Unlock()
	path := filepath.Join(p.dir, UserCACert)
	st, err := os.Stat(path)
	var stamp fileStamp
	if err == nil {
		stamp = stampOf(st)
	}
	if p.pool != nil && stamp == p.stamp {
		return p.pool
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(p.cluster) {
		return nil
	}
	if b, err := os.ReadFile(path); err == nil {
		pool.AppendCertsFromPEM(b)
	}
	p.pool, p.stamp = pool, stamp
	return pool
}

// ClientTLS is the TLS config of a client holding certFile/keyFile from
// dir; the certificate is re-read when its file is replaced (a renewal).
func ClientTLS(dir, certFile, keyFile string) (*tls.Config, error) {
	rl, err := NewReloader(filepath.Join(dir, certFile), filepath.Join(dir, keyFile))
	if err != nil {
		return nil, fmt.Errorf("pki: client certificate: %w", err)
	}
	pool, err := caPool(dir)
	if err != nil {
		return nil, err
	}
	return &tls.Config{GetClientCertificate: rl.GetClientCertificate, RootCAs: pool, MinVersion: tls.VersionTLS13}, nil
}

func caPool(dir string) (*x509.CertPool, error) {
	b, err := os.ReadFile(filepath.Join(dir, CACert))
	if err != nil {
		return nil, fmt.Errorf("pki: CA certificate: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, errors.New("pki: CA certificate is not PEM")
	}
	return pool, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	return n
}

func pemCert(der []byte) []byte {
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
}

// KeyPEM is the CA's private key in PEM (for another etcd server).
func (ca *CA) KeyPEM() ([]byte, error) {
	if ca.Key == nil {
		return nil, errors.New("pki: this CA has no key here")
	}
	b, err := x509.MarshalECPrivateKey(ca.Key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: b}), nil
}

func writeKey(path string, key *ecdsa.PrivateKey) error {
	b, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return err
	}
	return os.WriteFile(path, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: b}), 0o600)
}

// EnsureUserCA loads the user CA from dir, creating it if there is none.
func EnsureUserCA(dir string) (*CA, error) {
	return ensureCA(dir, UserCACert, UserCAKey, "ferry user CA")
}

// WriteFileAtomic replaces path with data so that a reader never sees half
// a file (etcd reads the CRL on every connection).
func WriteFileAtomic(path string, data []byte) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}

// TLSFromFiles is a client TLS config from PEM files named by an operator
// (an external etcd's CA, and a client certificate it accepts).
func TLSFromFiles(caFile, certFile, keyFile string) (*tls.Config, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("pki: client certificate: %w", err)
	}
	b, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("pki: CA certificate: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(b) {
		return nil, fmt.Errorf("pki: %s holds no PEM certificate", caFile)
	}
	return &tls.Config{Certificates: []tls.Certificate{cert}, RootCAs: pool, MinVersion: tls.VersionTLS12}, nil
}

// NewKeyAndCSR makes a private key and a certificate request for
// commonName: the key never leaves the machine that asks.
func NewKeyAndCSR(commonName string) (keyPEM, csrPEM []byte, err error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, err
	}
	der, err := x509.CreateCertificateRequest(rand.Reader, &x509.CertificateRequest{Subject: pkix.Name{CommonName: commonName}}, key)
	if err != nil {
		return nil, nil, err
	}
	kb, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}),
		pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE REQUEST", Bytes: der}), nil
}

// MaxCSRBytes bounds a certificate request accepted from a client.
const MaxCSRBytes = 8 << 10

// SignCSR issues a certificate for the key in csrPEM. The subject and names
// are the CA's choice (commonName, org, hosts), never the request's: the
// request only proves possession of the key.
func (ca *CA) SignCSR(csrPEM []byte, commonName, org string, hosts []string, validity time.Duration) (*x509.Certificate, []byte, error) {
	if ca.Key == nil {
		return nil, nil, errors.New("pki: this host holds no CA key and cannot issue certificates")
	}
	csr, err := parseCSR(csrPEM)
	if err != nil {
		return nil, nil, err
	}
	tmpl := leafTemplate(commonName, org, hosts, validity)
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, csr.PublicKey, ca.Key)
	if err != nil {
		return nil, nil, err
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, nil, err
	}
	return cert, pemCert(der), nil
}

// SerialHex is how Ferry names a certificate in its records.
func SerialHex(c *x509.Certificate) string { return c.SerialNumber.Text(16) }

// Serials returns the serial numbers (hex) of the certificates in files.
func Serials(files ...string) ([]string, error) {
	var out []string
	for _, f := range files {
		c, err := LoadCert(f)
		if err != nil {
			return nil, err
		}
		out = append(out, SerialHex(c))
	}
	return out, nil
}

func parseCert(pemBytes []byte) (*x509.Certificate, error) {
	blk, _ := pem.Decode(pemBytes)
	if blk == nil || blk.Type != "CERTIFICATE" {
		return nil, errors.New("pki: not a PEM certificate")
	}
	return x509.ParseCertificate(blk.Bytes)
}

// LoadCACert reads a CA certificate without its key (a host that joined
// with a token verifies with it but cannot sign).
func LoadCACert(path string) (*CA, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c, err := parseCert(b)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return &CA{Cert: c, PEM: b}, nil
}

func parseCSR(csrPEM []byte) (*x509.CertificateRequest, error) {
	if len(csrPEM) > MaxCSRBytes {
		return nil, errors.New("pki: certificate request too large")
	}
	blk, _ := pem.Decode(csrPEM)
	if blk == nil || blk.Type != "CERTIFICATE REQUEST" {
		return nil, errors.New("pki: certificate request is not a PEM CERTIFICATE REQUEST")
	}
	csr, err := x509.ParseCertificateRequest(blk.Bytes)
	if err != nil {
		return nil, fmt.Errorf("pki: certificate request: %w", err)
	}
	if err := csr.CheckSignature(); err != nil {
		return nil, fmt.Errorf("pki: certificate request signature: %w", err)
	}
	if _, ok := csr.PublicKey.(*ecdsa.PublicKey); !ok {
		return nil, errors.New("pki: only ECDSA keys are accepted")
	}
	return csr, nil
}

// ffdhe2048 is the finite-field group of RFC 7919 (as `openssl genpkey
// -genparam -algorithm DH -pkeyopt group:ffdhe2048` prints it).
const ffdhe2048 = `-----BEGIN DH PARAMETERS-----
MIIBCAKCAQEA//////////+t+FRYortKmq/cViAnPTzx2LnFg84tNpWp4TZBFGQz
+8yTnc4kmz75fS/jY2MMddj2gbICrsRhetPfHtXV/WVhJDP1H18GbtCFY2VVPe0a
87VXE15/V8k1mE8McODmi3fipona8+/och3xWKE2rec1MKzKT0g6eXq8CrGCsyT7
YdEIqUuyyOP7uWrat2DX9GgdT0Kj3jlN9K5W7edjcrsZCwenyO4KbXCeAvzhzffi
7MA0BM0oNC9hkXL+nOmFg/+OTxIy7vKBg8P+OxtMb61zO7X8vC7CIAXFjvGDfRaD
ssbzSibBsu/6iGtCOGEoXJf//////////wIBAg==
-----END DH PARAMETERS-----
`

// leafTemplate is a cluster CA leaf: a client certificate whose
// Organization is its role, and a server certificate too when it names
// hosts (IP addresses or DNS names).
func leafTemplate(commonName, org string, hosts []string, validity time.Duration) *x509.Certificate {
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: commonName, Organization: []string{org}},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().Add(validity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageClientAuth},
	}
	if len(hosts) > 0 {
		tmpl.ExtKeyUsage = append(tmpl.ExtKeyUsage, x509.ExtKeyUsageServerAuth)
		for _, h := range hosts {
			if ip := net.ParseIP(h); ip != nil {
				tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
			} else {
				tmpl.DNSNames = append(tmpl.DNSNames, h)
			}
		}
	}
	return tmpl
}

// LoadCert reads one PEM certificate.
func LoadCert(path string) (*x509.Certificate, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c, err := parseCert(b)
	if err != nil {
		return nil, fmt.Errorf("pki: %s: %w", path, err)
	}
	return c, nil
}
