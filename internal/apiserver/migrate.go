package apiserver

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/errdefs"
	"github.com/ferryvm/ferry/internal/migrate"
	"github.com/ferryvm/ferry/internal/placement"
	"github.com/ferryvm/ferry/internal/store"
	"github.com/google/uuid"
)

// migrateVM starts a live migration: it checks the VM runs, picks or checks
// the target, makes the plan both QEMUs follow, and records the migration
// queued; the leader admits it and the two hosts' agents carry it out.
func (s *Server) migrateVM(w http.ResponseWriter, r *http.Request) {
	name, ok := s.vmName(w, r)
	if !ok {
		return
	}
	var req api.MigrateRequest
	if err := decode(w, r, &req, false); err != nil {
		writeError(w, err)
		return
	}
	opts, err := migrationOptions(req)
	if err != nil {
		writeError(w, err)
		return
	}
	ctx := r.Context()
	if opts.Plaintext {
		if err := s.plaintextAllowed(r); err != nil {
			writeError(w, err)
			return
		}
	}
	m, err := s.newMigration(r, name, req, opts)
	if err != nil {
		writeError(w, err)
		return
	}
	if req.DryRun {
		writeJSON(w, http.StatusOK, m.Prediction)
		return
	}
	if err := s.st.StartMigration(ctx, m); err != nil {
		writeError(w, err)
		return
	}
	s.log.Info("migration requested", "vm", name, "from", m.Source, "to", m.Target, "strategy", m.Options.Strategy, "auto", m.Options.Auto)
	if p := m.Prediction; p != nil {
		s.event(r, api.Event{Kind: "migration-predicted", VM: name, Node: m.Source, Message: fmt.Sprintf("migration of %s to %s: %s", name, m.Target, p.Why)})
	}
	if opts.Plaintext {
		s.event(r, api.Event{Kind: "plaintext-migration", VM: name, Message: fmt.Sprintf("migration of %s from %s to %s in PLAINTEXT", name, m.Source, m.Target)})
		w.Header().Set("Warning", `299 ferry "plaintext migration: the guest's memory crosses the network unencrypted"`)
	}
	writeJSON(w, http.StatusAccepted, m)
}

// migrationOptions validates a request's options and fills defaults.
func migrationOptions(req api.MigrateRequest) (api.MigrationOptions, error) {
	opts := api.MigrationOptions{Strategy: req.Strategy, Compress: req.Compress, Plaintext: req.Plaintext, Transport: req.Transport, HeldOut: req.HeldOut}
	if opts.Strategy == "" && !opts.Compress {
		opts.Strategy = api.StrategyAuto
	}
	if req.MaxBandwidth != "" {
		b, err := api.ParseSize(req.MaxBandwidth)
		if err != nil {
			return opts, errdefs.Invalid("max_bandwidth: " + err.Error())
		}
		opts.MaxBandwidth = b
	}
	if req.MaxDowntime != "" {
		d, err := time.ParseDuration(req.MaxDowntime)
		if err != nil || d < time.Millisecond {
			return opts, errdefs.Invalid(fmt.Sprintf("max_downtime %q must be a duration of at least 1ms, such as 300ms", req.MaxDowntime))
		}
		opts.MaxDowntimeMS = d.Milliseconds()
	}
	if err := migrate.Validate(&opts); err != nil {
		return opts, errdefs.Invalid(err.Error())
	}
	return opts, nil
}

// plaintextAllowed refuses a plaintext migration unless an admin allowed it.
func (s *Server) plaintextAllowed(r *http.Request) error {
	sec, err := s.st.Security(r.Context())
	if err != nil {
		return err
	}
	if !sec.PlaintextMigration {
		return errdefs.New(errdefs.ErrFailedPrecondition, "plaintext migration is refused in this cluster: migrations are TLS with source authorization (an admin can allow plaintext with `ferry cluster security --allow-plaintext-migration --reason ...`)")
	}
	return nil
}

