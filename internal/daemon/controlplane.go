// Package daemon assembles a Ferry host's long-running parts — the agent,
// the API, the leader's controllers — so that `ferry agent` only turns
// flags into a configuration, and the scale benchmark runs the same
// assembly on simulated hosts.
package daemon

import (
	"context"
	"log/slog"
	"time"

	"github.com/ferryvm/ferry/internal/balance"
	"github.com/ferryvm/ferry/internal/ha"
	"github.com/ferryvm/ferry/internal/leader"
	"github.com/ferryvm/ferry/internal/migrate"
	"github.com/ferryvm/ferry/internal/sched"
	"github.com/ferryvm/ferry/internal/store"
)

// ControlPlane configures the cluster-wide control loops every host runs
// (one of them leads at a time).
type ControlPlane struct {
	Node string
	HA   ha.Timing
	// Migrations in flight out of one host and in the whole cluster
	// (0: migrate.DefaultPerHost, migrate.DefaultPerCluster).
	MigrationsPerHost, MigrationsPerCluster int
	// Balance configures the balancer (its zero value: predictive, with
	// the package's defaults).
	Balance balance.Config
	Log     *slog.Logger
	// OnRound, if set, is told each leader round's duration.
	OnRound func(time.Duration)
}

// RunControlPlane campaigns for leadership and, while this host leads, runs
// the controllers and watches the hosts' liveness, until ctx ends.
func RunControlPlane(ctx context.Context, st *store.Store, c ControlPlane) {
	log := c.Log
	if log == nil {
		log = slog.Default()
	}
	admission := migrate.NewAdmission(st, log)
	if c.MigrationsPerHost > 0 {
		admission.PerHost = c.MigrationsPerHost
	}
	if c.MigrationsPerCluster > 0 {
		admission.PerCluster = c.MigrationsPerCluster
	}
	hosts := ha.NewHosts(st, c.HA, log)
	go ha.NewLiveness(st, c.HA, hosts.Leading, log).Run(ctx)
	// A 1 s leader lease (etcd's smallest; see LeaderTTL): when the leader's host dies,
	// another host leads — and reports the dead one — within about a
	// second. Losing leadership in an etcd hiccup costs nothing but a new
	// election: every controller write is fenced by the leader key.
	// Admission first (a queued migration waits for it), host health
	// before the restarts it decides, new guests and drains after.
	leader.Run(ctx, st, leader.Config{Name: c.Node, TTL: LeaderTTL(c.HA), Log: log, OnRound: c.OnRound},
		admission, hosts, ha.NewRestarts(st, hosts, c.HA, log),
		sched.New(st, log), migrate.NewDrain(st, log), balance.New(st, c.Balance, log), leader.NewHousekeeping(st, log))
}

// LeaderTTL is the leader's lease: a quarter of the hosts' (whole seconds,
// at least etcd's smallest, 1 s). With the default 2 s host leases that is
// 1 s; clusters that take longer host leases because their hosts are busy
// also give their leader longer, or a busy leader loses its leadership over
// and over (measured: 86 times in 4 minutes at 1,000 simulated hosts with
// 10 s host leases and a 1 s leader lease on 2 cores).
func LeaderTTL(t ha.Timing) time.Duration {
	return max(time.Second, (t.LeaseTTL / 4).Truncate(time.Second))
}
