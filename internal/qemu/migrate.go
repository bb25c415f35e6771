package qemu

import (
	"context"
	"errors"
)

// MigrationInfo is the part of query-migrate Ferry uses.
type MigrationInfo struct {
	Status           string `json:"status"`
	TotalTime        int64  `json:"total-time"`        // ms
	Downtime         int64  `json:"downtime"`          // ms, once completed
	ExpectedDowntime int64  `json:"expected-downtime"` // ms, while active
	SetupTime        int64  `json:"setup-time"`
	ErrorDesc        string `json:"error-desc"`
	RAM              *struct {
		Transferred    int64   `json:"transferred"`
		Remaining      int64   `json:"remaining"`
		Total          int64   `json:"total"`
		Mbps           float64 `json:"mbps"`
		DirtyPagesRate int64   `json:"dirty-pages-rate"`
		DirtySyncCount int64   `json:"dirty-sync-count"`
		PageSize       int64   `json:"page-size"`
		Postcopy       int64   `json:"postcopy-requests"`
	} `json:"ram"`
	CPUThrottle int64 `json:"cpu-throttle-percentage"`
}

// SetMigrationCapabilities turns migration capabilities on or off.
func (c QMP) SetMigrationCapabilities(ctx context.Context, caps map[string]bool) error {
	var list []map[string]any
	for k, v := range caps {
		list = append(list, map[string]any{"capability": k, "state": v})
	}
	return c.Execute(ctx, "migrate-set-capabilities", map[string]any{"capabilities": list}, nil)
}

// SetMigrationParameters sets migration parameters (QMP names, e.g.
// "max-bandwidth", "downtime-limit", "multifd-channels").
func (c QMP) SetMigrationParameters(ctx context.Context, params map[string]any) error {
	if len(params) == 0 {
		return nil
	}
	return c.Execute(ctx, "migrate-set-parameters", params, nil)
}

// Migrate starts an outgoing migration to uri (e.g. tcp:198.18.0.12:49152).
func (c QMP) Migrate(ctx context.Context, uri string) error {
	return c.Execute(ctx, "migrate", map[string]any{"uri": uri}, nil)
}

// MigrateIncoming starts listening for an incoming migration (QEMU started
// with -incoming defer).
func (c QMP) MigrateIncoming(ctx context.Context, uri string) error {
	return c.Execute(ctx, "migrate-incoming", map[string]any{"uri": uri}, nil)
}

// MigrateResume resumes a paused post-copy migration over a new stream to
// uri (the target must be listening again: MigrateRecover).
func (c QMP) MigrateResume(ctx context.Context, uri string) error {
	return c.Execute(ctx, "migrate", map[string]any{"uri": uri, "resume": true}, nil)
}

// MigrateRecover makes a target whose post-copy migration paused listen for
// the source's new stream on uri.
func (c QMP) MigrateRecover(ctx context.Context, uri string) error {
	return c.Execute(ctx, "migrate-recover", map[string]any{"uri": uri}, nil)
}

// MigratePause breaks a post-copy migration's stream on purpose (both sides
// enter postcopy-paused and can be recovered); used when the stream stalls
// without an error, as on a link that silently drops packets.
func (c QMP) MigratePause(ctx context.Context) error {
	return c.Execute(ctx, "migrate-pause", nil, nil)
}

// MigrateContinue lets a migration that stopped at pre-switchover (the
// pause-before-switchover capability) send the device state.
func (c QMP) MigrateContinue(ctx context.Context) error {
	return c.Execute(ctx, "migrate-continue", map[string]any{"state": "pre-switchover"}, nil)
}

// MigrateCancel cancels an outgoing migration.
func (c QMP) MigrateCancel(ctx context.Context) error {
	return c.Execute(ctx, "migrate_cancel", nil, nil)
}

// MigrateStartPostcopy switches a running migration to post-copy.
func (c QMP) MigrateStartPostcopy(ctx context.Context) error {
	return c.Execute(ctx, "migrate-start-postcopy", nil, nil)
}

// QueryMigrate returns the state of the current or last migration.
func (c QMP) QueryMigrate(ctx context.Context) (MigrationInfo, error) {
	var m MigrationInfo
	err := c.Execute(ctx, "query-migrate", nil, &m)
	return m, err
}

