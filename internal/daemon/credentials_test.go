package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/client"
	"github.com/ferryvm/ferry/internal/errdefs"
	"github.com/ferryvm/ferry/internal/pki"
)

// A host renews its certificates through the API (real etcd behind it):
// new certificates for new keys, the same identity, the old ones revoked,
// and the API server itself serving a replaced certificate without a
// restart.
// (Long on purpose: a scenario or table read top to bottom; split, its story would scatter.)
func TestRenewCertificates(t *testing.T) {
	h := newAPIHarness(t)
	dir, st, addr := h.dir, h.st, h.addr
	serials := func() []string {
		s, err := pki.Serials(filepath.Join(dir, pki.ServerCert), filepath.Join(dir, pki.MigrationDir, "server-cert.pem"))
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	old := serials()
	oldCert, _ := os.ReadFile(filepath.Join(dir, pki.ServerCert))
	oldKey, _ := os.ReadFile(filepath.Join(dir, pki.ServerKey))

	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	lease, err := st.GrantLease(ctx, 60*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if err := st.PutNode(ctx, api.Node{Name: "n1", CertSerials: old, Heartbeat: time.Now()}, lease); err != nil {
		t.Fatal(err)
	}
	ts := struct{ URL string }{"https://" + addr}
	served := func() string {
		cfg, _ := pki.ClientTLS(dir, pki.AdminCert, pki.AdminKey)
		c, err := tls.Dial("tcp", addr, cfg)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		return pki.SerialHex(c.ConnectionState().PeerCertificates[0])
	}
	if served() != old[0] {
		t.Fatal("the server does not serve the host's certificate")
	}

	if err := renewOnce(ctx, dir, addr); err != nil {
		t.Fatal(err)
	}
	now := serials()
	if now[0] == old[0] || now[1] == old[1] {
		t.Fatalf("serials did not change: %v -> %v", old, now)
	}
	rl, err := pki.NewReloader(filepath.Join(dir, pki.ServerCert), filepath.Join(dir, pki.ServerKey))
	if err != nil {
		t.Fatal(err)
	}
	leaf, _ := rl.Leaf()
	if leaf.Subject.CommonName != "n1" || leaf.VerifyHostname("127.0.0.1") != nil || leaf.VerifyHostname("n1") != nil {
		t.Errorf("the renewed certificate changed identity: %v %v %v", leaf.Subject, leaf.IPAddresses, leaf.DNSNames)
	}
	for _, s := range old {
		if gone, err := st.IsRevoked(ctx, s); err != nil || !gone {
			t.Errorf("replaced certificate %s not revoked (%v)", s, err)
		}
	}
	// The running server picked up its new certificate.
	if got := served(); got != now[0] {
		t.Errorf("the server still serves %s, not the renewed %s", got, now[0])
	}
	// The old certificate no longer calls the API; the new one does.
	call := func(certPEM, keyPEM []byte) error {
		cert, err := tls.X509KeyPair(certPEM, keyPEM)
		if err != nil {
			t.Fatal(err)
		}
		cfg, _ := pki.ClientTLS(dir, pki.AdminCert, pki.AdminKey)
		cfg.GetClientCertificate = func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &cert, nil }
		_, err = client.New(ts.URL, cfg).ListNodes(ctx)
		return err
	}
	if err := call(oldCert, oldKey); !errors.Is(err, errdefs.ErrUnauthenticated) {
		t.Errorf("the replaced certificate still calls the API: %v", err)
	}
	newCert, _ := os.ReadFile(filepath.Join(dir, pki.ServerCert))
	newKey, _ := os.ReadFile(filepath.Join(dir, pki.ServerKey))
	if err := call(newCert, newKey); err != nil {
		t.Errorf("the renewed certificate is refused: %v", err)
	}
	// Only hosts renew here.
	cfg, _ := pki.ClientTLS(dir, pki.AdminCert, pki.AdminKey)
	resp, err := (&http.Client{Transport: &http.Transport{TLSClientConfig: cfg}}).Post(ts.URL+"/v1/renew", "application/json", strings.NewReader(`{"csr":"","migration_csr":""}`))
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusForbidden {
		t.Errorf("an admin certificate renewing: %s", resp.Status)
	}
}