// newMigration checks that the VM runs, picks (to "auto") or checks the
// target with the placement engine, applies the guest's migration policy,
// predicts the move (choosing the strategy for "auto") and plans it.
func (s *Server) newMigration(r *http.Request, name string, mr api.MigrateRequest, opts api.MigrationOptions) (*api.Migration, error) {
	ctx := r.Context()
	to := mr.To
	if to == "" {
		return nil, errdefs.Invalid(`"to" is required: a host name, or "auto"`)
	}
	if to != "auto" {
		if err := api.ValidateName("host", to); err != nil {
			return nil, errdefs.Invalid(err.Error())
		}
	}
	vm, err := s.st.GetVM(ctx, name)
	if err != nil {
		return nil, err
	}
	if vm.Spec.Deleting || vm.Spec.Power != api.PowerRunning || vm.Status.Phase != api.PhaseRunning || vm.Node == "" {
		return nil, errdefs.New(errdefs.ErrFailedPrecondition, fmt.Sprintf("vm %q is not running (state %s); only running guests migrate live", name, dash(vm.Status.Phase)))
	}
	view, err := s.clusterView(ctx)
	if err != nil {
		return nil, err
	}
	req := placement.Request{Spec: vm.Spec, Live: vm}
	switch target := to; {
	case target == "auto":
		var no []placement.Rejection
		if to, no = view.Pick(req); to == "" {
			return nil, errdefs.New(errdefs.ErrFailedPrecondition, "no other host can take this guest: "+placement.Reasons(no))
		}
	case view.Node(target) == nil:
		return nil, errdefs.New(errdefs.ErrNotFound, fmt.Sprintf("host %q is not in the cluster", target))
	case target == vm.Node:
		return nil, errdefs.Invalid(fmt.Sprintf("vm %q already runs on %s", name, target))
	default:
		if err := view.Check(req, target); err != nil {
			return nil, errdefs.New(errdefs.ErrFailedPrecondition, err.Error())
		}
	}
	pred, err := migrate.Decide(ctx, s.st, migrate.Deciding{VM: vm, Src: view.Node(vm.Node), Dst: view.Node(to),
		AskedDowntime: mr.MaxDowntime != "", AskedBandwidth: mr.MaxBandwidth != ""}, &opts)
	if err != nil {
		return nil, err
	}
	plan, err := migrate.PlanFor(opts, vm, view.Node(vm.Node), view.Node(to))
	if err != nil {
		return nil, errdefs.New(errdefs.ErrFailedPrecondition, err.Error())
	}
	// Queued: the leader admits it within the per-host and per-cluster limits.
	return &api.Migration{ID: uuid.NewString(), VM: name, Source: vm.Node, Target: to, Phase: api.MigQueued,
		Options: opts, Plan: plan, Started: time.Now().UTC(), Reason: "operator", Prediction: pred}, nil
}

