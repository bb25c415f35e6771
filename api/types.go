// Package api holds Ferry's wire types: what the HTTP API accepts and returns,
// and what is stored in etcd. Server, client and CLI share them.
package api

import "time"

// Power states a VM can be asked to be in.
const (
	PowerRunning = "running"
	PowerStopped = "stopped"
)

// VM phases as observed by the agent that hosts the VM.
const (
	PhasePending  = "pending"  // accepted, not yet placed or started
	PhaseStarting = "starting" // QEMU launched, not yet running
	PhaseRunning  = "running"  // QEMU is running the guest
	PhaseStopping = "stopping" // shutting down
	PhaseStopped  = "stopped"  // no QEMU process
	PhaseFailed   = "failed"   // QEMU failed to start or exited unexpectedly
	PhaseDeleting = "deleting" // being removed
)

// MaxHAPriority is the highest restart priority an HA guest can have.
const MaxHAPriority = 1000

// Image names built into Ferry; anything else must be an absolute path.
const ImageTiny = "tiny"

// VMSpec is the desired state of a VM, written by the API.
type VMSpec struct {
	Name      string    `json:"name"`
	UUID      string    `json:"uuid"`
	MemoryMiB int       `json:"memory_mib"`
	CPUs      int       `json:"cpus"`
	Image     string    `json:"image"`                  // "tiny" or an absolute path to a qcow2/raw image
	ImageFmt  string    `json:"image_format,omitempty"` // qcow2|raw for path images
	DiskMiB   int       `json:"disk_mib"`               // size of the VM's own disk (tiny image); 0 for path images
	MAC       string    `json:"mac"`
	IP        string    `json:"ip"` // CIDR, e.g. 198.19.0.10/16
	Power     string    `json:"power"`
	StartSeq  int64     `json:"start_seq"` // bumped by every start/restart request
	StopForce bool      `json:"stop_force,omitempty"`
	StopGrace string    `json:"stop_grace,omitempty"` // duration to wait for a graceful shutdown
	Deleting  bool      `json:"deleting,omitempty"`
	Created   time.Time `json:"created"`
	// HA guests are fenced with their host's lease and restarted on a
	// surviving host when it dies; HAPriority orders restarts (higher first)
	// and guests sharing an AntiAffinity group never share a host.
	HA           bool   `json:"ha,omitempty"`
	HAPriority   int    `json:"ha_priority,omitempty"`
	AntiAffinity string `json:"anti_affinity,omitempty"`
	// Machine is the versioned machine type (e.g. pc-i440fx-10.0) the guest
	// first booted with, recorded by its host at that start; every later
	// start and move keeps it, so the guest's virtual hardware does not
	// change under it when hosts upgrade QEMU.
	Machine string `json:"machine,omitempty"`
	// Boot is how the built-in image's kernel was loaded at the first start
	// (BootPVH; empty for guests first started before Ferry knew it, which
	// keep the compressed kernel): a migration target must load the same.
	Boot string `json:"boot,omitempty"`
	// Labels select migration policies (and, later, other rules).
	Labels map[string]string `json:"labels,omitempty"`
}

// Kernel forms of the built-in image.
const (
	// BootPVH loads the uncompressed kernel through its PVH entry point:
	// no decompression inside the guest, which under TCG took seconds.
	BootPVH = "pvh"
	// BootBzImage loads the compressed kernel (Ferry before PVH).
	BootBzImage = "bzimage"
)

// VMStatus is what the hosting agent observed, written by the agent.
type VMStatus struct {
	Phase     string    `json:"phase"`
	Node      string    `json:"node,omitempty"`
	PID       int       `json:"pid,omitempty"`
	StartSeq  int64     `json:"start_seq"` // the spec StartSeq this status answers
	Accel     string    `json:"accel,omitempty"`
	Message   string    `json:"message,omitempty"`
	LogTail   string    `json:"log_tail,omitempty"`
	Endpoint  string    `json:"endpoint,omitempty"` // host:port where the guest's HTTP port 80 is reachable
	Guest     *Guest    `json:"guest,omitempty"`
	Since     time.Time `json:"since"`
	UpdatedAt time.Time `json:"updated_at"`
	// Restarts counts how often the agent restarted an HA guest that exited
	// on its own (reset after it has run for a while).
	Restarts int `json:"restarts,omitempty"`
	// QEMUVersion is the version of the QEMU the guest runs in: a guest is
	// never moved to an older one.
	QEMUVersion string `json:"qemu_version,omitempty"`
	// Memory is how the guest uses its memory (for migration predictions).
	Memory *MemoryLoad `json:"memory,omitempty"`
}

