// Package placement is Ferry's one placement engine: it decides which hosts
// may take a guest and which of them is best, for every decision that puts a
// guest somewhere — scheduling a new guest, restarting an HA guest of a dead
// host, admitting a migration, draining a host, `vm migrate --to auto` — so
// that all of them agree on capacity (with the guests on their way counted),
// anti-affinity, maintenance, health, images, machine types and, for live
// moves, what the QEMUs at both ends allow.
//
// A View is the cluster as one round of decisions sees it; each decision
// made is recorded in it (Reserve), so the next one in the same round sees
// the room it took.
package placement

import (
	"fmt"
	"slices"
	"sort"
	"strings"

	"github.com/ferryvm/ferry/api"
)

// View is the cluster for one round of placement decisions.
type View struct {
	nodes  map[string]*api.Node
	names  []string                   // sorted
	free   map[string]int             // MiB left on ready hosts, guests on their way counted
	groups map[string]map[string]bool // anti-affinity group -> hosts holding a member
	// degraded are the links that lose packets or grew slow, "from/to"
	// -> why: live moves avoid them where another target exists.
	degraded map[string]string
	// cpu is each host's forecast peak CPU use (its guests', in CPUs,
	// as the host reports it), guests sent there this round counted.
	cpu map[string]float64
}

// AvoidLinks tells the view which links between hosts are degraded
// ("from/to" -> why, as the hosts' link probes judged them).
func (v *View) AvoidLinks(degraded map[string]string) { v.degraded = degraded }

// NewView builds a view from the hosts, the VMs (where they are placed) and
// the migrations whose guests are on their way somewhere. Pass only the
// migrations whose room must be held: all unfinished ones for a new
// decision, only the admitted ones when admitting the queue.
func NewView(nodes []api.Node, vms []api.VM, migs []api.Migration) *View {
	v := &View{nodes: map[string]*api.Node{}, free: map[string]int{}, groups: map[string]map[string]bool{}, cpu: map[string]float64{}}
	for i := range nodes {
		n := &nodes[i]
		v.nodes[n.Name] = n
		v.names = append(v.names, n.Name)
		if n.State == "ready" {
			v.free[n.Name] = n.MemoryMiB
		}
		if n.Load != nil {
			v.cpu[n.Name] = n.Load.Peak
		}
	}
	sort.Strings(v.names)
	mem := map[string]int{}
	placed := map[string]string{}
	for _, vm := range vms {
		mem[vm.Spec.Name], placed[vm.Spec.Name] = vm.Spec.MemoryMiB, vm.Node
		if _, ok := v.free[vm.Node]; ok {
			v.free[vm.Node] -= vm.Spec.MemoryMiB
		}
		if g := vm.Spec.AntiAffinity; g != "" && vm.Node != "" {
			v.addGroup(g, vm.Node)
		}
	}
	// Two requests that each see room for one more guest must not both send
	// it to the same host: a guest on its way (a migration not yet ended,
	// queued ones included) holds its room on the target.
	for _, m := range migs {
		if api.MigrationTerminal(m.Phase) || placed[m.VM] == m.Target {
			continue
		}
		if _, ok := v.free[m.Target]; ok {
			v.free[m.Target] -= mem[m.VM]
		}
	}
	return v
}

func (v *View) addGroup(g, host string) {
	if v.groups[g] == nil {
		v.groups[g] = map[string]bool{}
	}
	v.groups[g][host] = true
}

// Node returns a host of the view, or nil.
func (v *View) Node(name string) *api.Node { return v.nodes[name] }

// Free is the memory a host has left in this view (MiB).
func (v *View) Free(host string) int { return v.free[host] }

// Request is what a decision places.
type Request struct {
	Spec api.VMSpec
	// Live, for a running guest that moves live from Live.Node: the
	// target's QEMU must be able to take it (see CheckLive).
	Live *api.VM
	// Exclude are hosts the guest must not go to (where it is now).
	Exclude []string
	// Room false skips the memory check (a guest whose room the view
	// already holds, e.g. a queued migration being admitted).
	IgnoreRoom bool
	// CPU is the guest's forecast peak CPU use; with CPUShare above zero,
	// a host whose forecast peak with the guest would pass that share of
	// its capacity cannot take it, and the least loaded host is best (the
	// balancer's moves). Hosts that report no load are not checked.
	CPU, CPUShare float64
}

// Rejection says why a host cannot take a guest.
type Rejection struct {
	Host string
	Why  string
}

