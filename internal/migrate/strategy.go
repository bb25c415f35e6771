// Package migrate holds what Ferry knows about moving a running guest:
// which QEMU capabilities and parameters each strategy needs, which hosts a
// guest may move to, and the planner that admits migrations. The hosts'
// agents carry migrations out; the store records them.
package migrate

import (
	"fmt"
	"slices"
	"strings"

	"github.com/ferryvm/ferry/api"
	"github.com/ferryvm/ferry/internal/placement"
)

// DefaultMaxDowntimeMS is the downtime limit when none is asked for.
const DefaultMaxDowntimeMS = 300

// MultifdChannels is the number of parallel streams for the multifd strategy.
const MultifdChannels = 4

// DefaultTransport carries encrypted migration streams when none is asked for.
var DefaultTransport = api.TransportAgent

// firstDowntimeMS is the downtime limit a migration starts with: QEMU
// switches over as soon as what is left fits in the limit at the rate it
// measures, so a guest that converges anyway (most) moves with the least
// pause. The source raises the limit round by round up to the operator's
// (NextDowntimeMS) for a guest that does not.
const firstDowntimeMS = 20

// InitialDowntimeMS is the downtime limit a migration starts with.
func InitialDowntimeMS(maxMS int64) int64 { return min(maxMS, firstDowntimeMS) }

// NextDowntimeMS is the downtime limit for the next round of a migration
// that has not converged at cur: twice as much, up to the operator's max.
func NextDowntimeMS(cur, maxMS int64) int64 { return min(maxMS, max(cur*2, firstDowntimeMS)) }

// MinTCGVersion is the oldest QEMU that live-migrates TCG guests without
// losing memory: before 9.0 (upstream commit 03bfc2188f, "physmem: Fix
// migration dirty bitmap coherency with TCG memory access") pages a guest
// wrote during the copy could be sent stale; docs/KNOWN-ISSUES.md.
const MinTCGVersion = "9.0.0"

// Validate checks options and fills defaults.
func Validate(o *api.MigrationOptions) error {
	if o.Strategy == "" {
		o.Strategy = api.StrategyPrecopy
	}
	switch o.Strategy {
	case api.StrategyAuto:
		o.Auto = true
		if o.Compress {
			return fmt.Errorf("--compress picks the strategy (multifd with compression); leave --strategy auto out")
		}
	case api.StrategyPrecopy, api.StrategyAutoConverge, api.StrategyPostcopy, api.StrategyMultifd:
	default:
		return fmt.Errorf("strategy %q is not auto, precopy, auto-converge, postcopy or multifd", o.Strategy)
	}
	if o.MaxDowntimeMS == 0 {
		o.MaxDowntimeMS = DefaultMaxDowntimeMS
	}
	if o.MaxDowntimeMS < 1 || o.MaxDowntimeMS > 60000 {
		return fmt.Errorf("max downtime must be between 1ms and 60s")
	}
	if o.MaxBandwidth < 0 {
		return fmt.Errorf("max bandwidth must not be negative")
	}
	if o.Compress && o.Strategy == api.StrategyPostcopy {
		return fmt.Errorf("--compress sends pages through multifd, which does not combine with post-copy")
	}
	switch {
	case o.Plaintext && o.Transport != "" && o.Transport != api.TransportPlain:
		return fmt.Errorf("plaintext and transport %s contradict each other", o.Transport)
	case o.Plaintext || o.Transport == api.TransportPlain:
		o.Plaintext, o.Transport = true, api.TransportPlain
	case o.Transport == "":
		o.Transport = DefaultTransport
	case o.Transport != api.TransportAgent && o.Transport != api.TransportQEMU:
		return fmt.Errorf("transport %q is not %s, %s or %s", o.Transport, api.TransportAgent, api.TransportQEMU, api.TransportPlain)
	}
	return nil
}

// NoLiveMigration says why a host with this accelerator and QEMU version may
// not live-migrate guests, or "" when it may.
func NoLiveMigration(accel, version string) string {
	if accel == "tcg" && placement.CompareVersions(version, MinTCGVersion) < 0 {
		return fmt.Sprintf("QEMU %s loses guest memory when it live-migrates software-emulated (TCG) guests; "+
			"live migration needs QEMU %s or newer (Debian 12: apt-get install -t bookworm-backports qemu-system-x86 qemu-utils, "+
			"or run Ferry's scripts/deps.sh; Debian 13 has it in main), then restart the agent", version, strings.TrimSuffix(MinTCGVersion, ".0"))
	}
	return ""
}

