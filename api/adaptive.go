package api

import "time"

// StrategyAuto lets Ferry choose the strategy from its prediction (the
// default), and escalate by policy when a guest does not converge.
const StrategyAuto = "auto"

// StrategyCompress names multifd with compressed pages in predictions and
// policies (MigrateRequest.Compress asks for it by hand).
const StrategyCompress = "compress"

// Escalations a migration that does not converge may take, in this order.
const (
	EscalateDowntime = "downtime" // raise the downtime limit up to the policy's allowed maximum
	EscalateThrottle = "throttle" // slow the guest's CPUs (auto-converge; dirty-limit under KVM)
	EscalatePostcopy = "postcopy" // switch to post-copy
)

// MemoryLoad is how the guest uses its memory, as its host last measured it.
type MemoryLoad struct {
	// DirtyRate is how fast the guest writes pages, bytes per second
	// (QEMU's page-sampling measurement over one second).
	DirtyRate float64 `json:"dirty_rate"`
	// WorkingSet is how much memory the guest keeps rewriting, bytes: what
	// it dirtied over four seconds when that was clearly less than four
	// times a second's worth (0: not seen to be smaller than its memory).
	WorkingSet int64 `json:"working_set,omitempty"`
	// ZeroShare is the share of its memory that holds only zeros.
	ZeroShare float64 `json:"zero_share"`
	// CompressRatio is what its other pages shrink to when compressed
	// (compressed bytes per byte; 1: not at all).
	CompressRatio float64 `json:"compress_ratio,omitempty"`
	// DirtyCompressRatio is the same of the pages it writes over again:
	// what a migration's later rounds send.
	DirtyCompressRatio float64   `json:"dirty_compress_ratio,omitempty"`
	MeasuredAt         time.Time `json:"measured_at"`
}

// LinkStat is the path from one host to another as the first measured it.
type LinkStat struct {
	From string `json:"from"`
	To   string `json:"to"`
	// RTT is the round trip, Bandwidth one TCP stream's rate in bytes per
	// second (0: not measured yet).
	RTTMS      float64   `json:"rtt_ms"`
	Bandwidth  float64   `json:"bandwidth"`
	RTTAt      time.Time `json:"rtt_at"`
	MeasuredAt time.Time `json:"bandwidth_at,omitempty"`
	// The link's health over its recent probes (Samples of them): the
	// packet loss they suggest, the jitter of their round trips (mean
	// difference between successive ones) and the least round trip the
	// link has shown (its own latency).
	LossPct       float64 `json:"loss_pct"`
	JitterMS      float64 `json:"jitter_ms"`
	BaselineRTTMS float64 `json:"baseline_rtt_ms,omitempty"`
	Samples       int     `json:"samples,omitempty"`
	// Degraded says the link lost packets or its latency grew well beyond
	// its own (Why says which); the placement engine moves no guest over
	// it while a better target exists.
	Degraded      bool      `json:"degraded,omitempty"`
	Why           string    `json:"why,omitempty"`
	DegradedSince time.Time `json:"degraded_since,omitempty"`
}

// LinkTestRequest is the body of POST /v1/links/test: measure the link
// from one host to another now, its bandwidth included.
type LinkTestRequest struct {
	From string `json:"from"`
	To   string `json:"to"`
}

// StrategyPrediction is what the model predicts for one strategy.
type StrategyPrediction struct {
	Strategy   string  `json:"strategy"`
	Converges  bool    `json:"converges"`
	TotalMS    float64 `json:"total_ms"`
	DowntimeMS float64 `json:"downtime_ms"`
	Bytes      int64   `json:"bytes"`
	Rounds     int     `json:"rounds"`
	Throttle   int     `json:"throttle_pct,omitempty"`
	// PostcopyMS is how long the guest runs on the target while pages
	// still come from the source.
	PostcopyMS float64 `json:"postcopy_ms,omitempty"`
	Why        string  `json:"why"`
	// Calibrated is how many of the cluster's finished migrations with
	// this strategy the model's constants were fitted to (0: defaults).
	Calibrated int `json:"calibrated"`
}

