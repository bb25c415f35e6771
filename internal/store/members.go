package store

import (
	"context"
	"crypto/tls"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"
)

// ClientURLs lists the client URLs of every etcd member.
func (s *Store) ClientURLs(ctx context.Context) ([]string, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := s.cli.MemberList(ctx)
	if err != nil {
		return nil, unavailable(err)
	}
	var urls []string
	for _, m := range resp.Members {
		urls = append(urls, m.ClientURLs...)
	}
	return urls, nil
}

// HasMemberData reports whether dataDir already holds an etcd member (a
// restart, not a first join).
func HasMemberData(dataDir string) bool {
	_, err := os.Stat(filepath.Join(dataDir, "member"))
	return err == nil
}

// AddMember adds a new etcd member (name, peerURL) to the cluster behind
// endpoints as a learner and returns the --initial-cluster string the new
// member must start with; PromoteMember makes it a voter once it runs.
//
// A learner does not count towards the quorum: adding a voting member to a
// one-member cluster would leave it without a quorum until the new member
// had started and caught up (seconds in which no host can renew its lease,
// and HA guests get fenced). The learner catches up first; the promotion is
// then a single step.
func AddMember(ctx context.Context, endpoints []string, tlsCfg *tls.Config, name, peerURL string) (string, error) {
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, TLS: tlsCfg, DialTimeout: 5 * time.Second, Logger: nopZap()})
	if err != nil {
		return "", err
	}
	defer cli.Close()
	list, err := cli.MemberList(ctx)
	if err != nil {
		return "", fmt.Errorf("listing etcd members: %w", err)
	}
	var parts []string
	for _, m := range list.Members {
		for _, u := range m.PeerURLs {
			if u == peerURL {
				// Added before (a join that failed half-way): remove and re-add.
				if _, err := cli.MemberRemove(ctx, m.ID); err != nil {
					return "", fmt.Errorf("removing stale member %s: %w", u, err)
				}
			}
		}
	}
	// etcd refuses a new member until the previous one has been connected
	// for a while ("unhealthy cluster"): retry for a minute.
	var resp *clientv3.MemberAddResponse
	deadline := time.Now().Add(time.Minute)
	for {
		resp, err = cli.MemberAddAsLearner(ctx, []string{peerURL})
		if err == nil {
			break
		}
		if time.Now().After(deadline) || !(strings.Contains(err.Error(), "unhealthy cluster") || strings.Contains(err.Error(), "too many learner")) {
			return "", fmt.Errorf("adding etcd member %s: %w", peerURL, err)
		}
		select {
		case <-ctx.Done():
			return "", ctx.Err()
		case <-time.After(time.Second):
		}
	}
	for _, m := range resp.Members {
		n := m.Name
		if m.ID == resp.Member.ID {
			n = name
		}
		if n == "" || len(m.PeerURLs) == 0 {
			continue
		}
		parts = append(parts, n+"="+m.PeerURLs[0])
	}
	return strings.Join(parts, ","), nil
}

// PromoteMember makes the member called name a voting member if it is a
// learner, once it has caught up with the leader (etcd refuses until then),
// trying for a minute. It also finishes a join that stopped half-way.
func PromoteMember(ctx context.Context, endpoints []string, tlsCfg *tls.Config, name string) error {
	cli, err := clientv3.New(clientv3.Config{Endpoints: endpoints, TLS: tlsCfg, DialTimeout: 5 * time.Second, Logger: nopZap()})
	if err != nil {
		return err
	}
	defer cli.Close()
	list, err := cli.MemberList(ctx)
	if err != nil {
		return fmt.Errorf("listing etcd members: %w", err)
	}
	var id uint64
	for _, m := range list.Members {
		if m.Name == name && m.IsLearner {
			id = m.ID
		}
	}
	if id == 0 {
		return nil
	}
	deadline := time.Now().Add(time.Minute)
	for {
		pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
		_, err := cli.MemberPromote(pctx, id)
		cancel()
		if err == nil || strings.Contains(err.Error(), "not a learner") {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("promoting etcd member %x: %w", id, err)
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// RemoveMember removes the etcd member called name, if there is one.
func (s *Store) RemoveMember(ctx context.Context, name string) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	list, err := s.cli.MemberList(ctx)
	if err != nil {
		return unavailable(err)
	}
	for _, m := range list.Members {
		if m.Name == name {
			_, err := s.cli.MemberRemove(ctx, m.ID)
			return unavailable(err)
		}
	}
	return nil
}

// DBStats is what etcd says about its database.
type DBStats struct {
	Revision    int64 // the store's revision: one per write
	DBSize      int64 // bytes the database file takes
	DBSizeInUse int64 // bytes of it in use (the rest is free after compaction)
}

// Stats asks the first member that answers about its database.
func (s *Store) Stats(ctx context.Context) (DBStats, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	var last error
	for _, ep := range s.cli.Endpoints() {
		st, err := s.cli.Status(ctx, ep)
		if err != nil {
			last = err
			continue
		}
		return DBStats{Revision: st.Header.Revision, DBSize: st.DbSize, DBSizeInUse: st.DbSizeInUse}, nil
	}
	return DBStats{}, unavailable(last)
}
