package allowlist

import (
	"fmt"
	"net/netip"
)

// Class is a job's trust class. User-class jobs may not use endpoint sets
// marked platform_only (seeds/000: "User jobs ... no raw RPC access").
type Class string

const (
	ClassPlatform Class = "platform"
	ClassUser     Class = "user"
)

// Mode says whether a job's policy is enforced or only reported.
type Mode string

const (
	// ModeEnforce denies what the policy does not allow. It is the default.
	ModeEnforce Mode = "enforce"
	// ModeReport allows everything but records each would-be denial.
	ModeReport Mode = "report"
)

// Pos is a position in an allowlist file. Line and Col are 1-based.
type Pos struct {
	File string
	Line int
	Col  int
}

func (p Pos) String() string { return fmt.Sprintf("%s:%d:%d", p.File, p.Line, p.Col) }

// File is one parsed, validated allowlist file: the policy of one org.
type File struct {
	Path         string
	Version      int
	Org          string
	EndpointSets map[string]*EndpointSet
	Webhooks     []Webhook
	Jobs         map[string]*Job
}

// EndpointSet is a named group of destinations that jobs opt into.
type EndpointSet struct {
	Name         string
	PlatformOnly bool
	Entries      []Entry
	Pos          Pos
}

// Entry is one allowed destination: either a host pattern or a CIDR, with
// the ports it may be reached on. Exactly one of Host and CIDR is set.
type Entry struct {
	// Host is lowercase punycode without a trailing dot. A leading "*."
	// matches any depth of subdomain and never the apex.
	Host string
	// CIDR is a masked prefix. The zero Prefix means the entry is a host.
	CIDR  netip.Prefix
	Ports []uint16
	Pos   Pos
}

// IsWildcard reports whether the entry is a "*." host pattern.
func (e Entry) IsWildcard() bool { return len(e.Host) > 2 && e.Host[:2] == "*." }

// Webhook is a pre-approved webhook URL (seeds/000, "Network Isolation").
type Webhook struct {
	URL  string // as written, validated https URL
	Host string // normalised host
	Port uint16 // explicit port, or 443
	Path string // path prefix the URL allows
	Pos  Pos
}

// Job is one job's declaration in its org's file.
type Job struct {
	Name     string
	Class    Class
	Mode     Mode
	Allow    []string // endpoint set names, in file order
	Webhooks bool     // may reach the file's webhooks
	Pos      Pos
}

// JobPolicy is the resolved, self-contained policy of one job: what both
// proxy modes enforce and what the control plane serves over xDS. It holds
// no references back into the File, so it can be built from xDS resources.
type JobPolicy struct {
	Org   string
	Job   string
	Class Class
	Mode  Mode
	// Rules are every allowed destination of the job: its endpoint sets'
	// entries and, when the job may use webhooks, the webhooks' host:port.
	Rules []Rule
}

// Rule is one allowed destination of a resolved JobPolicy.
type Rule struct {
	Host  string       // as Entry.Host; empty for a CIDR rule
	CIDR  netip.Prefix // valid for a CIDR rule
	Ports []uint16
	// Source names where the rule came from, for logs and review diffs:
	// "endpoint_set:<name>" or "webhook:<url>".
	Source string
}

// ID is the job's policy name, "<org>/<job>".
func (p *JobPolicy) ID() string { return p.Org + "/" + p.Job }
