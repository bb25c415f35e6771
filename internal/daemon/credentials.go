package daemon

import (
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/client"
	"github.com/ferryvm/ferry/internal/pki"
)

func exists(path string) bool { _, err := os.Stat(path); return err == nil }

// hostCAs are the CAs a host knows: with their keys on a server that holds
// them, else the cluster and migration CA certificates only (Users nil).
type hostCAs struct {
	Cluster, Migration, Users *pki.CA
}

// founds is whether this host makes the cluster's CAs when it has none: a
// single-host cluster, the first server, or a host on an external etcd.
func (h *Host) founds() bool {
	return h.Token == "" && (h.Dev || (h.Server && h.Join == "") || len(h.EtcdEndpoints) > 0)
}

// credentials makes sure the host's pki directory holds its identity and
// returns the cluster and migration CAs (with their keys where this host
// holds them).
//
//   - The CA keys are here (the first server made them, or an operator gave
//     them to another server): the host issues its own certificates.
//   - A joining host (Join and Token) with no certificate yet makes its
//     keys, checks the cluster's CA against the token's fingerprint, and is
//     certified by the cluster (joinWithToken).
//   - Otherwise it uses the certificates it has.
func (h *Host) credentials(ctx context.Context, hosts, migHosts []string) (*hostCAs, error) {
	pkiDir := h.pkiDir()
	if err := os.MkdirAll(pkiDir, 0o700); err != nil {
		return nil, err
	}
	caCert, caKey := filepath.Join(pkiDir, pki.CACert), filepath.Join(pkiDir, pki.CAKey)
	switch {
	case exists(caKey) || (!exists(caCert) && h.founds()):
		return h.issueOwn(hosts, migHosts)
	case !exists(filepath.Join(pkiDir, pki.ServerCert)):
		if h.Join == "" || h.Token == "" {
			return nil, errors.New("this host has no certificate: join a cluster with --join ADDR --token TOKEN (ferry cluster token create), or start the first server with --server")
		}
		addrs := migHosts[1:]
		if h.APIVIP.IsValid() {
			addrs = append(addrs, h.APIVIP.String())
		}
		if err := h.joinWithToken(ctx, addrs); err != nil {
			return nil, err
		}
		if exists(caKey) {
			// An etcd server given the CA keys: on as a key holder.
			return h.issueOwn(hosts, migHosts)
		}
	}
	ca, err := pki.LoadCACert(caCert)
	if err != nil {
		return nil, fmt.Errorf("cluster CA: %w", err)
	}
	mca, err := pki.LoadCACert(filepath.Join(pkiDir, pki.MigrationCACert))
	if err != nil {
		return nil, fmt.Errorf("migration CA: %w", err)
	}
	return &hostCAs{Cluster: ca, Migration: mca}, nil
}

// issueOwn makes (or loads) the CAs this host holds the keys of, and the
// host's and the first admin's certificates.
func (h *Host) issueOwn(hosts, migHosts []string) (*hostCAs, error) {
	pkiDir := h.pkiDir()
	ca, err := pki.EnsureCA(pkiDir, "ferry cluster CA")
	if err != nil {
		return nil, fmt.Errorf("cluster CA: %w", err)
	}
	if err := ca.EnsureLeaf(pkiDir, pki.ServerCert, pki.ServerKey, h.Node, pki.RoleNode, hosts); err != nil {
		return nil, err
	}
	uca, err := pki.EnsureUserCA(pkiDir)
	if err != nil {
		return nil, fmt.Errorf("user CA: %w", err)
	}
	if err := uca.EnsureLeaf(pkiDir, pki.AdminCert, pki.AdminKey, "admin", pki.RoleAdmin, nil); err != nil {
		return nil, err
	}
	mca, err := pki.EnsureMigrationCA(pkiDir)
	if err != nil {
		return nil, fmt.Errorf("migration CA: %w", err)
	}
	if err := mca.EnsureMigration(pkiDir, h.Node, migHosts); err != nil {
		return nil, fmt.Errorf("migration certificate: %w", err)
	}
	return &hostCAs{Cluster: ca, Migration: mca, Users: uca}, nil
}

