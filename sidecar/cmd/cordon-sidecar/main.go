// Command cordon-sidecar is Cordon's per-task sidecar (DESIGN.md "How a
// task runs"):
//
//	cordon-sidecar run [--secrets-file FILE] [flags] -- CMD ARGS...
//	    the job container's entrypoint: runs CMD with its secrets injected,
//	    output scrubbed and capped, signals forwarded, exit code passed on.
//
// main only parses flags; the work is in sidecar/jobrun.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"time"

	"github.com/cordon-dev/cordon/sidecar/handoff"
	"github.com/cordon-dev/cordon/sidecar/jobrun"
)

func main() {
	begin := time.Now()
	if len(os.Args) < 2 {
		usage()
		os.Exit(2)
	}
	switch os.Args[1] {
	case "run":
		os.Exit(runCmd(os.Args[2:], begin))
	case "-h", "--help", "help":
		usage()
	default:
		fmt.Fprintf(os.Stderr, "cordon-sidecar: unknown command %q\n", os.Args[1])
		usage()
		os.Exit(2)
	}
}

func usage() {
	fmt.Fprint(os.Stderr, `usage:
  cordon-sidecar run [--secrets-file FILE | --agent-socket PATH] [flags] -- CMD ARGS...
run "cordon-sidecar COMMAND -h" for a command's flags
`)
}

func runCmd(args []string, begin time.Time) int {
	fs := flag.NewFlagSet("cordon-sidecar run", flag.ContinueOnError)
	var o jobrun.Options
	fs.StringVar(&o.SecretsFile, "secrets-file", "", `JSON file {"name": "value"} with the job's secrets (local runs, no agent)`)
	fs.StringVar(&o.AgentSocket, "agent-socket", "", "the agent's handoff socket (default "+jobrun.DefaultAgentSocket+")")
	fs.StringVar(&o.UsageFile, "usage-file", "", "write the usage summary here as JSON instead of stderr")
	fs.StringVar(&o.Run.ProxyURL, "proxy", "", "egress proxy URL for HTTP(S)_PROXY (default "+jobrun.DefaultProxyURL+")")
	fs.StringVar(&o.Run.NoProxy, "no-proxy", "", "NO_PROXY for the job (default "+jobrun.DefaultNoProxy+")")
	fs.DurationVar(&o.Run.Timeout, "timeout", 0, "stop the job after this long (0: no timeout)")
	fs.DurationVar(&o.Run.Grace, "grace", 10*time.Second, "time between SIGTERM and SIGKILL after a timeout")
	fs.Int64Var(&o.Run.MaxStdoutBytes, "max-stdout-bytes", jobrun.DefaultMaxOutputBytes, "cap on the job's stdout (negative: none)")
	fs.Int64Var(&o.Run.MaxStderrBytes, "max-stderr-bytes", jobrun.DefaultMaxOutputBytes, "cap on the job's stderr (negative: none)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	o.Run.Command = fs.Args()
	o.Run.Begin = begin
	o.FetchEnv = func(ctx context.Context, socket string) (map[string]string, string, error) {
		env, err := handoff.Fetch(ctx, socket)
		return env.Secrets, env.ProxyURL, err
	}
	return jobrun.Main(context.Background(), o)
}
