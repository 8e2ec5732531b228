package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"maps"
	"slices"
	"strconv"
	"strings"

	"github.com/cordon-dev/cordon/internal/allowlist"
)

// Plan is the review plan of an allowlist change: what every job may reach
// after it that it could not before, and the reverse. It is what `diff
// --json` prints.
type Plan struct {
	Jobs    []JobChange `json:"jobs"`
	Summary Summary     `json:"summary"`
}

// Summary counts the jobs by kind of change.
type Summary struct {
	Added   int `json:"added"`
	Removed int `json:"removed"`
	Changed int `json:"changed"`
}

// JobChange is one job's change. Unchanged jobs are not listed.
type JobChange struct {
	Job    string      `json:"job"`    // ORG/JOB
	Change string      `json:"change"` // added, removed or changed
	Class  *Transition `json:"class,omitempty"`
	Mode   *Transition `json:"mode,omitempty"`
	// Gained and Lost are host:port (or cidr:port) destinations, sorted.
	Gained []Destination `json:"gained,omitempty"`
	Lost   []Destination `json:"lost,omitempty"`
	// Attention lists what a reviewer must look at twice: a weaker mode, a
	// raised class, new wildcards and CIDRs.
	Attention []string `json:"attention,omitempty"`
}

// Transition is a field's value before and after ("" when the job did not
// exist).
type Transition struct {
	Old string `json:"old"`
	New string `json:"new"`
}

// Destination is one host:port (or cidr:port) and the rules that allow it.
type Destination struct {
	Destination string `json:"destination"`
	Source      string `json:"source"`
}

func diff(args []string, stdout io.Writer) (int, error) {
	fs := newFlags("diff")
	asJSON := fs.Bool("json", false, "print the plan as JSON")
	dirs, err := parseInterspersed(fs, args)
	if err != nil {
		return ExitUsage, err
	}
	if len(dirs) != 2 {
		return ExitUsage, usagef("diff takes OLD_DIR and NEW_DIR")
	}
	var sets [2]*allowlist.Set
	for i, dir := range dirs {
		if sets[i], err = allowlist.LoadDir(dir); err != nil {
			return ExitFail, fmt.Errorf("%s does not load:\n%w", dir, err)
		}
	}
	plan := MakePlan(sets[0].Policies(), sets[1].Policies())
	if *asJSON {
		enc := json.NewEncoder(stdout)
		enc.SetIndent("", "  ")
		enc.SetEscapeHTML(false)
		return ExitOK, enc.Encode(plan)
	}
	_, err = io.WriteString(stdout, plan.Text())
	return ExitOK, err
}

// MakePlan compares two sets of policies.
func MakePlan(old, new []*allowlist.JobPolicy) Plan {
	byID := func(ps []*allowlist.JobPolicy) map[string]*allowlist.JobPolicy {
		m := make(map[string]*allowlist.JobPolicy, len(ps))
		for _, p := range ps {
			m[p.ID()] = p
		}
		return m
	}
	o, n := byID(old), byID(new)
	ids := slices.Sorted(maps.Keys(o))
	for id := range n {
		if _, ok := o[id]; !ok {
			ids = append(ids, id)
		}
	}
	slices.Sort(ids)
	plan := Plan{Jobs: []JobChange{}}
	for _, id := range ids {
		c, changed := compare(id, o[id], n[id])
		if !changed {
			continue
		}
		switch c.Change {
		case "added":
			plan.Summary.Added++
		case "removed":
			plan.Summary.Removed++
		default:
			plan.Summary.Changed++
		}
		plan.Jobs = append(plan.Jobs, c)
	}
	return plan
}

