package store

import (
	"context"
	"encoding/json"

	"github.com/ferryvm/ferry/internal/telemetry"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// LoadHistoryPrefix holds each guest's CPU history, by name: the host
// running the guest writes it as its buckets close, and the host it moves
// to (or restarts on, or an agent restarting) continues it, so that a
// guest's daily season is not forgotten when it moves. It is advisory:
// unfenced, and deleted with the guest.
const LoadHistoryPrefix = Prefix + "loadhist/"

// LoadHistory is a guest's CPU history, for the incarnation it names.
type LoadHistory struct {
	UUID string                 `json:"uuid"`
	CPU  telemetry.BucketsState `json:"cpu"`
}

// PutLoadHistory records a guest's history, while the guest exists (a
// write racing its deletion leaves nothing behind).
func (s *Store) PutLoadHistory(ctx context.Context, name string, h *LoadHistory) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	b, err := json.Marshal(h)
	if err != nil {
		return err
	}
	_, err = s.cli.Txn(ctx).If(clientv3.Compare(clientv3.Version(VMPrefix+name), ">", 0)).
		Then(clientv3.OpPut(LoadHistoryPrefix+name, string(b))).Commit()
	return unavailable(err)
}

// LoadHistory reads the history of incarnation uuid of a guest: nil when
// none is kept (or the one kept is an earlier incarnation's).
func (s *Store) LoadHistory(ctx context.Context, name, uuid string) (*LoadHistory, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, LoadHistoryPrefix+name)
	if err != nil {
		return nil, unavailable(err)
	}
	if len(resp.Kvs) == 0 {
		return nil, nil
	}
	var h LoadHistory
	if err := json.Unmarshal(resp.Kvs[0].Value, &h); err != nil || h.UUID != uuid {
		return nil, err
	}
	return &h, nil
}