// PlanFor maps validated options to the capabilities and parameters both
// QEMUs are told, using only what both know. It refuses options that need
// something one of them lacks, saying which host and what.
func PlanFor(o api.MigrationOptions, vm *api.VM, src, dst *api.Node) (*api.MigrationPlan, error) {
	if src.QEMU == nil || dst.QEMU == nil {
		return nil, fmt.Errorf("hosts %s and %s must both report their QEMU before a migration between them", src.Name, dst.Name)
	}
	pl := &planning{o: o, src: src, dst: dst, s: src.QEMU, d: dst.QEMU}
	p := pl.base(vm)
	if err := pl.strategy(p); err != nil {
		return nil, err
	}
	if err := pl.multifd(p); err != nil {
		return nil, err
	}
	pl.escalations(p)
	if s := pl.s; s.HasCapability("pause-before-switchover") {
		p.SourceCapabilities["pause-before-switchover"] = true
		p.PauseBeforeSwitchover = true
	}
	if pl.s.HasParameter("avail-switchover-bandwidth") {
		// QEMU's own estimate until the source has measured the link in
		// the first pass and sets it.
		p.SourceParameters["avail-switchover-bandwidth"] = 0
	}
	return p, nil
}

// planning is one PlanFor: the options and what each side's QEMU knows.
type planning struct {
	o        api.MigrationOptions
	src, dst *api.Node
	s, d     *api.QEMUInfo
}

func (pl *planning) both(c string) bool { return pl.s.HasCapability(c) && pl.d.HasCapability(c) }

func (pl *planning) bothParam(p string) bool { return pl.s.HasParameter(p) && pl.d.HasParameter(p) }

// need refuses the strategy when a side that must have capability what
// lacks it, naming the hosts.
func (pl *planning) need(what string, onSource, onTarget bool) error {
	var lack []string
	if onSource && !pl.s.HasCapability(what) {
		lack = append(lack, fmt.Sprintf("%s (QEMU %s)", pl.src.Name, pl.s.Version))
	}
	if onTarget && !pl.d.HasCapability(what) {
		lack = append(lack, fmt.Sprintf("%s (QEMU %s)", pl.dst.Name, pl.d.Version))
	}
	if len(lack) > 0 {
		return fmt.Errorf("the %s strategy needs QEMU's %s migration capability, which %s lacks", pl.o.Strategy, what, strings.Join(lack, " and "))
	}
	return nil
}

// base is the plan every strategy starts from: the machine and boot to
// start the target with, the source's bandwidth and first downtime limit,
// and every capability either side would otherwise keep from an earlier
// migration set explicitly (on both sides where both know it).
func (pl *planning) base(vm *api.VM) *api.MigrationPlan {
	p := &api.MigrationPlan{
		Capabilities:       map[string]bool{},
		SourceCapabilities: map[string]bool{},
		Parameters:         map[string]any{},
		SourceParameters: map[string]any{
			"downtime-limit": InitialDowntimeMS(pl.o.MaxDowntimeMS),
			// 0 is unlimited in current QEMU but throttled in old ones: a
			// very large number means unlimited in every version.
			"max-bandwidth": unlimitedIfZero(pl.o.MaxBandwidth),
		},
		Machine: placement.GuestMachine(vm, pl.src),
		Boot:    vm.Spec.Boot,
	}
	if p.Boot == "" && vm.Spec.Image == api.ImageTiny {
		p.Boot = api.BootBzImage // started before Ferry recorded it: the compressed kernel
	}
	for _, c := range []string{"events", "postcopy-ram", "postcopy-preempt", "multifd"} {
		if pl.both(c) {
			p.Capabilities[c] = false
		}
	}
	p.Capabilities["events"] = true
	for _, c := range []string{"auto-converge", "pause-before-switchover"} {
		if pl.s.HasCapability(c) {
			p.SourceCapabilities[c] = false
		}
	}
	return p
}