func compare(id string, o, n *allowlist.JobPolicy) (JobChange, bool) {
	c := JobChange{Job: id, Change: "changed"}
	var oldClass, newClass, oldMode, newMode string
	if o != nil {
		oldClass, oldMode = string(o.Class), string(modeOf(o))
	} else {
		c.Change = "added"
	}
	if n != nil {
		newClass, newMode = string(n.Class), string(modeOf(n))
	} else {
		c.Change = "removed"
	}
	if oldClass != newClass {
		c.Class = &Transition{oldClass, newClass}
	}
	if oldMode != newMode {
		c.Mode = &Transition{oldMode, newMode}
	}
	od, nd := destinations(o), destinations(n)
	for _, d := range slices.Sorted(maps.Keys(nd)) {
		if _, ok := od[d]; !ok {
			c.Gained = append(c.Gained, Destination{d, nd[d]})
		}
	}
	for _, d := range slices.Sorted(maps.Keys(od)) {
		if _, ok := nd[d]; !ok {
			c.Lost = append(c.Lost, Destination{d, od[d]})
		}
	}
	if newMode == string(allowlist.ModeReport) && oldMode != newMode {
		c.Attention = append(c.Attention, "mode report: every destination is allowed, denials are only logged")
	}
	if newClass == string(allowlist.ClassPlatform) && oldClass != newClass && c.Change != "added" {
		c.Attention = append(c.Attention, "class raised to platform: the job may use platform_only endpoint sets")
	}
	for _, g := range c.Gained {
		switch {
		case strings.HasPrefix(g.Destination, "*."):
			c.Attention = append(c.Attention, "wildcard "+g.Destination+": any subdomain, at any depth")
		case strings.Contains(g.Destination, "/"):
			c.Attention = append(c.Attention, "cidr "+g.Destination+": addresses, private ones included")
		}
	}
	changed := c.Change != "changed" || c.Class != nil || c.Mode != nil || len(c.Gained) > 0 || len(c.Lost) > 0
	return c, changed
}

func modeOf(p *allowlist.JobPolicy) allowlist.Mode {
	if p.Mode == "" {
		return allowlist.ModeEnforce
	}
	return p.Mode
}

// destinations maps every host:port (cidr:port) a policy allows to the
// sources that allow it.
func destinations(p *allowlist.JobPolicy) map[string]string {
	out := map[string]string{}
	if p == nil {
		return out
	}
	for _, r := range p.Rules {
		for _, port := range r.Ports {
			var d string
			switch {
			case r.Host != "":
				d = r.Host + ":" + strconv.Itoa(int(port))
			case r.CIDR.Addr().Is6():
				d = "[" + r.CIDR.String() + "]:" + strconv.Itoa(int(port))
			default:
				d = r.CIDR.String() + ":" + strconv.Itoa(int(port))
			}
			if prev, ok := out[d]; ok && !strings.Contains(prev, r.Source) {
				out[d] = prev + ", " + r.Source
			} else if !ok {
				out[d] = r.Source
			}
		}
	}
	return out
}

// Text renders the plan for a pull request comment: "+" what a job gains,
// "-" what it loses, "!" what needs a second look.
func (p Plan) Text() string {
	if len(p.Jobs) == 0 {
		return "no policy changes\n"
	}
	var b strings.Builder
	width := 0
	for _, j := range p.Jobs {
		for _, d := range append(slices.Clone(j.Gained), j.Lost...) {
			width = max(width, len(d.Destination))
		}
	}
	for _, j := range p.Jobs {
		switch j.Change {
		case "added":
			fmt.Fprintf(&b, "+ %s (new job: class %s, mode %s)\n", j.Job, j.Class.New, j.Mode.New)
		case "removed":
			fmt.Fprintf(&b, "- %s (job removed)\n", j.Job)
		default:
			fmt.Fprintf(&b, "~ %s\n", j.Job)
			if j.Class != nil {
				fmt.Fprintf(&b, "    class: %s -> %s\n", j.Class.Old, j.Class.New)
			}
			if j.Mode != nil {
				fmt.Fprintf(&b, "    mode: %s -> %s\n", j.Mode.Old, j.Mode.New)
			}
		}
		for _, d := range j.Gained {
			fmt.Fprintf(&b, "    + %-*s  %s\n", width, d.Destination, d.Source)
		}
		for _, d := range j.Lost {
			fmt.Fprintf(&b, "    - %-*s  %s\n", width, d.Destination, d.Source)
		}
		for _, a := range j.Attention {
			fmt.Fprintf(&b, "    ! %s\n", a)
		}
	}
	fmt.Fprintf(&b, "\n%d job(s) changed, %d added, %d removed\n", p.Summary.Changed, p.Summary.Added, p.Summary.Removed)
	return b.String()
}
