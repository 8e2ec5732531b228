package allowlist

import (
	"cmp"
	"errors"
	"fmt"
	"slices"
	"strings"
)

// Error is one problem in an allowlist file, at the node that caused it.
type Error struct {
	// Pos is the offending node's position; a problem with the whole file
	// (too big, not UTF-8, empty) is at line 1, column 1 or at the first
	// bad byte.
	Pos Pos
	// Msg says what is wrong and what to write instead. Warnings (see
	// File.Warnings) start with "warning: ".
	Msg string
}

// Error formats the problem as FILE:LINE:COL: message, the form editors and
// CI annotations understand.
func (e *Error) Error() string { return e.Pos.String() + ": " + e.Msg }

// ErrorList is every problem found in one or more files, sorted by file,
// line and column.
type ErrorList []*Error

// Error is one problem per line.
func (l ErrorList) Error() string {
	var b strings.Builder
	for i, e := range l {
		if i > 0 {
			b.WriteByte('\n')
		}
		b.WriteString(e.Error())
	}
	return b.String()
}

// Sort orders the list by file, line, column and message.
func (l ErrorList) Sort() {
	slices.SortStableFunc(l, func(a, b *Error) int {
		return cmp.Or(
			cmp.Compare(a.Pos.File, b.Pos.File),
			cmp.Compare(a.Pos.Line, b.Pos.Line),
			cmp.Compare(a.Pos.Col, b.Pos.Col),
			cmp.Compare(a.Msg, b.Msg),
		)
	})
}

// err returns the sorted list as an error, or nil when it is empty.
func (l ErrorList) err() error {
	if len(l) == 0 {
		return nil
	}
	l.Sort()
	return l
}

var (
	// ErrUnknownJob is returned (wrapped) by Set.Policy when the set has no
	// such job. A lookup in an unknown org also matches ErrUnknownJob, so a
	// caller that only asks "is there a policy?" needs one check.
	ErrUnknownJob = errors.New("unknown job")
	// ErrUnknownOrg is returned (wrapped) by Set.Policy when no file declares
	// the org.
	ErrUnknownOrg = errors.New("unknown org")
)

// lookupError is Set.Policy's error: it names the job and matches
// ErrUnknownOrg and/or ErrUnknownJob.
type lookupError struct {
	org, job string
	noOrg    bool
}

func (e *lookupError) Error() string {
	if e.noOrg {
		return fmt.Sprintf("allowlist policy %s/%s: unknown org %q: no allowlist file declares it", e.org, e.job, e.org)
	}
	return fmt.Sprintf("allowlist policy %s/%s: unknown job %q: org %s's allowlist file does not declare it", e.org, e.job, e.job, e.org)
}

func (e *lookupError) Is(target error) bool {
	return target == ErrUnknownJob || (e.noOrg && target == ErrUnknownOrg)
}
