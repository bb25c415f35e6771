package simcluster

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"path/filepath"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/client"
	"github.com/ferryvm/ferry/internal/apiserver"
	"github.com/ferryvm/ferry/internal/errdefs"
	"github.com/ferryvm/ferry/internal/pki"
	"github.com/ferryvm/ferry/internal/store"
)

// ServeAPI serves the cluster's API (mutual TLS, on loopback, with its own
// etcd client) until ctx ends, and returns an admin's client for it.
func (c *Cluster) ServeAPI(ctx context.Context) (*client.Client, error) {
	dir := filepath.Join(c.cfg.Dir, "pki")
	ca, err := pki.EnsureCA(dir, "ferry simulated cluster CA")
	if err != nil {
		return nil, err
	}
	if err := ca.EnsureLeaf(dir, pki.ServerCert, pki.ServerKey, "api", pki.RoleNode, []string{"127.0.0.1", "localhost"}); err != nil {
		return nil, err
	}
	uca, err := pki.EnsureUserCA(dir)
	if err != nil {
		return nil, err
	}
	if err := uca.EnsureLeaf(dir, pki.AdminCert, pki.AdminKey, "admin", pki.RoleAdmin, nil); err != nil {
		return nil, err
	}
	tlsCfg, err := pki.ServerTLS(dir)
	if err != nil {
		return nil, err
	}
	st, err := store.Open(ctx, c.cfg.Endpoints, c.cfg.TLS)
	if err != nil {
		return nil, err
	}
	srv := apiserver.New(st, func(vm *api.VM) (string, error) {
		return "", errdefs.New(errdefs.ErrUnavailable, "simulated guests have no console")
	}, c.cfg.Log)
	srv.ClusterCA = ca.Cert
	srv.Mirror = st.Mirror(ctx)
	srv.CAs = &apiserver.Signers{Cluster: ca, Users: uca}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		st.Close()
		return nil, err
	}
	hs := &http.Server{Handler: srv.Handler(), TLSConfig: tlsCfg, ReadHeaderTimeout: 10 * time.Second}
	go func() {
		if err := hs.ServeTLS(ln, "", ""); err != nil && !errors.Is(err, http.ErrServerClosed) {
			c.cfg.Log.Error("simulated cluster's API", "err", err)
		}
	}()
	go func() {
		<-ctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		hs.Shutdown(sctx)
		cancel()
		st.Close()
	}()
	cl, err := client.FromDataDir(c.cfg.Dir, "https://"+ln.Addr().String())
	if err != nil {
		return nil, fmt.Errorf("simulated cluster's API client: %w", err)
	}
	return cl, nil
}
