package store

import (
	"context"
	"encoding/json"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/errdefs"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// BalancePlanKey holds the balancer's last plan.
const BalancePlanKey = Prefix + "balance/plan"

// PutBalancePlan records the balancer's plan, fenced by the leadership.
func (s *Store) PutBalancePlan(ctx context.Context, p *api.BalancePlan, guard Guard) error {
	ctx, cancel := bounded(ctx)
	defer cancel()
	b, err := json.Marshal(p)
	if err != nil {
		return err
	}
	_, err = s.cli.Txn(ctx).If(guard.cmps()...).Then(clientv3.OpPut(BalancePlanKey, string(b))).Commit()
	return unavailable(err)
}

// BalancePlan reads the balancer's last plan.
func (s *Store) BalancePlan(ctx context.Context) (*api.BalancePlan, error) {
	ctx, cancel := bounded(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, BalancePlanKey)
	if err != nil {
		return nil, unavailable(err)
	}
	if len(resp.Kvs) == 0 {
		return nil, errdefs.New(errdefs.ErrNotFound, "no balance plan yet: the leader's balancer has not run (or is off)")
	}
	var p api.BalancePlan
	if err := json.Unmarshal(resp.Kvs[0].Value, &p); err != nil {
		return nil, err
	}
	return &p, nil
}
