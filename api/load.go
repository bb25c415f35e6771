package api

import "time"

// HostLoad is what a host's guests use of its CPUs, now and as forecast
// from its history (package predict), with each guest's part: what the
// balancer moves guests by.
type HostLoad struct {
	// Capacity is how many CPUs the host's guests may use.
	Capacity float64 `json:"capacity_cpus"`
	// CPU is what the guests used over the last sampling, in CPUs.
	CPU float64 `json:"cpu"`
	// Peak is the highest use forecast within Horizon, PeakInS seconds
	// from Sampled; Method the forecast's method ("holt-winters", "holt",
	// or "none" while there is too little history: Peak is then CPU).
	Peak    float64   `json:"peak_cpu"`
	PeakInS float64   `json:"peak_in_s"`
	Horizon string    `json:"horizon"`
	Method  string    `json:"method"`
	Sampled time.Time `json:"sampled"`
	// Forecast is the forecast use at each step of StepS seconds after
	// Sampled, up to the horizon (none while Method is "none").
	Forecast []float64 `json:"forecast,omitempty"`
	StepS    float64   `json:"step_s,omitempty"`
	// Guests are each local guest's use now and its forecast peak.
	Guests map[string]GuestLoad `json:"guests,omitempty"`
	// Waiting is its guests' Waiting summed: a host whose guests wait is
	// contended, whatever its guests' use says.
	Waiting float64 `json:"waiting_cpu,omitempty"`
	// HistorySource is where the guests' histories are kept: "store"
	// (by the agents) or the Prometheus server they are read from.
	HistorySource string `json:"history_source,omitempty"`
}

// GuestLoad is one guest's CPU use now and its forecast peak within the
// host's horizon, in CPUs.
type GuestLoad struct {
	CPU  float64 `json:"cpu"`
	Peak float64 `json:"peak_cpu"`
	// History is how many buckets of history its forecast had.
	History int `json:"history_buckets,omitempty"`
	// Waiting is how many CPUs' worth of time it waited for its CPUs over
	// the last sampling (its threads runnable but not running: other work
	// ahead of them, a cgroup's quota); HealthMS the median time its last
	// health checks took. Both say how well it is served.
	Waiting  float64 `json:"waiting_cpu,omitempty"`
	HealthMS float64 `json:"health_ms,omitempty"`
}

// Balancer modes: off, reactive (act once a host has been over its
// threshold for a while) and predictive (act ahead of a forecast
// overload, early enough for the move to finish before it).
const (
	BalanceOff        = "off"
	BalanceReactive   = "reactive"
	BalancePredictive = "predictive"
)

// BalancePlan is what the balancer would do now and why: the leader writes
// it on every round that changes it; `ferry balance plan` reads it.
type BalancePlan struct {
	Mode string `json:"mode"`
	// Threshold is the share of a host's capacity above which it counts
	// as overloaded; Target the share a move may fill its target to.
	Threshold float64        `json:"threshold"`
	Target    float64        `json:"target"`
	Made      time.Time      `json:"made"`
	Hosts     []BalanceHost  `json:"hosts"`
	Moves     []BalanceMove  `json:"moves,omitempty"`
	Stuck     []BalanceStuck `json:"stuck,omitempty"`
}

// BalanceHost is one host as the balancer judged it.
type BalanceHost struct {
	Name     string  `json:"name"`
	Capacity float64 `json:"capacity_cpus"`
	CPU      float64 `json:"cpu"`
	Peak     float64 `json:"peak_cpu"`
	PeakInS  float64 `json:"peak_in_s"`
	Method   string  `json:"method"`
	// Waiting is the CPUs' worth of time its guests waited for their
	// CPUs (contention).
	Waiting float64 `json:"waiting_cpu,omitempty"`
	// Over: the host is (reactive) or is forecast to be (predictive)
	// over the threshold.
	Over bool `json:"over"`
}

// BalanceMove is one move the balancer makes now or plans for later.
type BalanceMove struct {
	VM   string  `json:"vm"`
	From string  `json:"from"`
	To   string  `json:"to"`
	CPU  float64 `json:"cpu"` // the guest's use counted (its peak, predictive)
	// PredictedS is how long the move is predicted to take; StartAt when
	// it starts (now, or as late as still finishes before the peak).
	PredictedS float64   `json:"predicted_s"`
	StartAt    time.Time `json:"start_at"`
	Why        string    `json:"why"`
	// Heal: the move is for the guest's own sake (served badly where it
	// is), not its host's; its event is a heal-move.
	Heal bool `json:"heal,omitempty"`
}

// BalanceStuck is an overloaded host the balancer cannot relieve, and why.
type BalanceStuck struct {
	Host string `json:"host"`
	Why  string `json:"why"`
}