// joinWithToken asks the cluster at h.Join for this host's certificates.
// Nothing but the CA request is sent before the server has proven it holds
// the CA the token names.
func (h *Host) joinWithToken(ctx context.Context, addrs []string) error {
	tok, err := pki.ParseToken(h.Token)
	if err != nil {
		return fmt.Errorf("--token: %w", err)
	}
	if len(addrs) == 0 {
		return errors.New("--token needs --advertise (the address the host's certificates name)")
	}
	// 1. The CA, over a connection not yet verified; the fingerprint in the
	// token decides whether to trust what came back.
	var caPEM []byte
	err = retry(ctx, 30, func() (err error) {
		caPEM, err = client.JoinCA(ctx, h.Join)
		return err
	})
	if err != nil {
		return fmt.Errorf("--join %s: fetching the cluster CA: %w", h.Join, err)
	}
	caCert, err := pki.CAFromPEM(caPEM, tok.CAFingerprint)
	if err != nil {
		return fmt.Errorf("--join %s: %w", h.Join, err)
	}
	// 2. From now on the server must prove it is certified by that CA.
	key, csr, err := pki.NewKeyAndCSR(h.Node)
	if err != nil {
		return err
	}
	mkey, mcsr, err := pki.NewKeyAndCSR(h.Node)
	if err != nil {
		return err
	}
	jctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	jr, err := client.ForJoin(h.Join, caCert).Join(jctx, api.JoinRequest{Token: h.Token, Node: h.Node, Addresses: addrs,
		CSR: string(csr), MigrationCSR: string(mcsr), Server: h.Server})
	var refused *client.APIError
	if errors.As(err, &refused) {
		return fmt.Errorf("--join %s: the cluster refused: %w", h.Join, err)
	} else if err != nil {
		return fmt.Errorf("--join %s: %w", h.Join, err)
	}
	if _, err := tls.X509KeyPair([]byte(jr.Certificate), key); err != nil {
		return fmt.Errorf("--join %s: the certificate does not match our key: %w", h.Join, err)
	}
	if err := h.writeJoined(caPEM, key, mkey, jr); err != nil {
		return err
	}
	h.Log.Info("joined the cluster with a token", "api", h.Join, "token", tok.ID, "ca_fingerprint", tok.CAFingerprint[:16], "ca_keys", jr.CAKeys != nil)
	return nil
}

// writeJoined keeps what joining brought: the CAs, this host's keys and
// certificates, and on a server given them the CA keys — last, for a host
// holds the CAs once it has them all.
func (h *Host) writeJoined(caPEM, key, mkey []byte, jr *api.JoinResponse) error {
	pkiDir := h.pkiDir()
	for _, f := range []struct {
		name string
		data []byte
		mode os.FileMode
	}{{pki.CACert, caPEM, 0o644}, {pki.MigrationCACert, []byte(jr.MigrationCA), 0o644}, {pki.UserCACert, []byte(jr.UserCA), 0o644},
		{pki.ServerKey, key, 0o600}, {pki.ServerCert, []byte(jr.Certificate), 0o644}} {
		if err := os.WriteFile(filepath.Join(pkiDir, f.name), f.data, f.mode); err != nil {
			return err
		}
	}
	if err := pki.WriteMigrationCreds(pkiDir, []byte(jr.MigrationCertificate), mkey, []byte(jr.MigrationCA)); err != nil {
		return err
	}
	if k := jr.CAKeys; k != nil && h.Server {
		for _, f := range []struct{ name, data string }{{pki.MigrationCAKey, k.Migration}, {pki.UserCAKey, k.Users}, {pki.CAKey, k.Cluster}} {
			if err := os.WriteFile(filepath.Join(pkiDir, f.name), []byte(f.data), 0o600); err != nil {
				return err
			}
		}
	}
	return nil
}

