package store

import (
	"context"
	"crypto/x509"
	"fmt"
	"log/slog"
	"net/url"
	"time"

	"go.etcd.io/etcd/client/pkg/v3/transport"
	"go.etcd.io/etcd/server/v3/embed"
)

// EmbedConfig configures the embedded etcd server of a single-host or
// server agent.
type EmbedConfig struct {
	Dir       string // data directory
	Name      string // member name
	ClientURL string // e.g. http://127.0.0.1:2379
	PeerURL   string // e.g. http://127.0.0.1:2380
	Log       *slog.Logger
	// InitialCluster lists name=peerURL of every member when this member
	// joins an existing cluster (then Existing is true); empty for the first.
	InitialCluster string
	Existing       bool
	// TLS, when set, makes both the client and the peer port mutual TLS:
	// certificates from CA only, revoked ones (CRL, re-read on every
	// connection by etcd) refused. URLs must then be https.
	TLS *TLSFiles
	// Distrusted, when set, is asked on every call and every streamed
	// message whether the caller's certificate was revoked because its
	// holder is trusted no more (etcd itself checks its revocation list only
	// when a connection is made).
	Distrusted func(*x509.Certificate) bool
}

// TLSFiles names the PEM files of a TLS identity.
type TLSFiles struct {
	CA, Cert, Key string
	CRL           string // optional: a certificate revocation list from CA
}

// Embedded is a running embedded etcd server.
type Embedded struct {
	e         *embed.Etcd
	clientURL string
}

// StartEmbedded starts an etcd server in this process and waits until it serves.
func StartEmbedded(ctx context.Context, c EmbedConfig) (*Embedded, error) {
	cfg, err := embedConfig(c)
	if err != nil {
		return nil, err
	}
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		return nil, fmt.Errorf("starting embedded etcd: %w", err)
	}
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		e.Close()
		return nil, fmt.Errorf("embedded etcd: %w", err)
	case <-ctx.Done():
		e.Close()
		return nil, ctx.Err()
	case <-time.After(60 * time.Second):
		e.Close()
		return nil, fmt.Errorf("embedded etcd not ready after 60s")
	}
	if c.Log != nil {
		go func() {
			if err, ok := <-e.Err(); ok && err != nil {
				c.Log.Error("embedded etcd", "err", err)
			}
		}()
	}
	return &Embedded{e: e, clientURL: c.ClientURL}, nil
}

// embedConfig is etcd's configuration for c.
func embedConfig(c EmbedConfig) (*embed.Config, error) {
	cfg := embed.NewConfig()
	cfg.Dir = c.Dir
	cfg.Name = c.Name
	cu, err := url.Parse(c.ClientURL)
	if err != nil {
		return nil, fmt.Errorf("etcd client url: %w", err)
	}
	pu, err := url.Parse(c.PeerURL)
	if err != nil {
		return nil, fmt.Errorf("etcd peer url: %w", err)
	}
	cfg.ListenClientUrls = []url.URL{*cu}
	cfg.AdvertiseClientUrls = []url.URL{*cu}
	cfg.ListenPeerUrls = []url.URL{*pu}
	cfg.AdvertisePeerUrls = []url.URL{*pu}
	cfg.InitialCluster = fmt.Sprintf("%s=%s", c.Name, c.PeerURL)
	if c.InitialCluster != "" {
		cfg.InitialCluster = c.InitialCluster
	}
	if c.Existing {
		cfg.ClusterState = embed.ClusterStateFlagExisting
	}
	// etcd's own zap logging is silenced (it reports routine shutdown as
	// errors); its serving errors arrive on e.Err() and are logged by Ferry.
	cfg.Logger = "zap"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(nopZap())
	if c.TLS != nil {
		ti := transport.TLSInfo{CertFile: c.TLS.Cert, KeyFile: c.TLS.Key, TrustedCAFile: c.TLS.CA,
			ClientCertFile: c.TLS.Cert, ClientKeyFile: c.TLS.Key,
			ClientCertAuth: true, CRLFile: c.TLS.CRL}
		cfg.ClientTLSInfo, cfg.PeerTLSInfo = ti, ti
		if cu.Scheme != "https" || pu.Scheme != "https" {
			return nil, fmt.Errorf("etcd with TLS needs https URLs, not %s and %s", c.ClientURL, c.PeerURL)
		}
	} else if cu.Hostname() != "127.0.0.1" || pu.Hostname() != "127.0.0.1" {
		return nil, fmt.Errorf("a plaintext etcd listens only on 127.0.0.1 (tests), not %s", c.ClientURL)
	}
	if c.Distrusted != nil {
		cfg.GRPCAdditionalServerOptions = revocationOptions(c.Distrusted)
	}
	// The JSON gateway would call gRPC with the server's own certificate on
	// behalf of its callers, out of the revocation check's sight; Ferry does
	// not use it.
	cfg.EnableGRPCGateway = false
	// A leader election must finish well inside the agents' self-fence
	// deadline (ha.Timing.FenceAfter, 1.4 s): heartbeats every 50 ms and an
	// election timeout of 500 ms (randomised up to 1 s) instead of etcd's
	// 100 ms / 1 s. See docs/HA.md.
	cfg.TickMs = 50
	cfg.ElectionMs = 500
	// Old revisions are kept 10 minutes: enough for a watch to resume
	// after a blip (a watcher that fell further behind reads again). An
	// hour's worth at 1,000 hosts (about 1,000 writes a second, statuses
	// of a kilobyte) grew the database by 600 MB in 15 minutes, on the way
	// to etcd's 2 GB quota.
	cfg.AutoCompactionMode = "periodic"
	cfg.AutoCompactionRetention = "10m"
	return cfg, nil
}

// ClientURL is where clients reach the embedded server.
func (e *Embedded) ClientURL() string { return e.clientURL }

// Close stops the server.
func (e *Embedded) Close() { e.e.Close() }