// Guest is what the agent's probe learned from the guest itself.
type Guest struct {
	Healthy  bool      `json:"healthy"`
	BootID   string    `json:"boot_id,omitempty"`
	UptimeS  float64   `json:"uptime_s,omitempty"`
	LastSeen time.Time `json:"last_seen,omitempty"`
}

// VM is a VM as the API returns it: spec, placement and status together.
type VM struct {
	Spec   VMSpec   `json:"spec"`
	Node   string   `json:"node,omitempty"` // placement decided by the scheduler
	Status VMStatus `json:"status"`
}

// VMCreateRequest is the body of POST /v1/vms. Sizes take suffixes K, M, G, T
// (powers of 1024); a bare number is bytes.
type VMCreateRequest struct {
	Name   string `json:"name"`
	Memory string `json:"memory,omitempty"`
	CPUs   int    `json:"cpus,omitempty"`
	Image  string `json:"image,omitempty"`
	Disk   string `json:"disk,omitempty"`
	Start  *bool  `json:"start,omitempty"`
	// HA, HAPriority (0-1000) and AntiAffinity (a group name) as in VMSpec.
	HA           bool   `json:"ha,omitempty"`
	HAPriority   int    `json:"ha_priority,omitempty"`
	AntiAffinity string `json:"anti_affinity,omitempty"`
	// Labels select migration policies.
	Labels map[string]string `json:"labels,omitempty"`
}

// VMStopRequest is the body of POST /v1/vms/{name}/stop.
type VMStopRequest struct {
	Force   bool   `json:"force,omitempty"`
	Timeout string `json:"timeout,omitempty"` // graceful shutdown wait, e.g. "10s"
}

// Node is a host as registered by its agent.
type Node struct {
	Name        string    `json:"name"`
	State       string    `json:"state"` // ready|not-ready
	Address     string    `json:"address"`
	API         string    `json:"api,omitempty"` // where the host serves the API (host:port)
	CPUs        int       `json:"cpus"`
	MemoryMiB   int       `json:"memory_mib"`
	Accel       string    `json:"accel"`
	QEMUVersion string    `json:"qemu_version"`
	Images      []string  `json:"images"`
	VMs         int       `json:"vms"`
	UsedMiB     int       `json:"used_memory_mib"`
	Load1       float64   `json:"load1"`
	Heartbeat   time.Time `json:"heartbeat"`
	// Maintenance is set by drain: no new guests, running ones move away.
	Maintenance bool `json:"maintenance,omitempty"`
	// Degraded lists what the agent's own health checks found wrong (the
	// storage nearly full, the guest overlay gone); the HA manager drains
	// a degraded host while it still works.
	Degraded []string `json:"degraded,omitempty"`
	// CertSerials are the serial numbers (hex) of the host's cluster and
	// migration certificates: what `ferry node remove` revokes.
	CertSerials []string `json:"cert_serials,omitempty"`
	// QEMU is what the host's QEMU can do, read from it at agent start.
	QEMU *QEMUInfo `json:"qemu,omitempty"`
	// Risk is the host's own forecast of failing soon, from the trends of
	// its health signals; nil before the first assessment or when the
	// host does not read them.
	Risk *HostRisk `json:"risk,omitempty"`
	// Load is what the host's guests use of its CPUs, now and forecast;
	// nil when the host does not sample it.
	Load *HostLoad `json:"load,omitempty"`
	// Paths are the host's addresses on its underlay paths (one per
	// fabric) when it has several; Address is then reached over all of
	// them. PathsDown are its paths to other hosts that do not answer now,
	// as "HOST/DEVICE".
	Paths     []string `json:"paths,omitempty"`
	PathsDown []string `json:"paths_down,omitempty"`
	// Traffic is the host's underlay traffic by class over its last
	// heartbeat interval; nil where the host has no overlay to count on.
	Traffic *NodeTraffic `json:"traffic,omitempty"`
}

