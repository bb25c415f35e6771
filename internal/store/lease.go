package store

import (
	"context"
	"errors"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	pb "go.etcd.io/etcd/api/v3/etcdserverpb"
	"go.etcd.io/etcd/api/v3/v3rpc/rpctypes"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// LeaseTiming is how a HostLease is kept: its TTL, how often it is renewed,
// and how long a renewal may go unanswered before its stream is replaced.
type LeaseTiming struct {
	TTL, Renew, RenewTimeout time.Duration
}

// HostLease holds a host's etcd lease and renews it on its own schedule
// (not clientv3's keep-alive stream, whose schedule is TTL/3 and whose
// failures are silent): the agent must know, to the millisecond, when its
// last renewal that etcd accepted was sent, because that bounds when etcd
// can expire the lease (docs/HA.md).
type HostLease struct {
	cli  *clientv3.Client
	t    LeaseTiming
	path string // remembers the lease ID so a restarted agent can adopt it

	mu     sync.Mutex
	id     clientv3.LeaseID
	lastOK time.Time // send time of the last renewal etcd accepted (monotonic)
}

// HostLease returns a keeper for this host's lease, remembered in the file
// at path; Acquire takes or adopts it.
func (s *Store) HostLease(t LeaseTiming, path string) *HostLease {
	return &HostLease{cli: s.cli, t: t, path: path}
}

// Acquire adopts the lease a previous agent on this host left behind if it
// is still alive (so ownership bound to it stays valid across a quick agent
// restart), and otherwise grants a new one.
func (k *HostLease) Acquire(ctx context.Context) (adopted bool, err error) {
	if b, err := os.ReadFile(k.path); err == nil {
		if id, err := strconv.ParseInt(strings.TrimSpace(string(b)), 16, 64); err == nil {
			k.mu.Lock()
			k.id = clientv3.LeaseID(id)
			k.mu.Unlock()
			if ok, _ := k.Renew(ctx); ok {
				return true, nil
			}
		}
	}
	return false, k.Grant(ctx)
}

// Grant takes a new lease and remembers it.
func (k *HostLease) Grant(ctx context.Context) error {
	send := time.Now()
	gctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	resp, err := k.cli.Grant(gctx, int64(k.t.TTL/time.Second))
	cancel()
	if err != nil {
		return unavailable(err)
	}
	k.mu.Lock()
	k.id, k.lastOK = resp.ID, send
	k.mu.Unlock()
	return os.WriteFile(k.path, []byte(strconv.FormatInt(int64(resp.ID), 16)+"\n"), 0o600)
}

// KeepAlive renews the lease every Renew on one long-lived keep-alive
// stream (cheaper than a call per renewal), matching each answer to the send
// time of its request. A stream whose oldest request has waited longer than
// RenewTimeout is dropped and opened again (likely to another etcd member).
// ok is called after each accepted renewal, with how long etcd took to
// answer it; expired when etcd says the lease is gone, after which
// keepAlive returns.
func (k *HostLease) KeepAlive(ctx context.Context, ok func(took time.Duration), expired func()) {
	lc := pb.NewLeaseClient(k.cli.ActiveConnection())
	for ctx.Err() == nil {
		if gone := k.stream(ctx, lc, ok); gone {
			expired()
			continue
		}
		select { // a broken stream: open another soon
		case <-ctx.Done():
		case <-time.After(k.t.Renew / 2):
		}
	}
}

// stream runs one keep-alive stream until it fails or stalls; it reports
// whether etcd said the lease is gone.
func (k *HostLease) stream(ctx context.Context, lc pb.LeaseClient, ok func(time.Duration)) (gone bool) {
	sctx, cancel := context.WithCancel(clientv3.WithRequireLeader(ctx))
	defer cancel()
	st, err := lc.LeaseKeepAlive(sctx)
	if err != nil {
		return false
	}
	var mu sync.Mutex
	var sent []time.Time // send times of requests not yet answered, oldest first
	id := clientv3.LeaseID(k.ID())
	result := make(chan bool, 1)
	go func() {
		for {
			resp, err := st.Recv()
			if err != nil {
				result <- false
				return
			}
			mu.Lock()
			var at time.Time
			if len(sent) > 0 {
				at, sent = sent[0], sent[1:]
			}
			mu.Unlock()
			if resp.TTL <= 0 {
				result <- true
				return
			}
			k.mu.Lock()
			if k.id == id && at.After(k.lastOK) {
				k.lastOK = at
			}
			k.mu.Unlock()
			var took time.Duration
			if !at.IsZero() {
				took = time.Since(at)
			}
			ok(took)
		}
	}()
	t := time.NewTicker(k.t.Renew)
	defer t.Stop()
	for {
		mu.Lock()
		stalled := len(sent) > 0 && time.Since(sent[0]) > k.t.RenewTimeout
		if !stalled {
			sent = append(sent, time.Now())
		}
		mu.Unlock()
		if stalled {
			return false
		}
		if err := st.Send(&pb.LeaseKeepAliveRequest{ID: int64(id)}); err != nil {
			return false
		}
		select {
		case <-ctx.Done():
			return false
		case g := <-result:
			return g
		case <-t.C:
		}
	}
}

// Renew sends one keep-alive call. expired is true when etcd says the lease
// is gone (as opposed to etcd not answering in time).
func (k *HostLease) Renew(ctx context.Context) (ok, expired bool) {
	id := clientv3.LeaseID(k.ID())
	send := time.Now()
	rctx, cancel := context.WithTimeout(ctx, k.t.RenewTimeout)
	resp, err := k.cli.KeepAliveOnce(rctx, id)
	cancel()
	if err != nil {
		return false, errors.Is(err, rpctypes.ErrLeaseNotFound)
	}
	if resp.TTL <= 0 {
		return false, true
	}
	k.mu.Lock()
	if k.id == id && send.After(k.lastOK) {
		k.lastOK = send
	}
	k.mu.Unlock()
	return true, false
}

// ID is the current lease.
func (k *HostLease) ID() LeaseID {
	k.mu.Lock()
	defer k.mu.Unlock()
	return LeaseID(k.id)
}

// SinceOK is how long ago the last accepted renewal was sent.
func (k *HostLease) SinceOK() time.Duration {
	k.mu.Lock()
	defer k.mu.Unlock()
	return time.Since(k.lastOK)
}
