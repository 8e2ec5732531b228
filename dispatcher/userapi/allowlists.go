package userapi

import (
	"net/http"
	"strconv"

	"github.com/cordon-dev/cordon/internal/allowlist"
)

// AllowRule is one allowed destination of a job.
type AllowRule struct {
	Host   string   `json:"host,omitempty"`
	CIDR   string   `json:"cidr,omitempty"`
	Ports  []uint16 `json:"ports"`
	Source string   `json:"source"`
}

// JobAllowlist is the policy in force for one job.
type JobAllowlist struct {
	Job   string      `json:"job"`
	Class string      `json:"class"`
	Mode  string      `json:"mode"`
	Rules []AllowRule `json:"rules"`
}

// Allowlists is the current allowlist of every job of an org.
type Allowlists struct {
	Jobs []JobAllowlist `json:"jobs"`
}

// AllowlistsOf returns org's current policies (optionally only job's), in
// job order. Policies of other orgs are never returned.
func (a *API) AllowlistsOf(org, job string) Allowlists {
	out := Allowlists{Jobs: []JobAllowlist{}}
	if a.allowlists == nil || org == "" {
		return out
	}
	for _, p := range a.allowlists().Policies() {
		if p.Org != org || (job != "" && p.Job != job) {
			continue
		}
		out.Jobs = append(out.Jobs, jobAllowlist(p))
	}
	return out
}

func jobAllowlist(p *allowlist.JobPolicy) JobAllowlist {
	j := JobAllowlist{Job: p.Job, Class: string(p.Class), Mode: string(p.Mode), Rules: []AllowRule{}}
	for _, r := range p.Rules {
		ar := AllowRule{Host: r.Host, Ports: r.Ports, Source: r.Source}
		if ar.Ports == nil {
			ar.Ports = []uint16{}
		}
		if r.CIDR.IsValid() {
			ar.CIDR = r.CIDR.String()
		}
		j.Rules = append(j.Rules, ar)
	}
	return j
}

func (a *API) serveAllowlists(w http.ResponseWriter, r *http.Request) {
	org, err := OrgOf(r.Context())
	if err != nil {
		a.fail(w, r, err)
		return
	}
	q, err := parseQuery(r, "job", "format")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	csv, err := q.wantCSV(r)
	if err != nil {
		a.fail(w, r, err)
		return
	}
	job, err := q.slug("job")
	if err != nil {
		a.fail(w, r, err)
		return
	}
	al := a.AllowlistsOf(org, job)
	if !csv {
		writeJSON(w, http.StatusOK, al)
		return
	}
	out := newCSV(w, "allowlists.csv", "job", "class", "mode", "host", "cidr", "ports", "source")
	for _, j := range al.Jobs {
		for _, rule := range j.Rules {
			ports := ""
			for i, p := range rule.Ports {
				if i > 0 {
					ports += " "
				}
				ports += strconv.Itoa(int(p))
			}
			out.row(j.Job, j.Class, j.Mode, rule.Host, rule.CIDR, ports, rule.Source)
		}
	}
	out.close()
}