// MigrationPrediction is the prediction for one move: what it was made
// from, every strategy's figures, and the one chosen and why.
type MigrationPrediction struct {
	Source      string               `json:"source"`
	Target      string               `json:"target"`
	MemoryBytes int64                `json:"memory_bytes"`
	Memory      MemoryLoad           `json:"memory"`
	Link        LinkStat             `json:"link"`
	Policy      string               `json:"policy"`
	MaxDowntime float64              `json:"max_downtime_ms"`
	Strategies  []StrategyPrediction `json:"strategies"`
	Chosen      string               `json:"chosen"`
	// SwitchoverMS is the pause beyond QEMU's last pages the chosen
	// strategy's constants expect (the guest answering again): a raised
	// downtime limit leaves room for it within the allowed pause.
	SwitchoverMS float64   `json:"switchover_ms,omitempty"`
	Why          string    `json:"why"`
	Made         time.Time `json:"made"`
	// Assumed names the inputs that were not measured yet and rest on
	// defaults ("memory": the guest's dirty rate and zero pages, measured
	// some seconds after it starts; "link": the path to the target): a
	// prediction with any is rough.
	Assumed []string `json:"assumed,omitempty"`
}

// Chosen's figures, if any.
func (p *MigrationPrediction) ChosenPrediction() *StrategyPrediction {
	for i := range p.Strategies {
		if p.Strategies[i].Strategy == p.Chosen {
			return &p.Strategies[i]
		}
	}
	return nil
}

// MigrationPolicy is a named set of migration rules for the guests whose
// labels match its selector (KubeVirt's MigrationPolicy is the model).
type MigrationPolicy struct {
	Name string `json:"name"`
	// Selector: every label here must be on the guest; among policies that
	// match, the one with the most labels wins (then the name, in order).
	Selector map[string]string `json:"selector,omitempty"`
	// MaxBandwidth caps the stream, bytes per second (0: none).
	MaxBandwidth int64 `json:"max_bandwidth,omitempty"`
	// MaxDowntimeMS is the pause a migration aims for; AllowedDowntimeMS the
	// most the downtime escalation may raise it to (>= MaxDowntimeMS).
	MaxDowntimeMS     int64 `json:"max_downtime_ms"`
	AllowedDowntimeMS int64 `json:"allowed_downtime_ms"`
	// Strategies the automatic choice may pick (empty: all).
	Strategies []string `json:"strategies,omitempty"`
	// Escalations allowed, in the order taken (EscalateDowntime, ...).
	Escalations []string `json:"escalations"`
	// TimeoutS ends a migration that has not completed (0: none).
	TimeoutS int64     `json:"timeout_s,omitempty"`
	Created  time.Time `json:"created"`
}

// MigrationPolicyRequest is the body of POST /v1/policies: sizes and
// durations as text ("100M", "300ms").
type MigrationPolicyRequest struct {
	Name            string            `json:"name"`
	Selector        map[string]string `json:"selector,omitempty"`
	MaxBandwidth    string            `json:"max_bandwidth,omitempty"`
	MaxDowntime     string            `json:"max_downtime,omitempty"`
	AllowedDowntime string            `json:"allowed_downtime,omitempty"`
	Strategies      []string          `json:"strategies,omitempty"`
	// Escalations: nil takes the default (all, in order); an empty list
	// allows none.
	Escalations []string `json:"escalations"`
	Timeout     string   `json:"timeout,omitempty"`
}

// MigrationEscalation is one step a migration took to converge.
type MigrationEscalation struct {
	Kind   string    `json:"kind"` // EscalateDowntime, EscalateThrottle, EscalatePostcopy
	Round  int64     `json:"round"`
	Detail string    `json:"detail"`
	At     time.Time `json:"at"`
}

// DashboardLogin is a one-time link that logs a browser in to the
// dashboard as the user who asked for it (POST /v1/sessions).
type DashboardLogin struct {
	URL     string    `json:"url"`
	User    string    `json:"user"`
	Role    string    `json:"role"`
	Expires time.Time `json:"expires"`
}

// WhoAmI is the caller as the API sees it (GET /v1/whoami).
type WhoAmI struct {
	User string `json:"user"`
	Role string `json:"role"`
}