// AnnounceSelf makes the guest's NICs send gratuitous announcements (RARP)
// so switches learn where the guest's MAC now lives.
func (c QMP) AnnounceSelf(ctx context.Context, rounds int) error {
	if rounds <= 0 {
		rounds = 5
	}
	return c.Execute(ctx, "announce-self", map[string]any{"initial": 50, "max": 550, "rounds": rounds, "step": 100}, nil)
}

// Cont resumes the CPUs.
func (c QMP) Cont(ctx context.Context) error { return c.Execute(ctx, "cont", nil, nil) }

// Postcopy statuses in which the guest already runs on the target while
// pages still arrive. A paused one waits for a new stream (recovery); it is
// not a hang and not a failure.
const (
	StatusPostcopyActive       = "postcopy-active"
	StatusPostcopyPaused       = "postcopy-paused"
	StatusPostcopyRecoverSetup = "postcopy-recover-setup"
	StatusPostcopyRecover      = "postcopy-recover"
)

// InPostcopy reports whether a status belongs to the post-copy phase.
func InPostcopy(status string) bool {
	switch status {
	case StatusPostcopyActive, StatusPostcopyPaused, StatusPostcopyRecoverSetup, StatusPostcopyRecover:
		return true
	}
	return false
}

// Terminal reports whether a migration status is final.
func Terminal(status string) bool {
	switch status {
	case "completed", "failed", "cancelled":
		return true
	}
	return false
}

// Object ids of the TLS pieces a migrating QEMU holds.
const (
	migTLSCreds = "ferry-mig-tls"
	migTLSAuthz = "ferry-mig-authz"
)

// MigrationTLS makes a QEMU's migration stream TLS with peer verification.
// Dir holds the QEMU layout (ca-cert.pem, server-*.pem, client-*.pem).
type MigrationTLS struct {
	Dir string
	// Hostname (source): the name the target's certificate must carry.
	Hostname string
	// AllowDN (target): the only client distinguished name admitted; every
	// other certificate, even one from the same CA, is refused.
	AllowDN string
}

// SetupIncomingTLS makes the target QEMU accept only a TLS stream whose
// client certificate is valid for the CA in t.Dir and whose DN is t.AllowDN.
// Call it before MigrateIncoming.
func (c QMP) SetupIncomingTLS(ctx context.Context, t MigrationTLS) error {
	if t.AllowDN == "" {
		return errors.New("qemu: an incoming TLS migration needs the source's DN")
	}
	if err := c.Execute(ctx, "object-add", map[string]any{"qom-type": "tls-creds-x509", "id": migTLSCreds,
		"dir": t.Dir, "endpoint": "server", "verify-peer": true}, nil); err != nil {
		return err
	}
	if err := c.Execute(ctx, "object-add", map[string]any{"qom-type": "authz-list", "id": migTLSAuthz,
		"policy": "deny", "rules": []map[string]any{{"match": t.AllowDN, "policy": "allow", "format": "exact"}}}, nil); err != nil {
		return err
	}
	return c.SetMigrationParameters(ctx, map[string]any{"tls-creds": migTLSCreds, "tls-authz": migTLSAuthz})
}

// SetupOutgoingTLS makes the source QEMU send over TLS, presenting its
// certificate and accepting only a target certificate for t.Hostname.
// Call it before Migrate.
func (c QMP) SetupOutgoingTLS(ctx context.Context, t MigrationTLS) error {
	if t.Hostname == "" {
		return errors.New("qemu: an outgoing TLS migration needs the target's name")
	}
	// A guest migrated before keeps its objects: replace them.
	c.Execute(ctx, "object-del", map[string]any{"id": migTLSCreds}, nil)
	if err := c.Execute(ctx, "object-add", map[string]any{"qom-type": "tls-creds-x509", "id": migTLSCreds,
		"dir": t.Dir, "endpoint": "client", "verify-peer": true}, nil); err != nil {
		return err
	}
	return c.SetMigrationParameters(ctx, map[string]any{"tls-creds": migTLSCreds, "tls-hostname": t.Hostname})
}
