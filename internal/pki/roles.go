package pki

import (
	"crypto/x509"
	"fmt"
)

// Role names carried in client certificates (their Organization).
const (
	RoleAdmin    = "admin"
	RoleOperator = "operator"
	RoleViewer   = "viewer"
	// RoleMetrics may read /metrics and nothing else: for a Prometheus
	// server's scrape credential.
	RoleMetrics = "metrics"
	// RoleNode is a host of the cluster: for the API it is a viewer.
	RoleNode = "ferry-node"
)

// Role is what an API client may do; each role may do all a lesser one may.
type Role int

// Roles, least first.
const (
	NoRole Role = iota
	Metrics
	Viewer
	Operator
	Admin
)

func (r Role) String() string {
	switch r {
	case Metrics:
		return RoleMetrics
	case Viewer:
		return RoleViewer
	case Operator:
		return RoleOperator
	case Admin:
		return RoleAdmin
	}
	return "none"
}

// AtLeast reports whether r may do what need may.
func (r Role) AtLeast(need Role) bool { return r >= need }

// ParseRole turns a role name given by a person into a Role.
func ParseRole(s string) (Role, error) {
	switch s {
	case RoleAdmin:
		return Admin, nil
	case RoleOperator:
		return Operator, nil
	case RoleViewer:
		return Viewer, nil
	case RoleMetrics:
		return Metrics, nil
	}
	return NoRole, fmt.Errorf("role must be admin, operator, viewer or metrics, not %q", s)
}

// RoleOf is the API role of a verified client certificate: for one from
// the user CA (fromUserCA) the highest role its Organization names; for one
// from the cluster CA, viewer if it is a host's, else none (the cluster CA
// certifies hosts only).
func RoleOf(c *x509.Certificate, fromUserCA bool) (Role, bool) {
	best := NoRole
	for _, o := range c.Subject.Organization {
		if !fromUserCA {
			if o == RoleNode {
				best = Viewer
			}
			continue
		}
		if r, err := ParseRole(o); err == nil && r > best {
			best = r
		}
	}
	return best, best != NoRole
}
