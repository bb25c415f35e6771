// The guests' routes: create, read, start, stop, restart and delete.

package apiserver

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/errdefs"
	"github.com/google/uuid"
)

func (s *Server) listVMs(w http.ResponseWriter, r *http.Request) {
	vms, err := s.st.ListVMs(r.Context())
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, 200, vms)
}

func (s *Server) vmName(w http.ResponseWriter, r *http.Request) (string, bool) {
	name := r.PathValue("name")
	if err := api.ValidateName("vm", name); err != nil {
		writeError(w, errdefs.Invalid(err.Error()))
		return "", false
	}
	return name, true
}

func (s *Server) getVM(w http.ResponseWriter, r *http.Request) {
	name, ok := s.vmName(w, r)
	if !ok {
		return
	}
	vm, err := s.st.GetVM(r.Context(), name)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, 200, vm)
}

func (s *Server) createVM(w http.ResponseWriter, r *http.Request) {
	var req api.VMCreateRequest
	if err := decode(w, r, &req, false); err != nil {
		writeError(w, err)
		return
	}
	spec, err := s.specFor(r.Context(), req)
	if err != nil {
		writeError(w, err)
		return
	}
	if err := s.st.CreateVM(r.Context(), spec); err != nil {
		writeError(w, err)
		return
	}
	s.log.Info("vm created", "vm", spec.Name, "memory_mib", spec.MemoryMiB, "image", spec.Image)
	vm, err := s.st.GetVM(r.Context(), spec.Name)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusCreated, vm)
}

// specFor validates a create request and turns it into a spec.
func (s *Server) specFor(ctx context.Context, req api.VMCreateRequest) (*api.VMSpec, error) {
	if err := api.ValidateName("vm", req.Name); err != nil {
		return nil, errdefs.Invalid(err.Error())
	}
	spec := &api.VMSpec{Name: req.Name, UUID: uuid.NewString(), CPUs: req.CPUs, Image: req.Image,
		Power: api.PowerRunning, StartSeq: 1, Created: time.Now().UTC()}
	if req.Start != nil && !*req.Start {
		spec.Power, spec.StartSeq = api.PowerStopped, 0
	}
	if req.Memory == "" {
		req.Memory = DefaultMemory
	}
	mem, err := api.ParseSizeMiB(req.Memory)
	if err != nil {
		return nil, errdefs.Invalid("memory: " + err.Error())
	}
	if mem < api.MinMemoryMiB || mem > api.MaxMemoryMiB {
		return nil, errdefs.Invalid(fmt.Sprintf("memory must be between %s and %s", api.FormatMiB(api.MinMemoryMiB), api.FormatMiB(api.MaxMemoryMiB)))
	}
	spec.MemoryMiB = mem
	if err := haAndLabels(spec, req); err != nil {
		return nil, err
	}
	if spec.CPUs == 0 {
		spec.CPUs = 1
	}
	if spec.CPUs < 1 || spec.CPUs > api.MaxCPUs {
		return nil, errdefs.Invalid(fmt.Sprintf("cpus must be between 1 and %d", api.MaxCPUs))
	}
	if spec.Image == "" {
		spec.Image = api.ImageTiny
	}
	nodes, err := s.st.ListNodes(ctx)
	if err != nil {
		return nil, err
	}
	if spec.Image == api.ImageTiny {
		if req.Disk == "" {
			req.Disk = DefaultDisk
		}
		d, err := api.ParseSizeMiB(req.Disk)
		if err != nil {
			return nil, errdefs.Invalid("disk: " + err.Error())
		}
		if d < api.MinDiskMiB || d > api.MaxDiskMiB {
			return nil, errdefs.Invalid(fmt.Sprintf("disk must be between %s and %s", api.FormatMiB(api.MinDiskMiB), api.FormatMiB(api.MaxDiskMiB)))
		}
		spec.DiskMiB = d
		if !slices.ContainsFunc(nodes, func(n api.Node) bool { return slices.Contains(n.Images, api.ImageTiny) }) {
			return nil, errdefs.New(errdefs.ErrFailedPrecondition, "image tiny is not built on any node: run `ferry image build` on the hosts")
		}
	} else {
		if req.Disk != "" {
			return nil, errdefs.Invalid("disk: a size applies to the tiny image only; a VM from an image file boots from a copy-on-write overlay of that file")
		}
		fmtName, err := imageFormat(spec.Image)
		if err != nil {
			return nil, err
		}
		spec.ImageFmt = fmtName
	}
	if len(nodes) > 0 && !slices.ContainsFunc(nodes, func(n api.Node) bool { return n.MemoryMiB >= mem }) {
		return nil, errdefs.New(errdefs.ErrFailedPrecondition, fmt.Sprintf("no node has %s of memory", api.FormatMiB(mem)))
	}
	return spec, nil
}

// haAndLabels checks and takes a request's HA settings and labels.
func haAndLabels(spec *api.VMSpec, req api.VMCreateRequest) error {
	if req.HAPriority < 0 || req.HAPriority > api.MaxHAPriority {
		return errdefs.Invalid(fmt.Sprintf("ha_priority must be between 0 and %d", api.MaxHAPriority))
	}
	if (req.HAPriority != 0 || req.AntiAffinity != "") && !req.HA {
		return errdefs.Invalid("ha_priority and anti_affinity apply to HA guests: set ha too")
	}
	if req.AntiAffinity != "" {
		if err := api.ValidateName("anti-affinity group", req.AntiAffinity); err != nil {
			return errdefs.Invalid(err.Error())
		}
	}
	spec.HA, spec.HAPriority, spec.AntiAffinity = req.HA, req.HAPriority, req.AntiAffinity
	if err := api.ValidateLabels(req.Labels); err != nil {
		return errdefs.Invalid(err.Error())
	}
	if len(req.Labels) > 0 {
		spec.Labels = req.Labels
	}
	return nil
}

