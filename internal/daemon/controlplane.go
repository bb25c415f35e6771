// Package daemon assembles a Ferry host's long-running parts — the agent,
// the API, the leader's controllers — so that `ferry agent` only turns
// flags into a configuration, and the scale benchmark runs the same
// assembly on simulated hosts.
package daemon

import (
	"context"
	"log/slog"
	"time"

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
	Log                                     *slog.Logger
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
	go ha.NewLiveness(st, hosts.Leading, log).Run(ctx)
	// A 1 s leader lease (etcd's smallest): when the leader's host dies,
	// another host leads — and reports the dead one — within about a
	// second. Losing leadership in an etcd hiccup costs nothing but a new
	// election: every controller write is fenced by the leader key.
	// Admission first (a queued migration waits for it), host health
	// before the restarts it decides, new guests and drains after.
	leader.Run(ctx, st, leader.Config{Name: c.Node, TTL: time.Second, Log: log, OnRound: c.OnRound},
		admission, hosts, ha.NewRestarts(st, hosts, c.HA, log),
		sched.New(st, log), migrate.NewDrain(st, log), leader.NewHousekeeping(st, log))
}