// NodeTraffic is a host's underlay traffic by class, in bytes per second
// averaged over the WindowMS before Measured, from its devices' counters:
// Guest is its guests' overlay (VXLAN, encapsulation included), Migration
// what live migrations from and to it carried, Control the rest (etcd,
// heartbeats, the API, link probes).
type NodeTraffic struct {
	Sent     TrafficClasses `json:"sent"`
	Received TrafficClasses `json:"received"`
	WindowMS int64          `json:"window_ms"`
	Measured time.Time      `json:"measured"`
}

// TrafficClasses are bytes per second by class; Total is the underlay's.
type TrafficClasses struct {
	Control   float64 `json:"control"`
	Guest     float64 `json:"guest"`
	Migration float64 `json:"migration"`
	Total     float64 `json:"total"`
}

// HostRisk is a host's probability of failing within Horizon, judged from
// the trends of its health signals (memory and disk errors, NIC errors and
// flaps, temperatures, QEMU failures, lease renewal latency), with the
// signals that drove it. A host whose probability reaches its threshold is
// AtRisk: the HA manager moves its guests away live while it still works.
type HostRisk struct {
	Probability float64   `json:"probability"`
	Horizon     string    `json:"horizon"`
	Threshold   float64   `json:"threshold"`
	AtRisk      bool      `json:"at_risk,omitempty"`
	Signals     int       `json:"signals"` // how many signals the host reads
	Assessed    time.Time `json:"assessed"`
	// Reasons are the signals that contribute, most probable first.
	Reasons []RiskReason `json:"reasons,omitempty"`
}

// RiskReason is one signal's part in a host's risk.
type RiskReason struct {
	Signal      string  `json:"signal"`
	Probability float64 `json:"probability"`
	Reason      string  `json:"reason"`
}

// QEMUInfo is what a host's QEMU binary reported about itself through QMP
// (query-version, query-machines, query-migrate-capabilities,
// query-migrate-parameters) when the agent started.
type QEMUInfo struct {
	Version string `json:"version"`           // e.g. 10.0.2
	Package string `json:"package,omitempty"` // e.g. Debian 1:10.0.2+ds-2
	// Machines are the machine types it can run; Aliases maps an alias
	// (pc, q35) to the versioned type it stands for.
	Machines []string          `json:"machines"`
	Aliases  map[string]string `json:"aliases,omitempty"`
	// Capabilities and Parameters are the migration capabilities and
	// parameters it knows; only these are ever set.
	Capabilities []string `json:"migration_capabilities"`
	Parameters   []string `json:"migration_parameters"`
	// MultifdCompression lists the multifd compression methods it was
	// built with (zstd, zlib, ...).
	MultifdCompression []string `json:"multifd_compression,omitempty"`
	// NoLiveMigration says why this host may not live-migrate guests
	// (empty when it may), e.g. QEMU older than 9.0 under TCG.
	NoLiveMigration string `json:"no_live_migration,omitempty"`
}

// HasCapability reports whether the QEMU knows a migration capability.
func (q *QEMUInfo) HasCapability(c string) bool { return q != nil && contains(q.Capabilities, c) }

// HasParameter reports whether the QEMU knows a migration parameter.
func (q *QEMUInfo) HasParameter(p string) bool { return q != nil && contains(q.Parameters, p) }

// HasMachine reports whether the QEMU can run a machine type.
func (q *QEMUInfo) HasMachine(m string) bool { return q != nil && contains(q.Machines, m) }

func contains(l []string, s string) bool {
	for _, x := range l {
		if x == s {
			return true
		}
	}
	return false
}

// NodeMeta is what operators set on a node (kept apart from the record its
// agent rewrites with every heartbeat).
type NodeMeta struct {
	Maintenance bool      `json:"maintenance"`
	Since       time.Time `json:"since"`
}

