package allowlist

import (
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// Set is every org's allowlist file loaded from one directory.
type Set struct {
	// Files by org slug.
	Files map[string]*File
}

// LoadDir parses every *.yaml / *.yml file in dir. On failure the error is
// an ErrorList with every problem of every file.
//
// It reads regular files only, not subdirectories, and skips names that
// start with '.' (editor swap and backup files). A directory with no
// allowlist file is an error: it is far more likely a wrong path than an
// intent to deny every job.
func LoadDir(dir string) (*Set, error) {
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("load allowlists: %w", err)
	}
	s := &Set{Files: map[string]*File{}}
	orgAt := map[string]Pos{}
	var errs ErrorList
	n := 0
	for _, ent := range ents { // sorted by name
		name := ent.Name()
		ext := filepath.Ext(name)
		if strings.HasPrefix(name, ".") || (ext != ".yaml" && ext != ".yml") {
			continue
		}
		path := filepath.Join(dir, name)
		info, err := os.Stat(path) // follows symlinks, as reading does
		if err != nil {
			return nil, fmt.Errorf("load allowlists: %w", err)
		}
		if !info.Mode().IsRegular() {
			continue
		}
		n++
		data, err := readCapped(path)
		if err != nil {
			return nil, fmt.Errorf("load allowlists: %w", err)
		}
		p, ferrs := parse(path, data)
		errs = append(errs, ferrs...)
		if p.file == nil {
			continue
		}
		if first, dup := orgAt[p.file.Org]; dup {
			errs = append(errs, &Error{Pos: p.orgPos, Msg: fmt.Sprintf("org %s is already declared in %s: one file per org, merge them", p.file.Org, first)})
			continue
		}
		orgAt[p.file.Org] = p.orgPos
		s.Files[p.file.Org] = p.file
	}
	if n == 0 && len(errs) == 0 {
		return nil, fmt.Errorf("load allowlists: %s has no *.yaml or *.yml files: check the path", dir)
	}
	if err := errs.err(); err != nil {
		return nil, err
	}
	return s, nil
}

// readCapped reads at most MaxFileSize+1 bytes, enough for Parse to refuse
// an oversized file without reading all of it.
func readCapped(path string) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	return io.ReadAll(io.LimitReader(f, MaxFileSize+1))
}

// Policy resolves the policy of job in org. It errors when either is unknown;
// the error matches ErrUnknownJob (and ErrUnknownOrg when the org is unknown).
func (s *Set) Policy(org, job string) (*JobPolicy, error) {
	var f *File
	if s != nil {
		f = s.Files[org]
	}
	if f == nil {
		return nil, &lookupError{org: org, job: job, noOrg: true}
	}
	j := f.Jobs[job]
	if j == nil {
		return nil, &lookupError{org: org, job: job}
	}
	return f.resolve(j), nil
}

// Policies resolves every job of every org, sorted by ID.
func (s *Set) Policies() []*JobPolicy {
	if s == nil {
		return nil
	}
	var out []*JobPolicy
	for _, f := range s.Files {
		for _, j := range f.Jobs {
			out = append(out, f.resolve(j))
		}
	}
	slices.SortFunc(out, func(a, b *JobPolicy) int { return strings.Compare(a.ID(), b.ID()) })
	return out
}

// resolve builds j's self-contained policy: its endpoint sets' entries in
// allow order, then the file's webhooks if it may use them. Slices are
// copied, so callers may keep or change the result.
func (f *File) resolve(j *Job) *JobPolicy {
	p := &JobPolicy{Org: f.Org, Job: j.Name, Class: j.Class, Mode: j.Mode}
	if p.Mode == "" {
		p.Mode = ModeEnforce
	}
	for _, name := range j.Allow {
		set := f.EndpointSets[name]
		if set == nil {
			continue // Parse refuses this; a hand-built File may not
		}
		for _, e := range set.Entries {
			p.Rules = append(p.Rules, Rule{
				Host:   e.Host,
				CIDR:   e.CIDR,
				Ports:  slices.Clone(e.Ports),
				Source: "endpoint_set:" + name,
			})
		}
	}
	if j.Webhooks {
		for _, w := range f.Webhooks {
			p.Rules = append(p.Rules, Rule{
				Host:   w.Host,
				Ports:  []uint16{w.Port},
				Source: "webhook:" + w.URL,
			})
		}
	}
	return p
}