// fetchCluster asks the cluster's API at h.Join what a joining host needs,
// with this host's node certificate.
func (h *Host) fetchCluster(ctx context.Context) (*api.ClusterInfo, error) {
	cfg, err := pki.ClientTLS(h.pkiDir(), pki.ServerCert, pki.ServerKey)
	if err != nil {
		return nil, err
	}
	c := client.New("https://"+h.Join, cfg)
	var info *api.ClusterInfo
	err = retry(ctx, 30, func() error {
		cctx, cancel := context.WithTimeout(ctx, 10*time.Second)
		defer cancel()
		info, err = c.Cluster(cctx)
		if err == nil && len(info.EtcdEndpoints) == 0 {
			err = errors.New("it named no etcd endpoints")
		}
		return err
	})
	if err != nil {
		return nil, fmt.Errorf("--join %s: cannot reach the cluster API: %w", h.Join, err)
	}
	return info, nil
}

// retry calls f up to attempts times, a second apart, until it succeeds or
// ctx ends; it returns f's last error.
func retry(ctx context.Context, attempts int, f func() error) error {
	var err error
	for i := 0; i < attempts; i++ {
		if err = f(); err == nil {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
	return err
}

// renewLoop renews this host's certificates when a third of their lifetime
// or less is left, checking every check: through the cluster's API (a
// server host signs; the old certificates are revoked), writing the new
// ones where the API server, the etcd client and QEMU (per migration) read
// them, without restarting anything.
func renewLoop(ctx context.Context, pkiDir, apiAddr string, check, before time.Duration, ag interface{ SetCertSerials([]string) }, log *slog.Logger) {
	certFile := filepath.Join(pkiDir, pki.ServerCert)
	for {
		leaf, err := pki.LoadCert(certFile)
		if err == nil {
			if pki.NeedsRenewal(leaf, time.Now(), before) {
				log.Info("renewing this host's certificates", "expires", leaf.NotAfter)
				if err = renewOnce(ctx, pkiDir, apiAddr); err == nil {
					var serials []string
					if serials, err = pki.Serials(certFile, filepath.Join(pkiDir, pki.MigrationDir, "server-cert.pem")); err == nil {
						ag.SetCertSerials(serials)
						log.Info("certificates renewed", "serials", serials)
					}
				}
			}
		}
		if err != nil {
			log.Warn("certificate renewal", "err", err)
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(check):
		}
	}
}

// renewOnce asks the API at apiAddr for new certificates for new keys.
func renewOnce(ctx context.Context, pkiDir, apiAddr string) error {
	cfg, err := pki.ClientTLS(pkiDir, pki.ServerCert, pki.ServerKey)
	if err != nil {
		return err
	}
	leaf, err := pki.LoadCert(filepath.Join(pkiDir, pki.ServerCert))
	if err != nil {
		return err
	}
	key, csr, err := pki.NewKeyAndCSR(leaf.Subject.CommonName)
	if err != nil {
		return err
	}
	mkey, mcsr, err := pki.NewKeyAndCSR(leaf.Subject.CommonName)
	if err != nil {
		return err
	}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	jr, err := client.New("https://"+apiAddr, cfg).Renew(rctx, api.RenewRequest{CSR: string(csr), MigrationCSR: string(mcsr)})
	if err != nil {
		return fmt.Errorf("renewal refused by %s: %w", apiAddr, err)
	}
	if err := pki.WriteMigrationCreds(pkiDir, []byte(jr.MigrationCertificate), mkey, []byte(jr.MigrationCA)); err != nil {
		return err
	}
	if jr.UserCA != "" && !exists(filepath.Join(pkiDir, pki.UserCAKey)) {
		if err := pki.WriteFileAtomic(filepath.Join(pkiDir, pki.UserCACert), []byte(jr.UserCA)); err != nil {
			return err
		}
	}
	return pki.ReplacePair(filepath.Join(pkiDir, pki.ServerCert), filepath.Join(pkiDir, pki.ServerKey), []byte(jr.Certificate), key)
}
