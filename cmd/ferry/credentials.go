package main

import (
	"bytes"
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/pki"
)

func exists(path string) bool { _, err := os.Stat(path); return err == nil }

// hostCredentials makes sure DATA-DIR/pki holds this host's identity and
// returns the cluster and migration CAs (with their keys where this host
// holds them).
//
//   - The CA keys are here (the first server made them, or an operator gave
//     them to another server): the host issues its own certificates, and
//     renews them when they near expiry.
//   - --join with --token on a host that has no certificate yet: the host
//     makes its keys, checks the cluster's CA against the token's
//     fingerprint, and is certified by the cluster (joinWithToken).
//   - Otherwise it uses the certificates it has.
func hostCredentials(ctx context.Context, o *agentOpts, pkiDir string, hosts, migHosts []string, log *slog.Logger) (*hostCAs, error) {
	if err := os.MkdirAll(pkiDir, 0o700); err != nil {
		return nil, err
	}
	caCert, caKey := filepath.Join(pkiDir, pki.CACert), filepath.Join(pkiDir, pki.CAKey)
	switch {
	case exists(caKey) || (!exists(caCert) && o.token == "" && (o.dev || (o.server && o.join == "") || len(o.etcdEndpoints) > 0)):
		// A host that holds (or founds) the cluster's CAs.
		ca, err := pki.EnsureCA(pkiDir, "ferry cluster CA")
		if err != nil {
			return nil, fmt.Errorf("cluster CA: %w", err)
		}
		if err := ca.EnsureLeaf(pkiDir, pki.ServerCert, pki.ServerKey, o.node, pki.RoleNode, hosts); err != nil {
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
		if err := mca.EnsureMigration(pkiDir, o.node, migHosts); err != nil {
			return nil, fmt.Errorf("migration certificate: %w", err)
		}
		return &hostCAs{Cluster: ca, Migration: mca, Users: uca}, nil
	case !exists(filepath.Join(pkiDir, pki.ServerCert)):
		if o.join == "" || o.token == "" {
			return nil, errors.New("this host has no certificate: join a cluster with --join ADDR --token TOKEN (ferry cluster token create), or start the first server with --server")
		}
		if err := joinWithToken(ctx, o, pkiDir, migHosts[1:], log); err != nil {
			return nil, err
		}
		if exists(caKey) {
			// An etcd server given the CA keys: on as a key holder.
			return hostCredentials(ctx, o, pkiDir, hosts, migHosts, log)
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

// hostCAs are the CAs a host knows: with their keys on a server that holds
// them, else the cluster and migration CA certificates only (Users nil).
type hostCAs struct {
	Cluster, Migration, Users *pki.CA
}

// joinWithToken asks the cluster at o.join for this host's certificates.
// Nothing but the CA request is sent before the server has proven it holds
// the CA the token names.
func joinWithToken(ctx context.Context, o *agentOpts, pkiDir string, addrs []string, log *slog.Logger) error {
	tok, err := pki.ParseToken(o.token)
	if err != nil {
		return fmt.Errorf("--token: %w", err)
	}
	if len(addrs) == 0 {
		return errors.New("--token needs --advertise (the address the host's certificates name)")
	}
	base := "https://" + o.join
	// 1. The CA, over a connection not yet verified; the fingerprint in the
	// token decides whether to trust what came back.
	insecure := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}}}
	var caPEM []byte
	for attempt := 0; ; attempt++ {
		caPEM, err = get(ctx, insecure, base+"/v1/join/ca")
		if err == nil || attempt == 30 {
			break
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(time.Second):
		}
	}
	if err != nil {
		return fmt.Errorf("--join %s: fetching the cluster CA: %w", o.join, err)
	}
	caCert, err := pki.CAFromPEM(caPEM, tok.CAFingerprint)
	if err != nil {
		return fmt.Errorf("--join %s: %w", o.join, err)
	}
	// 2. From now on the server must prove it is certified by that CA.
	pool := x509.NewCertPool()
	pool.AddCert(caCert)
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13}}}
	key, csr, err := pki.NewKeyAndCSR(o.node)
	if err != nil {
		return err
	}
	mkey, mcsr, err := pki.NewKeyAndCSR(o.node)
	if err != nil {
		return err
	}
	body, _ := json.Marshal(api.JoinRequest{Token: o.token, Node: o.node, Addresses: addrs, CSR: string(csr), MigrationCSR: string(mcsr), Server: o.server})
	req, _ := http.NewRequestWithContext(ctx, "POST", base+"/v1/join", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return fmt.Errorf("--join %s: %w", o.join, err)
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		var eb api.ErrorBody
		if json.Unmarshal(data, &eb) == nil && eb.Error.Message != "" {
			return fmt.Errorf("--join %s: the cluster refused: %s", o.join, eb.Error.Message)
		}
		return fmt.Errorf("--join %s: the cluster answered %s", o.join, resp.Status)
	}
	var jr api.JoinResponse
	if err := json.Unmarshal(data, &jr); err != nil {
		return fmt.Errorf("--join %s: %w", o.join, err)
	}
	if _, err := tls.X509KeyPair([]byte(jr.Certificate), key); err != nil {
		return fmt.Errorf("--join %s: the certificate does not match our key: %w", o.join, err)
	}
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
	if k := jr.CAKeys; k != nil && o.server {
		// Keys last: a host holds the CAs once it has them all.
		for _, f := range []struct{ name, data string }{{pki.MigrationCAKey, k.Migration}, {pki.UserCAKey, k.Users}, {pki.CAKey, k.Cluster}} {
			if err := os.WriteFile(filepath.Join(pkiDir, f.name), []byte(f.data), 0o600); err != nil {
				return err
			}
		}
	}
	log.Info("joined the cluster with a token", "api", o.join, "token", tok.ID, "ca_fingerprint", tok.CAFingerprint[:16], "ca_keys", jr.CAKeys != nil)
	return nil
}

func get(ctx context.Context, hc *http.Client, url string) ([]byte, error) {
	req, _ := http.NewRequestWithContext(ctx, "GET", url, nil)
	resp, err := hc.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	if err != nil {
		return nil, err
	}
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("%s answered %s", url, resp.Status)
	}
	return data, nil
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
	body, _ := json.Marshal(api.RenewRequest{CSR: string(csr), MigrationCSR: string(mcsr)})
	hc := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{TLSClientConfig: cfg}}
	rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	req, _ := http.NewRequestWithContext(rctx, "POST", "https://"+apiAddr+"/v1/renew", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	resp, err := hc.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		var eb api.ErrorBody
		if json.Unmarshal(data, &eb) == nil && eb.Error.Message != "" {
			return fmt.Errorf("renewal refused by %s: %s", apiAddr, eb.Error.Message)
		}
		return fmt.Errorf("renewal: %s answered %s", apiAddr, resp.Status)
	}
	var jr api.JoinResponse
	if err := json.Unmarshal(data, &jr); err != nil {
		return err
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