// ErrorBody is the body of every non-2xx API response.
type ErrorBody struct {
	Error ErrorDetail `json:"error"`
}

// ErrorDetail carries a stable machine code and a message for people.
type ErrorDetail struct {
	Code    string `json:"code"`
	Message string `json:"message"`
}

// ClusterInfo is what a joining host learns from GET /v1/cluster.
type ClusterInfo struct {
	EtcdEndpoints []string `json:"etcd_endpoints"`
	VNI           int      `json:"vni"`
}

// Migration phases.
const (
	MigQueued      = "queued"       // waiting for a free migration slot
	MigPending     = "pending"      // admitted; the target prepares
	MigTargetReady = "target-ready" // the target QEMU listens, paused
	MigCopying     = "copying"      // memory is being copied
	MigSwitchover  = "switchover"   // ownership moved to the target in one transaction
	MigCompleted   = "completed"    // the guest runs on the target; the source is gone
	MigFailed      = "failed"       // ended without moving; see Error
	MigCancelled   = "cancelled"    // stopped on request; the guest runs on the source
)

// MigrationTerminal reports whether a migration phase is final.
func MigrationTerminal(phase string) bool {
	return phase == MigCompleted || phase == MigFailed || phase == MigCancelled
}

// Strategies for moving memory.
const (
	StrategyPrecopy      = "precopy"
	StrategyAutoConverge = "auto-converge"
	StrategyPostcopy     = "postcopy"
	StrategyMultifd      = "multifd"
)

// Ways a migration stream is carried between hosts.
const (
	// TransportAgent: QEMU streams to a local socket and the hosts' agents
	// carry it over mutual TLS (the default): only the migration's source
	// is admitted, and large TLS records keep the cost low.
	TransportAgent = "agent-tls"
	// TransportQEMU: QEMU's own TLS channel with the same certificates and
	// the same source authorization (one TLS record per page and header).
	TransportQEMU = "qemu-tls"
	// TransportPlain: unencrypted, only where the cluster allows it.
	TransportPlain = "plaintext"
)

// MigrateRequest is the body of POST /v1/vms/{name}/migrate.
type MigrateRequest struct {
	To           string `json:"to"`                      // a host name, or "auto"
	MaxBandwidth string `json:"max_bandwidth,omitempty"` // bytes per second, e.g. "100M"; empty: unlimited
	MaxDowntime  string `json:"max_downtime,omitempty"`  // e.g. "300ms"
	Strategy     string `json:"strategy,omitempty"`      // auto (default), precopy, auto-converge, postcopy, multifd
	Compress     bool   `json:"compress,omitempty"`
	// Plaintext sends the guest's memory unencrypted and unauthenticated;
	// refused unless the cluster's security settings allow it.
	Plaintext bool `json:"plaintext,omitempty"`
	// Transport picks how an encrypted stream is carried: agent-tls (the
	// default) or qemu-tls; both admit only the migration's source.
	Transport string `json:"transport,omitempty"`
	// DryRun: predict every strategy and say which Ferry would pick and
	// why, without moving anything.
	DryRun bool `json:"dry_run,omitempty"`
	// HeldOut keeps this move out of the model's calibration (a benchmark
	// measuring the model on moves it did not learn from).
	HeldOut bool `json:"held_out,omitempty"`
}

// MigrationOptions are the validated options of a migration.
type MigrationOptions struct {
	MaxBandwidth  int64  `json:"max_bandwidth,omitempty"` // bytes/s, 0 unlimited
	MaxDowntimeMS int64  `json:"max_downtime_ms"`
	Strategy      string `json:"strategy"`
	// Compress: multifd with compressed pages (zstd where both QEMUs have
	// it, else zlib).
	Compress bool `json:"compress,omitempty"`
	// Plaintext: no TLS (allowed by an operator for this cluster).
	Plaintext bool `json:"plaintext,omitempty"`
	// Transport: TransportAgent, TransportQEMU or TransportPlain.
	Transport string `json:"transport,omitempty"`
	// Auto: Ferry chose Strategy (the request said auto).
	Auto bool `json:"auto,omitempty"`
	// HeldOut: not used to calibrate the model.
	HeldOut bool `json:"held_out,omitempty"`
	// Policy is the migration policy that applied; AllowedDowntimeMS and
	// Escalations are its: how far a migration that does not converge may
	// go.
	Policy            string   `json:"policy,omitempty"`
	AllowedDowntimeMS int64    `json:"allowed_downtime_ms,omitempty"`
	Escalations       []string `json:"escalations,omitempty"`
	TimeoutS          int64    `json:"timeout_s,omitempty"`
}

