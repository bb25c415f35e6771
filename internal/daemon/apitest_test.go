package daemon

import (
	"crypto/tls"
	"log/slog"
	"net/http"
	"testing"

	"github.com/ferryvm/ferry/internal/apiserver"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/store"
	"github.com/ferryvm/ferry/internal/store/storetest"
)

// apiHarness is the API as an agent serves it, on a real etcd: host n1's
// certificates (cluster and migration), the user CA with an admin, and the
// server on a loopback port.
type apiHarness struct {
	dir  string // the PKI directory
	st   *store.Store
	srv  *apiserver.Server
	addr string // host:port
}

func newAPIHarness(t *testing.T) *apiHarness {
	t.Helper()
	dir := t.TempDir()
	ca, err := pki.EnsureCA(dir, "test CA")
	if err != nil {
		t.Fatal(err)
	}
	mca, err := pki.EnsureMigrationCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := ca.EnsureLeaf(dir, pki.ServerCert, pki.ServerKey, "n1", pki.RoleNode, []string{"127.0.0.1", "n1"}); err != nil {
		t.Fatal(err)
	}
	uca, err := pki.EnsureUserCA(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := uca.EnsureLeaf(dir, pki.AdminCert, pki.AdminKey, "admin", pki.RoleAdmin, nil); err != nil {
		t.Fatal(err)
	}
	if err := mca.EnsureMigration(dir, "n1", []string{"n1", "198.18.0.11"}); err != nil {
		t.Fatal(err)
	}
	h := &apiHarness{dir: dir, st: storetest.New(t)}
	h.srv = apiserver.New(h.st, nil, slog.Default())
	h.srv.CAs = &apiserver.Signers{Cluster: ca, Migration: mca, Users: uca}
	h.srv.ClusterCA = ca.Cert
	// Served as the agent serves it (httptest's StartTLS would add a
	// certificate of its own, preferred to GetCertificate without SNI).
	srvTLS, err := pki.ServerTLS(dir)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := tls.Listen("tcp", "127.0.0.1:0", srvTLS)
	if err != nil {
		t.Fatal(err)
	}
	hs := &http.Server{Handler: h.srv.Handler()}
	go hs.Serve(ln)
	t.Cleanup(func() { hs.Close() })
	h.addr = ln.Addr().String()
	return h
}
