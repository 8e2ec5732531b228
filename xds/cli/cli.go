// Package cli is the cordon-xds command: `lint`, `diff` and `dump` for the
// security team reviewing allowlist changes, and `serve`, the control plane.
// main only calls Main; everything here is importable and tested.
//
// It holds no logic of its own beyond presentation: parsing is
// internal/allowlist, translation xds/translate, serving xds/server and
// xds/reload.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
)

// Exit codes.
const (
	ExitOK    = 0
	ExitFail  = 1 // lint found errors, a load failed, serve failed
	ExitUsage = 2
)

const usage = `usage: cordon-xds <command> [flags]

commands:
  lint DIR|FILE...                      check allowlist files; every error as FILE:LINE:COL: message
  diff [--json] OLD_DIR NEW_DIR         the review plan: per job, destinations gained and lost, mode and class changes
  dump --allowlists DIR --job ORG/JOB   the Envoy resources the job gets, as JSON
  serve --allowlists DIR --listen ADDR [--state-dir DIR] [--metrics ADDR] [--trust-domain TD]
                                        serve the allowlists over ADS (mTLS with the Workload API's SVID)
`

// Main runs the command in args (without the program name) and returns the
// process exit code.
func Main(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return ExitUsage
	}
	var code int
	var err error
	switch args[0] {
	case "lint":
		code, err = lint(args[1:], stdout)
	case "diff":
		code, err = diff(args[1:], stdout)
	case "dump":
		code, err = dump(args[1:], stdout)
	case "serve":
		code, err = serve(ctx, args[1:], stderr)
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return ExitOK
	default:
		fmt.Fprintf(stderr, "cordon-xds: unknown command %q\n%s", args[0], usage)
		return ExitUsage
	}
	if err != nil {
		var ue usageError
		if errors.As(err, &ue) {
			fmt.Fprintf(stderr, "cordon-xds %s: %v\n%s", args[0], err, usage)
			return ExitUsage
		}
		fmt.Fprintf(stderr, "cordon-xds %s: %v\n", args[0], err)
		if code == ExitOK {
			code = ExitFail
		}
	}
	return code
}

type usageError struct{ error }

func usagef(format string, args ...any) error { return usageError{fmt.Errorf(format, args...)} }

// newFlags returns a flag set that reports errors instead of exiting.
func newFlags(name string) *flag.FlagSet {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(io.Discard)
	return fs
}

// parseInterspersed parses flags that may come before or after positional
// arguments ("diff OLD NEW --json").
func parseInterspersed(fs *flag.FlagSet, args []string) ([]string, error) {
	var pos []string
	for {
		if err := fs.Parse(args); err != nil {
			return nil, usageError{err}
		}
		if fs.NArg() == 0 {
			return pos, nil
		}
		pos = append(pos, fs.Arg(0))
		args = fs.Args()[1:]
	}
}