// MigrationPlan is what both QEMUs are told for one migration, made when the
// migration is recorded from what both hosts' QEMUs know (QEMUInfo): every
// capability named here is set explicitly (QEMU keeps them between
// migrations), and no capability or parameter a QEMU lacks is in it.
type MigrationPlan struct {
	Capabilities       map[string]bool `json:"capabilities"`                  // both sides
	SourceCapabilities map[string]bool `json:"source_capabilities,omitempty"` // source only
	Parameters         map[string]any  `json:"parameters,omitempty"`          // both sides
	SourceParameters   map[string]any  `json:"source_parameters,omitempty"`   // source only
	// Postcopy: switch to post-copy once the first pass is done.
	Postcopy bool `json:"postcopy,omitempty"`
	// PauseBeforeSwitchover: the source stops at pre-switchover and goes on
	// only if the migration was not cancelled meanwhile.
	PauseBeforeSwitchover bool `json:"pause_before_switchover,omitempty"`
	// PostcopyReady: post-copy is enabled on both sides without being
	// started, so that a migration that does not converge can switch to it
	// (EscalatePostcopy). ThrottleReady: auto-converge is armed at a 1 %
	// ceiling that the throttle escalation lifts.
	PostcopyReady bool `json:"postcopy_ready,omitempty"`
	ThrottleReady bool `json:"throttle_ready,omitempty"`
	// Machine and Boot the target starts the guest with (the guest's own).
	Machine string `json:"machine,omitempty"`
	Boot    string `json:"boot,omitempty"`
}

// MigrationProgress is the last progress the source reported.
type MigrationProgress struct {
	QEMUStatus       string  `json:"qemu_status,omitempty"`
	TotalBytes       int64   `json:"total_bytes"`
	TransferredBytes int64   `json:"transferred_bytes"`
	RemainingBytes   int64   `json:"remaining_bytes"`
	RateMbps         float64 `json:"rate_mbps"`
	DirtyPagesRate   int64   `json:"dirty_pages_rate"` // pages per second
	Round            int64   `json:"round"`
	ExpectedDowntime int64   `json:"expected_downtime_ms"`
	ETASeconds       float64 `json:"eta_s"`
	CPUThrottle      int64   `json:"cpu_throttle_pct,omitempty"`
}

