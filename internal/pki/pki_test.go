package pki

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"testing"
)

func TestMutualTLS(t *testing.T) {
	dir := t.TempDir()
	ca, err := EnsureCA(dir, "test CA")
	if err != nil {
		t.Fatal(err)
	}
	// EnsureCA is idempotent: the same CA comes back.
	again, err := EnsureCA(dir, "test CA")
	if err != nil || !again.Cert.Equal(ca.Cert) {
		t.Fatalf("second EnsureCA made a new CA: %v", err)
	}
	if err := ca.EnsureLeaf(dir, ServerCert, ServerKey, "n1", "ferry-node", []string{"127.0.0.1", "localhost"}); err != nil {
		t.Fatal(err)
	}
	if err := ca.EnsureLeaf(dir, AdminCert, AdminKey, "admin", RoleAdmin, nil); err != nil {
		t.Fatal(err)
	}
	if st, _ := os.Stat(filepath.Join(dir, AdminKey)); st.Mode().Perm() != 0o600 {
		t.Errorf("key mode %v", st.Mode().Perm())
	}
	srvTLS, err := ServerTLS(dir)
	if err != nil {
		t.Fatal(err)
	}
	// Not httptest's StartTLS: it would add a certificate of its own, which
	// Go prefers to GetCertificate for clients that send no server name.
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srvTLS)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if len(r.TLS.VerifiedChains) == 0 {
			http.Error(w, "no certificate", http.StatusUnauthorized)
			return
		}
		w.Write([]byte(r.TLS.VerifiedChains[0][0].Subject.Organization[0]))
	})}
	go hs.Serve(ln)
	defer hs.Close()
	srv := struct{ URL string }{"https://" + ln.Addr().String()}

	cliTLS, err := ClientTLS(dir, AdminCert, AdminKey)
	if err != nil {
		t.Fatal(err)
	}
	hc := &http.Client{Transport: &http.Transport{TLSClientConfig: cliTLS}}
	resp, err := hc.Get(srv.URL)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("the admin certificate: %s", resp.Status)
	}

	// A client certificate from another CA is refused.
	other := t.TempDir()
	oca, _ := EnsureCA(other, "other CA")
	oca.EnsureLeaf(other, AdminCert, AdminKey, "admin", RoleAdmin, nil)
	foreign, _ := tls.LoadX509KeyPair(filepath.Join(other, AdminCert), filepath.Join(other, AdminKey))
	pool := x509.NewCertPool()
	pool.AddCert(ca.Cert)
	bad := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool,
		GetClientCertificate: func(*tls.CertificateRequestInfo) (*tls.Certificate, error) { return &foreign, nil }}}}
	if resp, err := bad.Get(srv.URL); err == nil {
		resp.Body.Close()
		t.Fatal("a certificate from another CA was accepted")
	}
	// The server certificate names its hosts.
	leaf, _ := tls.LoadX509KeyPair(filepath.Join(dir, ServerCert), filepath.Join(dir, ServerKey))
	c, _ := x509.ParseCertificate(leaf.Certificate[0])
	if !c.IPAddresses[0].Equal(net.ParseIP("127.0.0.1")) || c.VerifyHostname("localhost") != nil {
		t.Errorf("server certificate hosts: %v %v", c.IPAddresses, c.DNSNames)
	}
}
