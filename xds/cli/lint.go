package cli

import (
	"errors"
	"fmt"
	"io"
	"os"

	"github.com/cordon-dev/cordon/internal/allowlist"
	"github.com/cordon-dev/cordon/xds/translate"
)

// lint checks every directory or file and prints every error, one per line
// as FILE:LINE:COL: message, and every warning as
// FILE:LINE:COL: warning: message. It exits 1 on any error, warnings alone
// do not fail.
func lint(args []string, stdout io.Writer) (int, error) {
	fs := newFlags("lint")
	paths, err := parseInterspersed(fs, args)
	if err != nil {
		return ExitUsage, err
	}
	if len(paths) == 0 {
		return ExitUsage, usagef("name at least one allowlist directory or file")
	}
	failed := false
	for _, path := range paths {
		errs, warns, err := lintPath(path)
		if err != nil {
			fmt.Fprintf(stdout, "%s: %v\n", path, err)
			failed = true
			continue
		}
		for _, e := range errs {
			fmt.Fprintln(stdout, e.Error())
		}
		for _, w := range warns {
			fmt.Fprintln(stdout, w.Error()) // messages start with "warning: "
		}
		failed = failed || len(errs) > 0
	}
	if failed {
		return ExitFail, nil
	}
	return ExitOK, nil
}

// lintPath loads a directory (or one file) and also translates every job,
// so what lints clean is what the control plane can serve. err is a
// problem that is not in a file (a missing path).
func lintPath(path string) (errs, warns allowlist.ErrorList, err error) {
	info, err := os.Stat(path)
	if err != nil {
		return nil, nil, fmt.Errorf("cannot read it: %w", err)
	}
	var set *allowlist.Set
	if info.IsDir() {
		set, err = allowlist.LoadDir(path)
	} else {
		var data []byte
		if data, err = os.ReadFile(path); err != nil {
			return nil, nil, err
		}
		var f *allowlist.File
		if f, err = allowlist.Parse(path, data); err == nil {
			set = &allowlist.Set{Files: map[string]*allowlist.File{f.Org: f}}
		}
	}
	if err != nil {
		if errors.As(err, &errs) {
			return errs, nil, nil
		}
		return nil, nil, err
	}
	for _, p := range set.Policies() {
		if _, err := translate.ToRouteConfiguration(p); err != nil {
			f := set.Files[p.Org]
			pos := allowlist.Pos{File: path}
			if j := f.Jobs[p.Job]; j != nil {
				pos = j.Pos
			}
			errs = append(errs, &allowlist.Error{Pos: pos, Msg: err.Error() + ": the control plane cannot serve this job"})
		}
	}
	return errs, set.Warnings(), nil
}