// imageFormat checks a user image path and tells qcow2 from raw.
func imageFormat(path string) (string, error) {
	if !filepath.IsAbs(path) {
		return "", errdefs.Invalid(fmt.Sprintf("image %q: use %q or an absolute path to a qcow2 or raw image", path, api.ImageTiny))
	}
	for _, c := range path {
		if c == ',' || c < ' ' {
			return "", errdefs.Invalid(fmt.Sprintf("image path %q contains a comma or control character", path))
		}
	}
	f, err := os.Open(path)
	if err != nil {
		return "", errdefs.Invalid(fmt.Sprintf("image %q cannot be opened: %v", path, errors.Unwrap(err)))
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil || !st.Mode().IsRegular() {
		return "", errdefs.Invalid(fmt.Sprintf("image %q is not a regular file", path))
	}
	if st.Size() < 512 {
		return "", errdefs.Invalid(fmt.Sprintf("image %q is too small to be a disk image", path))
	}
	magic := make([]byte, 4)
	io.ReadFull(f, magic)
	if string(magic) == "QFI\xfb" {
		return "qcow2", nil
	}
	return "raw", nil
}

func (s *Server) update(w http.ResponseWriter, r *http.Request, fn func(*api.VMSpec) error) {
	name, ok := s.vmName(w, r)
	if !ok {
		return
	}
	if _, err := s.st.UpdateSpec(r.Context(), name, func(sp *api.VMSpec) error {
		if sp.Deleting {
			return errdefs.New(errdefs.ErrConflict, fmt.Sprintf("vm %q is being deleted", name))
		}
		return fn(sp)
	}); err != nil {
		writeError(w, err)
		return
	}
	vm, err := s.st.GetVM(r.Context(), name)
	if err != nil {
		writeError(w, err)
		return
	}
	writeJSON(w, http.StatusAccepted, vm)
}

func (s *Server) startVM(w http.ResponseWriter, r *http.Request) {
	name, ok := s.vmName(w, r)
	if !ok {
		return
	}
	cur, err := s.st.GetVM(r.Context(), name)
	if err != nil {
		writeError(w, err)
		return
	}
	s.update(w, r, func(sp *api.VMSpec) error {
		ph := cur.Status.Phase
		if sp.Power == api.PowerRunning && cur.Status.StartSeq == sp.StartSeq && ph != api.PhaseFailed && ph != api.PhaseStopped {
			return nil // already running or on its way
		}
		sp.Power = api.PowerRunning
		sp.StartSeq++
		sp.StopForce, sp.StopGrace = false, ""
		return nil
	})
}

func (s *Server) restartVM(w http.ResponseWriter, r *http.Request) {
	req, ok := decodeStop(w, r)
	if !ok {
		return
	}
	s.update(w, r, func(sp *api.VMSpec) error {
		sp.Power = api.PowerRunning
		sp.StartSeq++
		sp.StopForce, sp.StopGrace = req.Force, req.Timeout
		return nil
	})
}

func (s *Server) stopVM(w http.ResponseWriter, r *http.Request) {
	req, ok := decodeStop(w, r)
	if !ok {
		return
	}
	s.update(w, r, func(sp *api.VMSpec) error {
		sp.Power = api.PowerStopped
		sp.StopForce, sp.StopGrace = req.Force, req.Timeout
		return nil
	})
}

// decodeStop reads an optional stop/restart body and validates its timeout.
func decodeStop(w http.ResponseWriter, r *http.Request) (api.VMStopRequest, bool) {
	var req api.VMStopRequest
	if err := decode(w, r, &req, true); err != nil {
		writeError(w, err)
		return req, false
	}
	if err := validGrace(req.Timeout); err != nil {
		writeError(w, err)
		return req, false
	}
	return req, true
}

func validGrace(t string) error {
	if t == "" {
		return nil
	}
	d, err := time.ParseDuration(t)
	if err != nil || d < 0 || d > time.Hour {
		return errdefs.Invalid(fmt.Sprintf("timeout %q must be a duration between 0s and 1h, such as 30s", t))
	}
	return nil
}

func (s *Server) deleteVM(w http.ResponseWriter, r *http.Request) {
	name, ok := s.vmName(w, r)
	if !ok {
		return
	}
	spec, err := s.st.UpdateSpec(r.Context(), name, func(sp *api.VMSpec) error {
		sp.Deleting = true
		return nil
	})
	if err != nil {
		writeError(w, err)
		return
	}
	vm, err := s.st.GetVM(r.Context(), name)
	if errors.Is(err, errdefs.ErrNotFound) {
		// The host it was placed on removed it already (a stopped guest
		// goes in milliseconds): the deletion asked for is done.
		s.log.Info("vm deletion requested", "vm", name)
		writeJSON(w, http.StatusAccepted, &api.VM{Spec: *spec})
		return
	}
	if err != nil {
		writeError(w, err)
		return
	}
	if vm.Node == "" {
		// Never placed: nothing runs anywhere, remove it here.
		if err := s.st.DeleteVM(r.Context(), name, spec.UUID); err != nil {
			writeError(w, err)
			return
		}
	}
	s.log.Info("vm deletion requested", "vm", name)
	writeJSON(w, http.StatusAccepted, vm)
}
