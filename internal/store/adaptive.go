package store

import (
	"context"
	"encoding/json"
	"fmt"
	"sort"
	"strings"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/errdefs"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// Keys of adaptive migration: the links between hosts as their agents
// measured them, the finished migrations' predicted and actual figures
// (calibration), and the migration policies.
const (
	LinkPrefix      = Prefix + "links/"    // links/<from>/<to>
	MigSamplePrefix = Prefix + "migstats/" // migstats/<unix ns>-<id>
	PolicyPrefix    = Prefix + "policies/" // policies/<name>
	ProbePrefix     = Prefix + "probe/"    // probe/<host>: measure your links now
	// LinkHealthPrefix holds a key per degraded link only,
	// linkhealth/<from>/<to> = why, so that the placement engine's views
	// read (and mirror) a set that is usually empty.
	LinkHealthPrefix = Prefix + "linkhealth/"
)

// RequestLinkProbe asks host to measure its links to every other host now
// (bandwidth too).
func (s *Store) RequestLinkProbe(ctx context.Context, host string) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	_, err := s.cli.Put(ctx, ProbePrefix+host, time.Now().UTC().Format(time.RFC3339Nano))
	return unavailable(err)
}

// RequestLinkTest asks host to measure its link to peer now (bandwidth
// too).
func (s *Store) RequestLinkTest(ctx context.Context, host, peer string) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	b, _ := json.Marshal(LinkProbeRequest{Peer: peer, At: time.Now().UTC()})
	_, err := s.cli.Put(ctx, ProbePrefix+host, string(b))
	return unavailable(err)
}

// LinkProbeRequest is what a probe request asks (RequestLinkTest); a
// request that is not one (RequestLinkProbe's) asks for every link.
type LinkProbeRequest struct {
	Peer string    `json:"peer"`
	At   time.Time `json:"at"`
}

// WatchLinkProbeRequests follows the requests for host to measure its
// links; the channel closes when the watch ends (watch again).
func (s *Store) WatchLinkProbeRequests(ctx context.Context, host string) <-chan Change {
	return s.watchPrefixes(ctx, 0, []watched{{KindCluster, ProbePrefix + host}})
}

// MaxMigSamples is how many finished migrations are kept for calibration.
const MaxMigSamples = 500

// PutLinkStat records what a host measured of its path to another, and
// whether the link is degraded (in the same transaction).
func (s *Store) PutLinkStat(ctx context.Context, l api.LinkStat) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	b, _ := json.Marshal(l)
	name := l.From + "/" + l.To
	health := clientv3.OpDelete(LinkHealthPrefix + name)
	if l.Degraded {
		health = clientv3.OpPut(LinkHealthPrefix+name, l.Why)
	}
	_, err := s.cli.Txn(ctx).Then(clientv3.OpPut(LinkPrefix+name, string(b)), health).Commit()
	return unavailable(err)
}

// DegradedLinks are the links now degraded: "from/to" -> why.
func (s *Store) DegradedLinks(ctx context.Context) (map[string]string, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, LinkHealthPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, unavailable(err)
	}
	out := map[string]string{}
	for _, kv := range resp.Kvs {
		out[strings.TrimPrefix(string(kv.Key), LinkHealthPrefix)] = string(kv.Value)
	}
	return out, nil
}

// LinkStat is the last measurement of the path from → to (nil if none).
func (s *Store) LinkStat(ctx context.Context, from, to string) (*api.LinkStat, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, LinkPrefix+from+"/"+to)
	if err != nil {
		return nil, unavailable(err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	var l api.LinkStat
	return &l, json.Unmarshal(resp.Kvs[0].Value, &l)
}

// ListLinkStats is every measured path, sorted by from and to.
func (s *Store) ListLinkStats(ctx context.Context) ([]api.LinkStat, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, LinkPrefix, clientv3.WithPrefix(), clientv3.WithSort(clientv3.SortByKey, clientv3.SortAscend))
	if err != nil {
		return nil, unavailable(err)
	}
	out := make([]api.LinkStat, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var l api.LinkStat
		if json.Unmarshal(kv.Value, &l) == nil {
			out = append(out, l)
		}
	}
	return out, nil
}

// PutMigSample keeps a finished migration's figures (any JSON the caller
// chose: migmodel.Sample), pruning the oldest beyond MaxMigSamples.
func (s *Store) PutMigSample(ctx context.Context, id string, at time.Time, sample any) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	b, err := json.Marshal(sample)
	if err != nil {
		return err
	}
	if _, err := s.cli.Put(ctx, fmt.Sprintf("%s%020d-%s", MigSamplePrefix, at.UnixNano(), id), string(b)); err != nil {
		return unavailable(err)
	}
	resp, err := s.cli.Get(ctx, MigSamplePrefix, clientv3.WithPrefix(), clientv3.WithKeysOnly(),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(MaxMigSamples+1))
	if err != nil || len(resp.Kvs) <= MaxMigSamples {
		return unavailable(err)
	}
	_, err = s.cli.Delete(ctx, MigSamplePrefix, clientv3.WithRange(string(resp.Kvs[MaxMigSamples].Key)+"\x00"))
	return unavailable(err)
}

// MigSamples returns the newest limit samples' JSON, oldest first.
func (s *Store) MigSamples(ctx context.Context, limit int) ([][]byte, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	if limit <= 0 || limit > MaxMigSamples {
		limit = MaxMigSamples
	}
	resp, err := s.cli.Get(ctx, MigSamplePrefix, clientv3.WithPrefix(),
		clientv3.WithSort(clientv3.SortByKey, clientv3.SortDescend), clientv3.WithLimit(int64(limit)))
	if err != nil {
		return nil, unavailable(err)
	}
	out := make([][]byte, 0, len(resp.Kvs))
	for i := len(resp.Kvs) - 1; i >= 0; i-- {
		out = append(out, resp.Kvs[i].Value)
	}
	return out, nil
}

// CreatePolicy records a new migration policy; a policy of that name must
// not exist.
func (s *Store) CreatePolicy(ctx context.Context, p api.MigrationPolicy) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	b, _ := json.Marshal(p)
	key := PolicyPrefix + p.Name
	resp, err := s.cli.Txn(ctx).If(clientv3.Compare(clientv3.Version(key), "=", 0)).Then(clientv3.OpPut(key, string(b))).Commit()
	if err != nil {
		return unavailable(err)
	}
	if !resp.Succeeded {
		return errdefs.New(errdefs.ErrAlreadyExists, fmt.Sprintf("policy %s already exists", p.Name))
	}
	return nil
}

// DeletePolicy removes a policy.
func (s *Store) DeletePolicy(ctx context.Context, name string) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := s.cli.Delete(ctx, PolicyPrefix+name)
	if err != nil {
		return unavailable(err)
	}
	if resp.Deleted == 0 {
		return errdefs.New(errdefs.ErrNotFound, fmt.Sprintf("policy %s not found", name))
	}
	return nil
}

// ListPolicies is every migration policy, by name.
func (s *Store) ListPolicies(ctx context.Context) ([]api.MigrationPolicy, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, PolicyPrefix, clientv3.WithPrefix())
	if err != nil {
		return nil, unavailable(err)
	}
	out := make([]api.MigrationPolicy, 0, len(resp.Kvs))
	for _, kv := range resp.Kvs {
		var p api.MigrationPolicy
		if json.Unmarshal(kv.Value, &p) == nil {
			out = append(out, p)
		}
	}
	sort.Slice(out, func(i, j int) bool { return strings.Compare(out[i].Name, out[j].Name) < 0 })
	return out, nil
}
