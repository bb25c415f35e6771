package apiserver

import (
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/errdefs"
	"github.com/ferryvm/ferry/internal/migrate"
	"github.com/ferryvm/ferry/internal/sched"
	"github.com/ferryvm/ferry/internal/store"
	"github.com/google/uuid"
)

// migrateVM starts a live migration: it checks the VM runs, picks or checks
// the target and records the migration; the two hosts' agents carry it out.
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
	opts := api.MigrationOptions{Strategy: req.Strategy, Compress: req.Compress, Plaintext: req.Plaintext, Transport: req.Transport}
	if req.MaxBandwidth != "" {
		b, err := api.ParseSize(req.MaxBandwidth)
		if err != nil {
			writeError(w, errdefs.Invalid("max_bandwidth: "+err.Error()))
			return
		}
		opts.MaxBandwidth = b
	}
	if req.MaxDowntime != "" {
		d, err := time.ParseDuration(req.MaxDowntime)
		if err != nil || d < time.Millisecond {
			writeError(w, errdefs.Invalid(fmt.Sprintf("max_downtime %q must be a duration of at least 1ms, such as 300ms", req.MaxDowntime)))
			return
		}
		opts.MaxDowntimeMS = d.Milliseconds()
	}
	if err := migrate.Validate(&opts); err != nil {
		writeError(w, errdefs.Invalid(err.Error()))
		return
	}
	ctx := r.Context()
	if opts.Plaintext {
		sec, err := s.st.Security(ctx)
		if err != nil {
			writeError(w, err)
			return
		}
		if !sec.PlaintextMigration {
			writeError(w, errdefs.New(errdefs.ErrFailedPrecondition, "plaintext migration is refused in this cluster: migrations are TLS with source authorization (an admin can allow plaintext with `ferry cluster security --allow-plaintext-migration --reason ...`)"))
			return
		}
	}
	vm, err := s.st.GetVM(ctx, name)
	if err != nil {
		writeError(w, err)
		return
	}
	if vm.Spec.Deleting || vm.Spec.Power != api.PowerRunning || vm.Status.Phase != api.PhaseRunning || vm.Node == "" {
		writeError(w, errdefs.New(errdefs.ErrFailedPrecondition, fmt.Sprintf("vm %q is not running (state %s); only running guests migrate live", name, dash(vm.Status.Phase))))
		return
	}
	nodes, err := s.st.ListNodes(ctx)
	if err != nil {
		writeError(w, err)
		return
	}
	vms, err := s.st.ListVMs(ctx)
	if err != nil {
		writeError(w, err)
		return
	}
	migs, err := s.st.ListMigrations(ctx)
	if err != nil {
		writeError(w, err)
		return
	}
	source := nodeNamed(nodes, vm.Node)
	// Room counts guests already on their way to a host (see sched.FreeMemory).
	free := sched.FreeMemory(nodes, vms, store.Migrations(migs))
	target := req.To
	switch target {
	case "":
		writeError(w, errdefs.Invalid(`"to" is required: a host name, or "auto"`))
		return
	case "auto":
		var cands []api.Node
		var why []string
		for _, n := range sched.Schedulable(nodes) {
			if n.Name == vm.Node {
				continue
			}
			if err := migrate.CheckTarget(vm, source, &n); err != nil {
				why = append(why, err.Error())
				continue
			}
			cands = append(cands, n)
		}
		target = sched.Pick(cands, free, vm.Spec)
		if target == "" {
			msg := "no other ready host can take this guest"
			if len(why) > 0 {
				msg += "; " + strings.Join(why, "; ")
			}
			writeError(w, errdefs.New(errdefs.ErrFailedPrecondition, msg))
			return
		}
	default:
		if err := api.ValidateName("host", target); err != nil {
			writeError(w, errdefs.Invalid(err.Error()))
			return
		}
		var found *api.Node
		for i := range nodes {
			if nodes[i].Name == target {
				found = &nodes[i]
			}
		}
		switch {
		case found == nil:
			writeError(w, errdefs.New(errdefs.ErrNotFound, fmt.Sprintf("host %q is not in the cluster", target)))
			return
		case target == vm.Node:
			writeError(w, errdefs.Invalid(fmt.Sprintf("vm %q already runs on %s", name, target)))
			return
		case found.State != "ready":
			writeError(w, errdefs.New(errdefs.ErrFailedPrecondition, fmt.Sprintf("host %s is %s", target, found.State)))
			return
		case found.Maintenance:
			writeError(w, errdefs.New(errdefs.ErrFailedPrecondition, fmt.Sprintf("host %s is in maintenance (undrain it first)", target)))
			return
		case free[target] < vm.Spec.MemoryMiB:
			writeError(w, errdefs.New(errdefs.ErrFailedPrecondition, fmt.Sprintf("host %s has no room: %d MiB free (guests placed there and on their way counted), the guest needs %d MiB", target, free[target], vm.Spec.MemoryMiB)))
			return
		}
		if err := migrate.CheckTarget(vm, source, found); err != nil {
			writeError(w, errdefs.New(errdefs.ErrFailedPrecondition, err.Error()))
			return
		}
	}
	plan, err := migrate.PlanFor(opts, vm, source, nodeNamed(nodes, target))
	if err != nil {
		writeError(w, errdefs.New(errdefs.ErrFailedPrecondition, err.Error()))
		return
	}
	// Queued: the leader admits it within the per-host and per-cluster limits.
	m := &api.Migration{ID: uuid.NewString(), VM: name, Source: vm.Node, Target: target, Phase: api.MigQueued,
		Options: opts, Plan: plan, Started: time.Now().UTC(), Reason: "operator"}
	if err := s.st.StartMigration(ctx, m); err != nil {
		writeError(w, err)
		return
	}
	s.log.Info("migration requested", "vm", name, "from", m.Source, "to", target, "strategy", opts.Strategy)
	if opts.Plaintext {
		s.event(r, api.Event{Kind: "plaintext-migration", VM: name, Message: fmt.Sprintf("migration of %s from %s to %s in PLAINTEXT", name, m.Source, target)})
		w.Header().Set("Warning", `299 ferry "plaintext migration: the guest's memory crosses the network unencrypted"`)
	}
	writeJSON(w, http.StatusAccepted, m)
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
