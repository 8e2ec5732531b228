// Package cli is the cordon-dispatcher command line: migrate, serve, verify
// and retention. main only hands it the arguments; everything here is
// importable and tested.
//
// It is not where the logic lives: the store is dispatcher/auditstore and
// the API dispatcher/ingest.
package cli

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"io"
	"log/slog"
	"os"
	"time"

	"github.com/cordon-dev/cordon/dispatcher/auditstore"
)

// Exit codes.
const (
	ExitOK       = 0
	ExitProblems = 1 // verify found a broken chain
	ExitError    = 2 // bad usage or an operational error
)

// DatabaseEnv is read when --db is not given, so the URL (and its password)
// need not appear in the process list.
const DatabaseEnv = "CORDON_DATABASE_URL"

const usage = `usage: cordon-dispatcher COMMAND [flags]

commands:
  migrate    --db URL                          apply schema migrations (as a superuser)
  serve      --db URL [flags]                  serve the sidecar API (ingest, admission,
                                               credentials) over mTLS, the user API and
                                               web UI, and run anomaly and cost alerts
                                               (cordon-dispatcher serve -h lists the flags)
  verify     --db URL [--org ORG]              check the audit hash chains (exit 1 if broken)
  retention  --db URL [--now RFC3339] [--dry-run]
                                               drop audit partitions past retention

--db defaults to $` + DatabaseEnv + `.
`

// Run runs the command in args (without the program name) and returns the
// exit code. Logs go to stderr as JSON; results to stdout.
func Run(ctx context.Context, args []string, stdout, stderr io.Writer) int {
	log := slog.New(slog.NewJSONHandler(stderr, nil))
	if len(args) == 0 {
		fmt.Fprint(stderr, usage)
		return ExitError
	}
	cmd, args := args[0], args[1:]
	fs := flag.NewFlagSet("cordon-dispatcher "+cmd, flag.ContinueOnError)
	fs.SetOutput(stderr)
	db := fs.String("db", os.Getenv(DatabaseEnv), "Postgres URL (default $"+DatabaseEnv+")")
	var err error
	code := ExitOK
	switch cmd {
	case "migrate":
		if err = parse(fs, args, db); err == nil {
			var applied []string
			applied, err = auditstore.Migrate(ctx, *db, log)
			if err == nil {
				fmt.Fprintf(stdout, "migrations applied: %d\n", len(applied))
			}
		}
	case "verify":
		org := fs.String("org", "", "verify only this org's chains")
		if err = parse(fs, args, db); err == nil {
			code, err = runVerify(ctx, *db, *org, stdout)
		}
	case "retention":
		nowFlag := fs.String("now", "", "compute retention as of this time (RFC 3339; default now)")
		dry := fs.Bool("dry-run", false, "list what would be dropped, drop nothing")
		if err = parse(fs, args, db); err == nil {
			code, err = runRetention(ctx, *db, *nowFlag, *dry, stdout)
		}
	case "serve":
		cfg := ServeConfig{Log: log}
		cfg.flags(fs)
		check := fs.Bool("check", false, "validate the flags and load the local files (allowlists, cursor key, user TLS certificate), then exit without serving")
		if err = parse(fs, args, db); err == nil {
			cfg.Database = *db
			if *check {
				if err = Check(cfg); err == nil {
					fmt.Fprintln(stdout, "serve configuration ok")
				}
			} else {
				log.Info("garbage collector", "gc_percent", TuneGC())
				err = Serve(ctx, cfg)
			}
		}
	case "help", "-h", "--help":
		fmt.Fprint(stdout, usage)
		return ExitOK
	default:
		fmt.Fprintf(stderr, "cordon-dispatcher: unknown command %q\n\n%s", cmd, usage)
		return ExitError
	}
	if errors.Is(err, flag.ErrHelp) {
		return ExitOK
	}
	if err != nil {
		fmt.Fprintf(stderr, "cordon-dispatcher %s: %v\n", cmd, err)
		return ExitError
	}
	return code
}

func parse(fs *flag.FlagSet, args []string, db *string) error {
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	if *db == "" {
		return fmt.Errorf("no database: pass --db URL or set $%s", DatabaseEnv)
	}
	return nil
}

func runVerify(ctx context.Context, db, org string, out io.Writer) (int, error) {
	rep, err := auditstore.Verify(ctx, db, org)
	if err != nil {
		return ExitError, err
	}
	for _, p := range rep.Problems {
		fmt.Fprintf(out, "BROKEN %s\n", p)
	}
	fmt.Fprintf(out, "verified %d rows in %d chains (%d expired by retention): %d broken\n", rep.Rows, rep.Chains, rep.Expired, len(rep.Problems))
	if len(rep.Problems) > 0 {
		return ExitProblems, nil
	}
	return ExitOK, nil
}

func runRetention(ctx context.Context, db, nowFlag string, dry bool, out io.Writer) (int, error) {
	opts := auditstore.RetentionOptions{DryRun: dry}
	if nowFlag != "" {
		t, err := time.Parse(time.RFC3339, nowFlag)
		if err != nil {
			return ExitError, fmt.Errorf("--now %q: want RFC 3339 like 2026-11-23T00:00:00Z", nowFlag)
		}
		opts.Now = t
	}
	dropped, err := auditstore.Retention(ctx, db, opts)
	verb := "dropped"
	if dry {
		verb = "would drop"
	}
	for _, p := range dropped {
		fmt.Fprintf(out, "%s %s (%s, %s)\n", verb, p.Name, p.Class, p.Month.Format("2006-01"))
	}
	if err != nil {
		return ExitError, err
	}
	fmt.Fprintf(out, "%s %d partitions\n", verb, len(dropped))
	return ExitOK, nil
}