// Migration is one live migration of a VM, stored while it runs and kept
// afterwards as the VM's last migration.
type Migration struct {
	ID          string            `json:"id"`
	VM          string            `json:"vm"`
	Source      string            `json:"source"`
	Target      string            `json:"target"`
	Phase       string            `json:"phase"`
	Options     MigrationOptions  `json:"options"`
	Plan        *MigrationPlan    `json:"plan,omitempty"`
	Cancel      bool              `json:"cancel,omitempty"`
	TargetURI   string            `json:"target_uri,omitempty"`
	TargetLease int64             `json:"target_lease,omitempty"`
	Progress    MigrationProgress `json:"progress"`
	TotalTimeMS int64             `json:"total_time_ms,omitempty"`
	DowntimeMS  int64             `json:"downtime_ms,omitempty"`
	Error       string            `json:"error,omitempty"`
	Started     time.Time         `json:"started"`
	Finished    time.Time         `json:"finished,omitempty"`
	// Reason says who asked: "operator" or "drain of HOST".
	Reason string `json:"reason,omitempty"`
	// Post-copy recovery: when the stream breaks after the switchover (the
	// guest runs on the target, pages still come from the source) both
	// QEMUs pause; the source asks for a new stream (RecoverSeq), the
	// target listens again and answers (RecoverReadySeq, RecoverURI), and
	// the source resumes over it. Recoveries counts the resumed streams.
	RecoverSeq      int    `json:"recover_seq,omitempty"`
	RecoverReadySeq int    `json:"recover_ready_seq,omitempty"`
	RecoverURI      string `json:"recover_uri,omitempty"`
	Recoveries      int    `json:"recoveries,omitempty"`
	// Timeline records when each step happened, for diagnosis.
	Timeline []MigrationEvent `json:"timeline,omitempty"`
	// Prediction is what Ferry predicted before it began (nil for
	// migrations before predictions); Escalations what it did when the
	// guest did not converge; BytesSent what crossed the link.
	Prediction  *MigrationPrediction  `json:"prediction,omitempty"`
	Escalations []MigrationEscalation `json:"escalations,omitempty"`
	BytesSent   int64                 `json:"bytes_sent,omitempty"`
	// AnsweringAt is when the guest first answered its health check on
	// the target (guests with one); ServicePauseMS is from its pause on
	// the source to then: the pause its clients saw, where QEMU's
	// downtime counts only the switchover's part.
	AnsweringAt    time.Time `json:"answering_at,omitempty"`
	ServicePauseMS int64     `json:"service_pause_ms,omitempty"`
}

// MigrationEvent is one step of a migration.
type MigrationEvent struct {
	Step string    `json:"step"`
	Host string    `json:"host"`
	At   time.Time `json:"at"`
}

// HAState is the cluster-wide high-availability switch.
type HAState struct {
	// Paused stops the HA manager from restarting guests of dead hosts (for
	// planned work on the network or storage); fencing stays on.
	Paused bool      `json:"paused"`
	Reason string    `json:"reason,omitempty"`
	Since  time.Time `json:"since,omitempty"`
}

// HAStateRequest is the body of PUT /v1/cluster/ha.
type HAStateRequest struct {
	Paused bool   `json:"paused"`
	Reason string `json:"reason,omitempty"`
}

// Security is the cluster's security settings.
type Security struct {
	// PlaintextMigration allows migrations that ask for it to send guest
	// memory unencrypted and unauthenticated. Off by default; every other
	// migration is TLS with source authorization regardless.
	PlaintextMigration bool      `json:"plaintext_migration"`
	Reason             string    `json:"reason,omitempty"`
	Since              time.Time `json:"since,omitempty"`
	// Warning is set by the server while plaintext migration is allowed.
	Warning string `json:"warning,omitempty"`
}

// PlaintextWarning is what the API says wherever plaintext migration is on.
const PlaintextWarning = "PLAINTEXT MIGRATION IS ALLOWED in this cluster: a migration that asks for it sends the guest's whole memory unencrypted, and its target accepts a stream from anyone who reaches the port"

// SecurityRequest is the body of PUT /v1/cluster/security.
type SecurityRequest struct {
	PlaintextMigration bool   `json:"plaintext_migration"`
	Reason             string `json:"reason,omitempty"`
}

// UserCreateRequest is the body of POST /v1/users: a person's or tool's
// name, its role, and a certificate request for a key it made itself.
type UserCreateRequest struct {
	Name string `json:"name"`
	Role string `json:"role"` // admin, operator or viewer
	CSR  string `json:"csr"`  // PEM CERTIFICATE REQUEST
}

// User is an API client the cluster issued a certificate to.
type User struct {
	Name    string    `json:"name"`
	Role    string    `json:"role"`
	Serial  string    `json:"serial"`
	Created time.Time `json:"created"`
	Expires time.Time `json:"expires"`
	// Certificate and CA (PEM) come only in the answer to the creation.
	Certificate string `json:"certificate,omitempty"`
	CA          string `json:"ca,omitempty"`
}

// TokenCreateRequest is the body of POST /v1/cluster/tokens.
type TokenCreateRequest struct {
	TTL string `json:"ttl,omitempty"` // e.g. 1h; default 1h, at most 24h
	// Server makes a token for another etcd server: it joins like any
	// host and is also given the cluster's CA keys, so that it can sign
	// (joins, users, renewals) when the other servers are down.
	Server bool `json:"server,omitempty"`
}