// listMigrations answers GET /v1/migrations: each guest's current or last
// migration, those under way first, then the newest.
func (s *Server) listMigrations(w http.ResponseWriter, r *http.Request) {
	ms, err := s.st.ListMigrations(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	out := store.Migrations(ms)
	sort.SliceStable(out, func(i, j int) bool {
		ti, tj := api.MigrationTerminal(out[i].Phase), api.MigrationTerminal(out[j].Phase)
		if ti != tj {
			return !ti
		}
		return out[i].Started.After(out[j].Started)
	})
	writeJSON(w, http.StatusOK, out)
}

// getBalancePlan answers GET /v1/balance/plan: what the leader's balancer
// would do now and why.
func (s *Server) getBalancePlan(w http.ResponseWriter, r *http.Request) {
	p, err := s.st.BalancePlan(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusOK, p)
}

func (s *Server) getMigration(w http.ResponseWriter, r *http.Request) {
	name, ok := s.vmName(w, r)
	if !ok {
		return
	}
	m, _, err := s.st.GetMigration(r.Context(), name)
	if err != nil {
		writeError(w, err)
		return
	}
	if m == nil {
		if _, err := s.st.GetVM(r.Context(), name); err != nil {
			writeError(w, err)
			return
		}
		writeError(w, errdefs.New(errdefs.ErrNotFound, fmt.Sprintf("vm %q has never migrated", name)))
		return
	}
	writeJSON(w, 200, m)
}

// cancelMigration stops a migration in flight unless its switchover has
// already happened; the guest stays on the source.
func (s *Server) cancelMigration(w http.ResponseWriter, r *http.Request) {
	name, ok := s.vmName(w, r)
	if !ok {
		return
	}
	m, _, err := s.st.UpdateMigration(r.Context(), name, func(m *api.Migration) error {
		switch m.Phase {
		case api.MigQueued:
			m.Cancel, m.Phase, m.Error, m.Finished = true, api.MigCancelled, "cancelled while queued", time.Now().UTC()
			return nil
		case api.MigPending, api.MigTargetReady, api.MigCopying:
			m.Cancel = true
			return nil
		case api.MigSwitchover:
			return errdefs.New(errdefs.ErrConflict, fmt.Sprintf("vm %q is already switching over to %s; too late to cancel", name, m.Target))
		default:
			return errdefs.New(errdefs.ErrFailedPrecondition, fmt.Sprintf("vm %q has no migration in flight (last: %s)", name, m.Phase))
		}
	})
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, m)
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

// drainNode puts a host in maintenance: no new guests, and the leader
// live-migrates its running guests away within the migration limits.
func (s *Server) drainNode(w http.ResponseWriter, r *http.Request) { s.setMaintenance(w, r, true) }

// undrainNode takes a host out of maintenance.
func (s *Server) undrainNode(w http.ResponseWriter, r *http.Request) { s.setMaintenance(w, r, false) }

func (s *Server) setMaintenance(w http.ResponseWriter, r *http.Request, on bool) {
	name := r.PathValue("name")
	if err := api.ValidateName("host", name); err != nil {
		writeError(w, errdefs.Invalid(err.Error()))
		return
	}
	nodes, err := s.st.ListNodes(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	node := nodeNamed(nodes, name)
	if node == nil {
		writeError(w, errdefs.New(errdefs.ErrNotFound, fmt.Sprintf("host %q is not in the cluster", name)))
		return
	}
	if err := s.st.SetMaintenance(r.Context(), name, on); err != nil {
		writeError(w, err)
		return
	}
	node.Maintenance = on
	s.log.Info("maintenance", "node", name, "on", on)
	if on {
		s.event(r, api.Event{Kind: "drain", Node: name, Message: fmt.Sprintf("host %s in maintenance: its guests move away", name)})
	} else {
		s.event(r, api.Event{Kind: "undrain", Node: name, Message: fmt.Sprintf("host %s out of maintenance", name)})
	}
	writeJSON(w, http.StatusAccepted, node)
}

// clusterView is the placement view a target is chosen from: from the
// server's mirror when it has one (reading every VM of a large cluster for
// each call costs more than the call), else read now. Either may be a
// moment old; the leader's admission checks the target again.
func (s *Server) clusterView(ctx context.Context) (*placement.View, error) {
	if s.Mirror != nil {
		if snap, ok := s.Mirror.Snapshot(); ok {
			v := placement.NewView(snap.Nodes, snap.VMs, store.Migrations(snap.Migrations))
			v.AvoidLinks(snap.Degraded)
			return v, nil
		}
	}
	nodes, err := s.st.ListNodes(ctx)
	if err != nil {
		return nil, err
	}
	vms, err := s.st.ListVMs(ctx)
	if err != nil {
		return nil, err
	}
	migs, err := s.st.ListMigrations(ctx)
	if err != nil {
		return nil, err
	}
	degraded, err := s.st.DegradedLinks(ctx)
	if err != nil {
		return nil, err
	}
	v := placement.NewView(nodes, vms, store.Migrations(migs))
	v.AvoidLinks(degraded)
	return v, nil
}
