package policy

import (
	"fmt"
	"sync/atomic"

	"github.com/cordon-dev/cordon/internal/allowlist"
)

// Store holds every job's compiled policy. Lookups are lock-free; Apply
// replaces the whole set atomically. The zero Store is not usable: call
// NewStore.
type jobKey struct{ org, job string }

type Store struct {
	cur atomic.Pointer[map[jobKey]*Compiled]
	gen atomic.Uint64
}

// NewStore returns an empty store: every job is denied (ReasonNoPolicy)
// until the first Apply.
func NewStore() *Store {
	s := &Store{}
	empty := map[jobKey]*Compiled{}
	s.cur.Store(&empty)
	return s
}

// Apply compiles every policy and then replaces the store's contents with
// exactly them. It is all or nothing: on error nothing changed (the xDS
// client NACKs). Requests already admitted, and open tunnels, keep the
// policy they were checked against; new requests see the new set.
func (s *Store) Apply(ps []*allowlist.JobPolicy) error {
	next := make(map[jobKey]*Compiled, len(ps))
	for _, p := range ps {
		c, err := Compile(p)
		if err != nil {
			return fmt.Errorf("apply policies: %w", err)
		}
		k := jobKey{p.Org, p.Job}
		if _, dup := next[k]; dup {
			return fmt.Errorf("apply policies: job %s appears twice", p.ID())
		}
		next[k] = c
	}
	s.cur.Store(&next)
	s.gen.Add(1)
	return nil
}

// Generation counts successful Applies: users keeping per-job state
// notice a new set (and drop state of jobs that left it) by comparing it.
func (s *Store) Generation() uint64 { return s.gen.Load() }

// Lookup returns the compiled policy of org/job, or false when there is
// none (deny with ReasonNoPolicy).
func (s *Store) Lookup(org, job string) (*Compiled, bool) {
	m := *s.cur.Load()
	c, ok := m[jobKey{org, job}]
	return c, ok
}

// Len is the number of jobs with a policy.
func (s *Store) Len() int { return len(*s.cur.Load()) }