// Check says why host cannot take the request's guest, or returns nil.
func (v *View) Check(r Request, host string) error {
	n := v.nodes[host]
	switch {
	case n == nil:
		return fmt.Errorf("host %q is not in the cluster", host)
	case slices.Contains(r.Exclude, host) || (r.Live != nil && r.Live.Node == host):
		return fmt.Errorf("the guest is on %s already", host)
	case n.State != "ready":
		return fmt.Errorf("host %s is %s", host, n.State)
	case n.Maintenance:
		return fmt.Errorf("host %s is in maintenance (undrain it first)", host)
	case len(n.Degraded) > 0:
		return fmt.Errorf("host %s is degraded: %s", host, strings.Join(n.Degraded, "; "))
	case r.Spec.Image == api.ImageTiny && !slices.Contains(n.Images, api.ImageTiny):
		return fmt.Errorf("host %s has not built the tiny image", host)
	case !r.IgnoreRoom && v.free[host] < r.Spec.MemoryMiB:
		return fmt.Errorf("host %s has no room: %d MiB free (guests placed there and on their way counted), the guest needs %d MiB",
			host, v.free[host], r.Spec.MemoryMiB)
	case r.Spec.AntiAffinity != "" && v.groups[r.Spec.AntiAffinity][host]:
		return fmt.Errorf("host %s holds another guest of anti-affinity group %q", host, r.Spec.AntiAffinity)
	case r.CPUShare > 0 && n.Load != nil && v.cpu[host]+r.CPU > r.CPUShare*n.Load.Capacity:
		return fmt.Errorf("host %s would use %.2f of its %.2f CPUs at its forecast peak (more than %.0f %%)",
			host, v.cpu[host]+r.CPU, n.Load.Capacity, 100*r.CPUShare)
	case r.CPUShare > 0 && n.Load != nil && n.Load.Waiting > ContendedShare*n.Load.Capacity:
		return fmt.Errorf("host %s is contended: its guests wait for their CPUs (%.2f CPUs' worth, more than %.0f %% of its %.2f)",
			host, n.Load.Waiting, 100*ContendedShare, n.Load.Capacity)
	}
	if r.Live != nil {
		return CheckLive(r.Live, v.nodes[r.Live.Node], n)
	}
	if m := r.Spec.Machine; m != "" && n.QEMU != nil && !n.QEMU.HasMachine(m) {
		return fmt.Errorf("host %s's QEMU %s cannot run the guest's machine type %s", host, n.QEMU.Version, m)
	}
	return nil
}

// ContendedShare is the share of a host's capacity its guests may wait for
// their CPUs (Load.Waiting) before the host takes no guest moved for CPU:
// its CPUs are busier than its guests' use says. (A guest's threads wait
// a little on any busy machine: an idle TCG guest on the testbed's shared
// cores waits about 0.1 CPUs' worth.)
const ContendedShare = 0.25

// Candidates are the hosts that can take the request's guest, best first
// (most free memory, then name), and why each other host cannot.
func (v *View) Candidates(r Request) ([]string, []Rejection) {
	var ok []string
	var no []Rejection
	for _, h := range v.names {
		if err := v.Check(r, h); err != nil {
			no = append(no, Rejection{h, err.Error()})
		} else {
			ok = append(ok, h)
		}
	}
	if r.CPUShare > 0 {
		sort.SliceStable(ok, func(i, j int) bool { return v.cpuShare(ok[i]) < v.cpuShare(ok[j]) })
	} else {
		sort.SliceStable(ok, func(i, j int) bool { return v.free[ok[i]] > v.free[ok[j]] })
	}
	if r.Live != nil && len(v.degraded) > 0 {
		// No live move over a degraded link while another target can
		// take the guest; with none other, a degraded path beats none.
		var good, poor []string
		for _, h := range ok {
			if why, bad := v.degraded[r.Live.Node+"/"+h]; bad {
				poor = append(poor, h)
				no = append(no, Rejection{h, fmt.Sprintf("the link from %s to %s is degraded (%s)", r.Live.Node, h, why)})
			} else {
				good = append(good, h)
			}
		}
		if len(good) > 0 {
			return good, no
		}
		return poor, no[:len(no)-len(poor)]
	}
	return ok, no
}

// Pick is the best host for the request, or "" with why none can take it.
func (v *View) Pick(r Request) (string, []Rejection) {
	ok, no := v.Candidates(r)
	if len(ok) == 0 {
		return "", no
	}
	return ok[0], no
}

// Reserve records that spec goes to host in this round.
func (v *View) Reserve(host string, spec api.VMSpec) {
	if _, ok := v.free[host]; ok {
		v.free[host] -= spec.MemoryMiB
	}
	if g := spec.AntiAffinity; g != "" {
		v.addGroup(g, host)
	}
}

// ReserveCPU records that a guest of forecast peak cpu goes to host in this
// round.
func (v *View) ReserveCPU(host string, cpu float64) { v.cpu[host] += cpu }

// cpuShare is the share of a host's capacity its forecast peak takes (0
// for a host that reports no load).
func (v *View) cpuShare(host string) float64 {
	n := v.nodes[host]
	if n == nil || n.Load == nil || n.Load.Capacity <= 0 {
		return 0
	}
	return v.cpu[host] / n.Load.Capacity
}

// Reasons joins rejections into one sentence for an error or event.
func Reasons(no []Rejection) string {
	var s []string
	for _, r := range no {
		s = append(s, r.Why)
	}
	return strings.Join(s, "; ")
}
