package allowlist

import (
	"fmt"
	"strings"

	"golang.org/x/net/publicsuffix"
)

// Warnings are findings that leave f valid but that a reviewer must see
// before approving it (cordon-xds lint prints them and still exits 0):
//
//   - a wildcard over a suffix of the Public Suffix List's private section
//     ("*.s3.us-east-1.amazonaws.com"): any customer of that service, an
//     attacker included, can own a name under it, so the entry is a route to
//     every tenant's endpoint, not only the org's own;
//   - a job in report mode, which allows every destination;
//   - an endpoint set no job allows.
//
// The list is sorted like an ErrorList. A nil or empty File has none.
func (f *File) Warnings() ErrorList {
	if f == nil {
		return nil
	}
	var out ErrorList
	used := map[string]bool{}
	for _, j := range f.Jobs {
		for _, name := range j.Allow {
			used[name] = true
		}
		if j.Mode == ModeReport {
			out = append(out, &Error{Pos: j.Pos, Msg: fmt.Sprintf("warning: job %s is in report mode: it allows every destination and only records would-deny; switch to enforce once the denials are understood", j.Name)})
		}
	}
	for name, set := range f.EndpointSets {
		if !used[name] {
			out = append(out, &Error{Pos: set.Pos, Msg: fmt.Sprintf("warning: endpoint set %s is not allowed by any job: remove it or allow it", name)})
		}
		for _, e := range set.Entries {
			if suffix, ok := privateSuffixWildcard(e.Host); ok {
				out = append(out, &Error{Pos: e.Pos, Msg: fmt.Sprintf("warning: `%s` covers %s, a shared suffix where anyone can create names (Public Suffix List, private section): it reaches every tenant of that service, an attacker's included; list the exact hosts if you can", e.Host, suffix)})
			}
		}
	}
	out.Sort()
	return out
}

// Warnings is every file's Warnings, sorted by file, line and column.
func (s *Set) Warnings() ErrorList {
	if s == nil {
		return nil
	}
	var out ErrorList
	for _, f := range s.Files {
		out = append(out, f.Warnings()...)
	}
	out.Sort()
	return out
}

// privateSuffixWildcard reports whether host is "*.S" for S a suffix of the
// PSL's private section. Parse has already refused ICANN suffixes.
func privateSuffixWildcard(host string) (string, bool) {
	name, wild := strings.CutPrefix(host, "*.")
	if !wild {
		return "", false
	}
	ps, icann := publicsuffix.PublicSuffix(name)
	return ps, ps == name && !icann && strings.Contains(name, ".")
}