// JoinToken is a one-time token for one host to join (shown once).
type JoinToken struct {
	Token   string    `json:"token"`
	Expires time.Time `json:"expires"`
	Server  bool      `json:"server,omitempty"`
}

// JoinRequest is the body of POST /v1/join: a host with a token asks for
// its certificates, for keys it made itself.
type JoinRequest struct {
	Token        string   `json:"token"`
	Node         string   `json:"node"`
	Addresses    []string `json:"addresses"`     // the host's IP addresses (its certificates name them)
	CSR          string   `json:"csr"`           // for the cluster certificate (API, etcd)
	MigrationCSR string   `json:"migration_csr"` // for the migration certificate
	// Server: the host becomes an etcd server and asks for the CA keys
	// (only a server token gives them).
	Server bool `json:"server,omitempty"`
}

// CAKeys are the cluster's CA private keys (PEM), given only to a host that
// joins as an etcd server with a server token.
type CAKeys struct {
	Cluster   string `json:"cluster"`
	Migration string `json:"migration"`
	Users     string `json:"users"`
}

// JoinResponse carries a joining host's certificates and the CAs (PEM).
type JoinResponse struct {
	Certificate          string `json:"certificate"`
	CA                   string `json:"ca"`
	MigrationCertificate string `json:"migration_certificate"`
	MigrationCA          string `json:"migration_ca"`
	// UserCA is the CA of users' certificates, which the host's API admits
	// (etcd does not).
	UserCA  string      `json:"user_ca"`
	Cluster ClusterInfo `json:"cluster"`
	// CAKeys come only to an etcd server joining with a server token.
	CAKeys *CAKeys `json:"ca_keys,omitempty"`
}

// RenewRequest is the body of POST /v1/renew: a host asks for new
// certificates for new keys before its current ones expire (the answer is
// a JoinResponse; the old certificates are revoked).
type RenewRequest struct {
	CSR          string `json:"csr"`
	MigrationCSR string `json:"migration_csr"`
}

// Revocation records a certificate the cluster no longer accepts.
type Revocation struct {
	Serial string    `json:"serial"`
	Holder string    `json:"holder"` // "node h3", "user alice"
	Time   time.Time `json:"time"`
	// Reason: RevokedRemoved or RevokedRenewed.
	Reason string `json:"reason"`
}

// Revocation reasons.
const (
	// RevokedRemoved: the holder left the cluster and is trusted no more.
	RevokedRemoved = "removed"
	// RevokedRenewed: the holder has a newer certificate and is still trusted.
	RevokedRenewed = "renewed"
)

// Event is something the cluster did or saw, for operators.
type Event struct {
	Time    time.Time `json:"time"`
	Kind    string    `json:"kind"` // e.g. host-lost, ha-restart, ha-waiting, self-fenced, drain
	Node    string    `json:"node,omitempty"`
	VM      string    `json:"vm,omitempty"`
	Message string    `json:"message"`
}

// History is the recent past of the cluster's figures, as one API server
// sampled them (GET /v1/history): every StepMS, each host's load and
// traffic by class, each link's round trip and loss.
type History struct {
	StepMS int64 `json:"step_ms"`
	// Times are the samples' times (Unix milliseconds), oldest first;
	// each series has one value per time.
	Times  []int64         `json:"times"`
	Series []HistorySeries `json:"series"`
	// Dropped counts series not kept because the history holds as many
	// as it may (HistoryMaxSeries).
	Dropped int `json:"dropped,omitempty"`
}

// HistorySeries is one figure of one subject over History.Times; a value
// is null where the subject reported nothing at that time.
type HistorySeries struct {
	// Metric is load1, sent_control, sent_guest, sent_migration,
	// received_control, received_guest, received_migration (bytes per
	// second), link_rtt_ms or link_loss_pct.
	Metric string `json:"metric"`
	// Subject is a host's name, or "FROM/TO" for a link.
	Subject string     `json:"subject"`
	Values  []*float64 `json:"values"`
}