// strategy switches on what auto-converge and post-copy need.
func (pl *planning) strategy(p *api.MigrationPlan) error {
	switch pl.o.Strategy {
	case api.StrategyAutoConverge:
		if err := pl.need("auto-converge", true, false); err != nil {
			return err
		}
		p.SourceCapabilities["auto-converge"] = true
		if pl.s.HasParameter("max-cpu-throttle") && pl.o.AllowedDowntimeMS > 0 {
			p.SourceParameters["max-cpu-throttle"] = MaxThrottle(pl.o.AllowedDowntimeMS)
		}
	case api.StrategyPostcopy:
		if err := pl.need("postcopy-ram", true, true); err != nil {
			return err
		}
		p.Capabilities["postcopy-ram"] = true
		p.Postcopy = true
		// A second channel for the pages the guest faults on, so they do
		// not wait behind the background stream.
		if pl.both("postcopy-preempt") {
			p.Capabilities["postcopy-preempt"] = true
		}
		if pl.s.HasParameter("max-postcopy-bandwidth") {
			p.SourceParameters["max-postcopy-bandwidth"] = pl.o.MaxBandwidth // 0: unlimited
		}
	}
	return nil
}

// escalations readies what the policy's escalations need, which QEMU
// accepts only before a migration starts: post-copy enabled on both sides
// (not with multifd, which QEMU 10.0 does not combine with it), and
// auto-converge armed with its throttle capped at 1 % until escalated.
func (pl *planning) escalations(p *api.MigrationPlan) {
	o := pl.o
	multifd := o.Strategy == api.StrategyMultifd || o.Compress
	if slices.Contains(o.Escalations, api.EscalatePostcopy) && o.Strategy != api.StrategyPostcopy && !multifd && pl.both("postcopy-ram") {
		p.Capabilities["postcopy-ram"] = true
		if pl.both("postcopy-preempt") {
			p.Capabilities["postcopy-preempt"] = true
		}
		p.PostcopyReady = true
	}
	throttle := []string{"cpu-throttle-initial", "cpu-throttle-increment", "max-cpu-throttle"}
	if slices.Contains(o.Escalations, api.EscalateThrottle) && o.Strategy != api.StrategyAutoConverge && pl.s.HasCapability("auto-converge") &&
		!slices.ContainsFunc(throttle, func(n string) bool { return !pl.s.HasParameter(n) }) {
		p.SourceCapabilities["auto-converge"] = true
		for _, n := range throttle {
			p.SourceParameters[n] = 1
		}
		p.ThrottleReady = true
	}
}

// multifd sets up parallel channels for the multifd strategy and for
// compression (which needs them), with a method both sides have.
func (pl *planning) multifd(p *api.MigrationPlan) error {
	o, s, d := pl.o, pl.s, pl.d
	if o.Strategy == api.StrategyMultifd || o.Compress {
		what := o.Strategy
		if o.Compress {
			what = "compress"
		}
		if !pl.both("multifd") {
			return fmt.Errorf("%s needs QEMU's multifd migration capability on %s (QEMU %s) and %s (QEMU %s)", what, pl.src.Name, s.Version, pl.dst.Name, d.Version)
		}
		p.Capabilities["multifd"] = true
		if pl.bothParam("multifd-channels") {
			p.Parameters["multifd-channels"] = MultifdChannels
		}
		if pl.bothParam("zero-page-detection") {
			// Zero pages found by the multifd threads, not the main one.
			p.Parameters["zero-page-detection"] = "multifd"
		}
	}
	if pl.bothParam("multifd-compression") {
		p.Parameters["multifd-compression"] = "none"
	}
	if !o.Compress {
		return nil
	}
	for _, m := range []string{"zstd", "zlib"} {
		if slices.Contains(s.MultifdCompression, m) && slices.Contains(d.MultifdCompression, m) {
			p.Parameters["multifd-compression"] = m
			return nil
		}
	}
	return fmt.Errorf("--compress needs a multifd compression method (zstd or zlib) that both %s (%v) and %s (%v) have",
		pl.src.Name, s.MultifdCompression, pl.dst.Name, d.MultifdCompression)
}

func unlimitedIfZero(b int64) int64 {
	if b <= 0 {
		return 1 << 40
	}
	return b
}
