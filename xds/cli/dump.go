package cli

import (
	"fmt"
	"io"
	"strings"

	"github.com/cordon-dev/cordon/internal/allowlist"
	"github.com/cordon-dev/cordon/xds/translate"
)

// dump prints the RouteConfiguration a job gets, as stable protojson.
func dump(args []string, stdout io.Writer) (int, error) {
	fs := newFlags("dump")
	dir := fs.String("allowlists", "", "allowlist directory")
	job := fs.String("job", "", "ORG/JOB")
	rest, err := parseInterspersed(fs, args)
	if err != nil {
		return ExitUsage, err
	}
	if len(rest) > 0 || *dir == "" || *job == "" {
		return ExitUsage, usagef("dump takes --allowlists DIR and --job ORG/JOB")
	}
	org, name, ok := strings.Cut(*job, "/")
	if !ok {
		return ExitUsage, usagef("--job %q: want ORG/JOB", *job)
	}
	set, err := allowlist.LoadDir(*dir)
	if err != nil {
		return ExitFail, fmt.Errorf("%w\n(run cordon-xds lint %s)", err, *dir)
	}
	p, err := set.Policy(org, name)
	if err != nil {
		return ExitFail, err
	}
	rc, err := translate.ToRouteConfiguration(p)
	if err != nil {
		return ExitFail, err
	}
	out, err := translate.MarshalJSON(rc)
	if err != nil {
		return ExitFail, err
	}
	_, err = stdout.Write(out)
	return ExitOK, err
}
