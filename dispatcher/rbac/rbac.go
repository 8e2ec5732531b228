// Package rbac is the dispatcher's permission matrix: which of Cordon's
// roles (seeds/000: reader, writer, admin) may do which action to which
// kind of resource. Allow is a pure function of (role, action, resource);
// it never looks at the request, the database or the clock.
//
// It is not authentication (dispatcher/oidc establishes who the caller is)
// and not org isolation: every decision here is about resources inside the
// caller's own org, and Postgres row-level security confines queries to
// that org. The HTTP middleware that applies Allow and audits denials is
// dispatcher/authn.
//
// # The matrix
//
// seeds/002 ("Permission Matrix") has three tenant roles; Cordon's roles
// map onto them as reader = JOB_VIEWER, writer = JOB_OWNER,
// admin = TENANT_ADMIN. Cordon has no per-user job ownership: jobs are
// declared per org in the security team's allowlist files (IaC), and the
// users and runs tables carry no owner. So the seed's "Own" scope becomes
// "every job of the caller's org": a writer owns, collectively with the
// org's other writers, all of the org's jobs. Cordon creates, updates and
// triggers jobs through IaC and the platform, not through this API, so the
// seed's Job Create/Update/Delete/Trigger rows have no action here; the
// allowlists are changed only by reviewed pull requests (seeds/000,
// "Egress allowlist workflow"), so nobody may change them through the API.
// An org's settings (quota, cost budget, alert webhook, anomaly policy)
// are the tenant administrator's (seeds/002 gives tenant configuration to
// TENANT_ADMIN); the dispatcher caps the quota an admin may set at the
// platform's ceiling, so a tenant can tighten its limits, never lift them
// past what the platform allows.
// Audit events are readable by admins only (seeds/002 gives "Audit log
// access" to the administrator roles and not to job owners or viewers).
//
//	resource        action  reader  writer  admin
//	runs            view    org     org     org
//	runs            cancel  -       org     org     (cancel or terminate a run)
//	logs            view    org     org     org
//	usage           view    org     org     org
//	egress_denials  view    org     org     org
//	allowlists      view    org     org     org
//	allowlists      manage  -       -       -       (IaC only)
//	audit_events    view    -       -       org
//	users           view    -       -       org
//	users           manage  -       -       org
//	settings        manage  -       -       org     (quota, budget, webhook, anomaly policy)
//
// "org" means allowed for the caller's own org; "-" means denied. Any
// role, action or resource not in the table is denied.
package rbac

import "fmt"

// Role is a platform role from the custom:role claim.
type Role string

// Roles (seeds/000, "JWT Claims").
const (
	Reader Role = "reader"
	Writer Role = "writer"
	Admin  Role = "admin"
)

// Roles lists every valid role, least privileged first.
var Roles = []Role{Reader, Writer, Admin}

// ParseRole returns the role named s exactly (case-sensitive, no
// surrounding space), or an error for anything else.
func ParseRole(s string) (Role, error) {
	switch r := Role(s); r {
	case Reader, Writer, Admin:
		return r, nil
	}
	return "", fmt.Errorf("parse role: %q is not a role; want reader, writer or admin", truncate(s))
}

// Action is what the caller wants to do.
type Action string

// Actions.
const (
	View   Action = "view"
	Cancel Action = "cancel" // cancel or terminate a run
	Manage Action = "manage" // create, change or remove
)

// Actions lists every action.
var Actions = []Action{View, Cancel, Manage}

// Resource is the kind of thing the action is done to.
type Resource string

// Resources.
const (
	Runs          Resource = "runs" // executions of jobs
	Logs          Resource = "logs"
	AuditEvents   Resource = "audit_events"
	Usage         Resource = "usage"
	EgressDenials Resource = "egress_denials"
	Allowlists    Resource = "allowlists"
	Users         Resource = "users"
	// Settings are an org's quota, cost budget, alert webhook and anomaly
	// policy.
	Settings Resource = "settings"
)

// Resources lists every resource.
var Resources = []Resource{Runs, Logs, AuditEvents, Usage, EgressDenials, Allowlists, Users, Settings}

// Scope says how far an allowed action reaches.
type Scope string

// Scopes. Cordon has only the org scope (see the package doc for how the
// seed's "Own" maps onto it); ScopeNone goes with a denial.
const (
	ScopeNone Scope = ""
	ScopeOrg  Scope = "org"
)

// Decision is Allow's answer.
type Decision struct {
	// Allowed is true when the action is permitted. The zero Decision denies.
	Allowed bool
	// Scope is how far the permission reaches; ScopeNone when denied.
	Scope Scope
	// Reason says why, in words fit for an audit event and a log line (it
	// names only the role, action and resource, never the caller).
	Reason string
}

type rule struct {
	action   Action
	resource Resource
}

// matrix is the table in the package doc: for each (action, resource), the
// roles allowed at org scope. A pair that is absent is denied to everyone.
var matrix = map[rule]map[Role]bool{
	{View, Runs}:          {Reader: true, Writer: true, Admin: true},
	{Cancel, Runs}:        {Writer: true, Admin: true},
	{View, Logs}:          {Reader: true, Writer: true, Admin: true},
	{View, Usage}:         {Reader: true, Writer: true, Admin: true},
	{View, EgressDenials}: {Reader: true, Writer: true, Admin: true},
	{View, Allowlists}:    {Reader: true, Writer: true, Admin: true},
	{Manage, Allowlists}:  {},
	{View, AuditEvents}:   {Admin: true},
	{View, Users}:         {Admin: true},
	{Manage, Users}:       {Admin: true},
	{Manage, Settings}:    {Admin: true},
}

// Allow decides whether role may do action to resource in the caller's own
// org. It is pure and safe for concurrent use.
func Allow(role Role, action Action, resource Resource) Decision {
	if _, err := ParseRole(string(role)); err != nil {
		return Decision{Reason: fmt.Sprintf("unknown role %q", truncate(string(role)))}
	}
	roles, ok := matrix[rule{action, resource}]
	if !ok {
		return Decision{Reason: fmt.Sprintf("no role may %s %s", truncate(string(action)), truncate(string(resource)))}
	}
	if action == Manage && resource == Allowlists {
		return Decision{Reason: "allowlists change only through reviewed IaC pull requests, never through the API"}
	}
	if !roles[role] {
		return Decision{Reason: fmt.Sprintf("role %s may not %s %s", role, action, resource)}
	}
	return Decision{Allowed: true, Scope: ScopeOrg, Reason: fmt.Sprintf("role %s may %s %s in its org", role, action, resource)}
}

func truncate(s string) string {
	const max = 32
	if len(s) > max {
		return s[:max] + "..."
	}
	return s
}
