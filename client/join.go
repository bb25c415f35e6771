package client

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"io"
	"net/http"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/errdefs"
)

// The calls of a host that joins a cluster or renews its certificates.

// JoinCA fetches the cluster CA's certificate (PEM) from the API at addr
// (host:port) over a connection that is not verified: the caller trusts
// the answer only if it matches the fingerprint its join token names
// (pki.CAFromPEM). Nothing else is sent before that check.
func JoinCA(ctx context.Context, addr string) ([]byte, error) {
	hc := &http.Client{Timeout: 10 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true, MinVersion: tls.VersionTLS13}}}
	req, err := http.NewRequestWithContext(ctx, "GET", "https://"+addr+"/v1/join/ca", nil)
	if err != nil {
		return nil, err
	}
	resp, err := hc.Do(req)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", errdefs.ErrUnavailable, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, decodeError(resp)
	}
	return io.ReadAll(io.LimitReader(resp.Body, 64<<10))
}

// ForJoin is a client of the API at addr that trusts only ca and presents
// no certificate: a joining host's, before it has one.
func ForJoin(addr string, ca *x509.Certificate) *Client {
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	return New("https://"+addr, &tls.Config{RootCAs: pool, MinVersion: tls.VersionTLS13})
}

// Join asks the cluster to certify a host that holds a join token.
func (c *Client) Join(ctx context.Context, req api.JoinRequest) (*api.JoinResponse, error) {
	var jr api.JoinResponse
	return &jr, c.do(ctx, "POST", "/v1/join", req, &jr)
}

// Renew asks the cluster for new certificates for this host's new keys;
// the old certificates are revoked.
func (c *Client) Renew(ctx context.Context, req api.RenewRequest) (*api.JoinResponse, error) {
	var jr api.JoinResponse
	return &jr, c.do(ctx, "POST", "/v1/renew", req, &jr)
}

// Cluster is what a joining host needs to know of the cluster (its etcd
// endpoints, the overlay's VNI).
func (c *Client) Cluster(ctx context.Context) (*api.ClusterInfo, error) {
	var info api.ClusterInfo
	return &info, c.do(ctx, "GET", "/v1/cluster", nil, &info)
}
