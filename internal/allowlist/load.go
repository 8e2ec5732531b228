package allowlist

import "errors"

// errNotYet marks the loader API while the parser is being written.
// TODO(allowlist): replace with the real parser.
var errNotYet = errors.New("allowlist parser not implemented yet")

// Set is every org's allowlist file loaded from one directory.
type Set struct {
	// Files by org slug.
	Files map[string]*File
}

// Parse parses and validates one allowlist file's bytes. name is used in
// positions. On failure the error is an ErrorList with every problem found.
func Parse(name string, data []byte) (*File, error) { return nil, errNotYet }

// LoadDir parses every *.yaml / *.yml file in dir. On failure the error is
// an ErrorList with every problem of every file.
func LoadDir(dir string) (*Set, error) { return nil, errNotYet }

// Policy resolves the policy of job in org. It errors when either is unknown.
func (s *Set) Policy(org, job string) (*JobPolicy, error) { return nil, errNotYet }

// Policies resolves every job of every org, sorted by ID.
func (s *Set) Policies() []*JobPolicy { return nil }
