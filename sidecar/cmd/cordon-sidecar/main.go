// Command cordon-sidecar is Cordon's per-task sidecar (DESIGN.md "How a
// task runs"):
//
//	cordon-sidecar agent --secrets NAME,... --env prod --shared-dir /cordon (--xds HOST:PORT | --allowlists DIR) [--dispatcher URL] [flags]
//	    the sidecar container: identity, admission (with --dispatcher),
//	    secrets, scoped AWS credentials (--datasets-file), binary copy,
//	    handoff, the embedded egress proxy, lease heartbeats and
//	    termination orders, usage and audit to the dispatcher.
//	cordon-sidecar run [--secrets-file FILE] [flags] -- CMD ARGS...
//	    the job container's entrypoint: runs CMD with its secrets injected,
//	    output scrubbed and capped, signals forwarded, exit code passed on;
//	    a run the agent refused prints "cordon: run refused: REASON" and
//	    exits 75 without starting CMD; the agent's termination order stops
//	    CMD's process group (SIGTERM, grace, SIGKILL).
//	cordon-sidecar health [--addr 127.0.0.1:9902]
//	    the agent container's health check (the image has no curl).
//	cordon-sidecar check --secrets-file FILE
//	    checks a secrets file as run would, without running anything.
//
// main only parses flags; the work is in sidecar/agent and sidecar/jobrun.
//
// Build it with -tags grpcnotrace, as `make build` and the images do: the
// tag drops gRPC's golang.org/x/net/trace, whose html/template makes the
// linker keep every exported method of every type (text/template calls
// methods by name through reflect), about 4.5 MB of binary and 2.5 MiB of
// the agent's idle RSS (issue 4's <= 20 MB). Cordon never uses gRPC
// tracing.
package main

import (
	"context"
	"crypto/tls"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/cordon-dev/cordon/dispatcher/ingestclient"
	"github.com/cordon-dev/cordon/egress-proxy/proxy"
	"github.com/cordon-dev/cordon/internal/admit"
	"github.com/cordon-dev/cordon/internal/logbuf"
	"github.com/cordon-dev/cordon/internal/mtls"
	"github.com/cordon-dev/cordon/sidecar/agent"
	"github.com/cordon-dev/cordon/sidecar/confine"
	"github.com/cordon-dev/cordon/sidecar/credserver"
	"github.com/cordon-dev/cordon/sidecar/credsource"
	"github.com/cordon-dev/cordon/sidecar/delivery"
	"github.com/cordon-dev/cordon/sidecar/egress"
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
	case "run", "agent":
		// Both hold what the job must not reach through /proc: the task's
		// credentials, the secrets, the unscrubbed log descriptors.
		if err := jobrun.HardenProcess(); err != nil {
			fmt.Fprintf(os.Stderr, "cordon-sidecar: %v\n", err)
			os.Exit(jobrun.ExitShimFailed)
		}
	}
	switch os.Args[1] {
	case "run":
		os.Exit(runCmd(os.Args[2:], begin))
	case "agent":
		os.Exit(agentCmd(os.Args[2:]))
	case "health":
		os.Exit(healthCmd(os.Args[2:]))
	case "check":
		os.Exit(checkCmd(os.Args[2:]))
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
  cordon-sidecar agent --secrets NAME,... --env ENV --shared-dir DIR (--xds HOST:PORT | --allowlists DIR) [--dispatcher URL [--datasets-file FILE]] [flags]
  cordon-sidecar health [--addr HOST:PORT]
  cordon-sidecar check --secrets-file FILE
  cordon-sidecar run [--secrets-file FILE | --agent-socket PATH] [--enforce auto|require|off] [flags] -- CMD ARGS...
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
	var cc confine.Config
	fs.StringVar(&cc.Mode, "enforce", confine.ModeAuto, "eBPF confinement of the job: auto (where the host allows it), require (refuse to run without), off")
	fs.StringVar(&cc.CgroupParent, "cgroup-parent", "", "cgroup v2 directory the job's cgroup is made in (default: the cgroup2 root, mounted if missing)")
	fs.Func("dns", "the one DNS resolver IP:PORT the job may query (default: the first nameserver of /etc/resolv.conf)", func(v string) error {
		ap, err := netip.ParseAddrPort(v)
		if err != nil {
			return fmt.Errorf("want IP:PORT: %w", err)
		}
		cc.DNS = ap
		return nil
	})
	if err := fs.Parse(args); err != nil {
		return 2
	}
	// Warnings (no eBPF here) go to stderr with the job's, as text.
	cc.Logger = slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: slog.LevelWarn}))
	confiner, err := confine.New(cc)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cordon-sidecar run: %v\n", err)
		return 2
	}
	o.Confiner = confiner
	o.Run.Command = fs.Args()
	o.Run.Begin = begin
	// As a container's PID 1 the wrapper inherits every orphan: reap them.
	o.Run.ReapOrphans = os.Getpid() == 1
	o.FetchEnv = func(ctx context.Context, socket string) (jobrun.AgentEnv, error) {
		env, err := handoff.Fetch(ctx, socket)
		var refused *handoff.RunRefusedError
		if errors.As(err, &refused) {
			return jobrun.AgentEnv{}, &jobrun.RefusedError{Reason: refused.Reason}
		}
		if err != nil {
			return jobrun.AgentEnv{}, err
		}
		out := jobrun.AgentEnv{Secrets: env.Secrets, ProxyURL: env.ProxyURL, ReportToken: env.ReportToken}
		for _, v := range env.Extra {
			out.Extra = append(out.Extra, jobrun.ExtraVar{Name: v.Name, Value: v.Value, Secret: v.Secret})
		}
		return out, nil
	}
	o.SendReport = func(ctx context.Context, socket, token string, res jobrun.Result) error {
		return handoff.Report(ctx, socket, token, res)
	}
	o.Watch = func(ctx context.Context, socket, token string) (jobrun.Termination, error) {
		order, err := handoff.Watch(ctx, socket, token)
		return jobrun.Termination{Reason: order.Reason, Grace: order.Grace}, err
	}
	return jobrun.Main(context.Background(), o)
}

func agentCmd(args []string) int {
	fs := flag.NewFlagSet("cordon-sidecar agent", flag.ContinueOnError)
	var cfg agent.Config
	var pc agent.ProviderConfig
	var names string
	fs.StringVar(&names, "secrets", "", "comma-separated secret names the job declares")
	fs.StringVar(&pc.Kind, "provider", "aws", "secrets backend: aws or file")
	fs.StringVar(&pc.Env, "env", "", "deployment environment in /{env}/{org}/{name} (provider aws)")
	fs.StringVar(&pc.File, "secrets-file", "", `JSON file {"name": "value"} (provider file)`)
	fs.StringVar(&pc.Region, "aws-region", "", "AWS region (default: the SDK's)")
	fs.StringVar(&pc.Endpoint, "aws-endpoint", "", "Secrets Manager endpoint override")
	fs.StringVar(&cfg.SharedDir, "shared-dir", "/cordon", "volume shared with the job container")
	fs.IntVar(&cfg.JobUID, "job-uid", -1, "uid of the job container's process (default: the agent's)")
	fs.StringVar(&cfg.HealthAddr, "health-addr", "127.0.0.1:9902", "health endpoint address")
	fs.StringVar(&cfg.ProxyAddr, "proxy-addr", "127.0.0.1:3128", "egress proxy address given to the job")
	fs.StringVar(&cfg.WorkloadAPIAddr, "workload-api", "", "Workload API address (default $SPIFFE_ENDPOINT_SOCKET)")
	var ec egress.Config
	var xdsServerID, gatewayID, dispatcher, dispatcherID string
	var dc delivery.Config
	fs.StringVar(&ec.Allowlists, "allowlists", "", "directory of allowlist files: static egress policy (local runs; exclusive with --xds)")
	fs.StringVar(&ec.XDS, "xds", "", "control plane HOST:PORT: egress policy over xDS with the SVID (exclusive with --allowlists)")
	fs.StringVar(&xdsServerID, "xds-server-id", "", "SPIFFE ID the control plane must present (default spiffe://TD/cordon/xds)")
	fs.StringVar(&ec.Gateway, "gateway", "", "cordon-egress gateway HOST:PORT: allowed traffic goes on through it over mTLS")
	fs.StringVar(&gatewayID, "gateway-id", "", "SPIFFE ID the gateway must present (default spiffe://TD/cordon/egress-gateway)")
	fs.StringVar(&ec.DNS, "dns", "", "DNS server HOST:PORT the proxy resolves with (default: the system resolver)")
	fs.Func("unsafe-allow-cidr", "treat this CIDR as a public destination, repeatable: TESTS AND LOCAL RUNS ONLY (e.g. loopback upstreams)", func(v string) error {
		p, err := proxy.ParseUnsafeCIDR(v)
		if err != nil {
			return err
		}
		ec.UnsafeAllowCIDRs = append(ec.UnsafeAllowCIDRs, p)
		return nil
	})
	fs.StringVar(&dispatcher, "dispatcher", "", "dispatcher ingest URL https://HOST:PORT for audit events and usage (default: reporting off)")
	fs.StringVar(&dispatcherID, "dispatcher-id", "", "SPIFFE ID the dispatcher must present (default spiffe://TD/dispatcher)")
	fs.StringVar(&dc.Dir, "spool-dir", "/var/lib/cordon/spool", "on-disk queue of undelivered events and reports (never the shared dir: the job can write there)")
	fs.Int64Var(&dc.MaxBytes, "spool-max-bytes", 64<<20, "bound on the spool's size on disk")
	fs.DurationVar(&dc.MaxBackoff, "retry-max-backoff", time.Minute, "longest wait between deliveries while the dispatcher is unreachable")
	fs.DurationVar(&cfg.UsageInterval, "usage-interval", time.Minute, "period of interim usage reports of a long job (0: final report only)")
	fs.StringVar(&cfg.RunID, "run-id", "", "run ID of admission, credentials and usage reports (default: a fresh UUIDv7)")
	admission := fs.Bool("admission", true, "ask the dispatcher to admit the run before the job starts, heartbeat its lease and carry out termination orders (with --dispatcher)")
	fs.DurationVar(&cfg.HeartbeatInterval, "heartbeat-interval", 0, "period of the run's lease heartbeats (default: what the dispatcher asks, a third of the lease)")
	datasetsFile := fs.String("datasets-file", "", "the job's dataset declaration (JSON) for scoped AWS credentials (or $"+credsource.EnvDatasets+"; needs --dispatcher)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "cordon-sidecar agent: unexpected arguments %s\n", strings.Join(fs.Args(), " "))
		return 2
	}
	// The embedded proxy logs one line per egress decision: buffered
	// (internal/logbuf), or each would be its own write(2). Close,
	// deferred, writes what is left on exit.
	logw := logbuf.New(os.Stderr, 0, 0)
	defer logw.Close()
	log := slog.New(slog.NewJSONHandler(logw, nil))
	for _, v := range []struct {
		flag, val string
		dst       *spiffeid.ID
	}{{"--xds-server-id", xdsServerID, &ec.XDSServerID}, {"--gateway-id", gatewayID, &ec.GatewayID}} {
		if v.val == "" {
			continue
		}
		id, err := spiffeid.FromString(v.val)
		if err != nil {
			fmt.Fprintf(os.Stderr, "cordon-sidecar agent: %s %q: %v\n", v.flag, v.val, err)
			return 2
		}
		*v.dst = id
	}
	if dispatcher == "" && dispatcherID != "" {
		fmt.Fprintln(os.Stderr, "cordon-sidecar agent: --dispatcher-id needs --dispatcher")
		return 2
	}
	decl, haveDecl, err := credsource.LoadDeclaration(*datasetsFile, os.Getenv(credsource.EnvDatasets))
	if err != nil {
		fmt.Fprintf(os.Stderr, "cordon-sidecar agent: %v\n", err)
		return 2
	}
	if haveDecl && dispatcher == "" {
		fmt.Fprintln(os.Stderr, "cordon-sidecar agent: a dataset declaration needs --dispatcher (the credentials come from it)")
		return 2
	}
	// The dispatcher's SPIFFE ID, in the SVID's trust domain unless given.
	// dispatcherTLS is the mTLS client configuration of every request to
	// the dispatcher: id's SVID, and only the dispatcher's SPIFFE ID
	// (--dispatcher-id, else /dispatcher in id's trust domain) accepted.
	dispatcherTLS := func(id agent.Identity) (*tls.Config, error) {
		server, err := spiffeid.FromPath(id.ID.TrustDomain(), "/dispatcher")
		if dispatcherID != "" {
			if server, err = spiffeid.FromString(dispatcherID); err != nil {
				return nil, fmt.Errorf("--dispatcher-id %q: %w", dispatcherID, err)
			}
		}
		if err != nil {
			return nil, err
		}
		return mtls.ClientConfig(id.Source, id.Source, server), nil
	}
	var counter egress.Counter
	ec.Counter = &counter
	ec.Logger = log
	cfg.Egress = counter.Snapshot
	if dispatcher != "" {
		dc.Logger = log
		d, err := delivery.Open(dc)
		if err != nil {
			fmt.Fprintf(os.Stderr, "cordon-sidecar agent: %v\n", err)
			return 1
		}
		defer d.Close()
		cfg.Audit = d.Events()
		cfg.Usage = d.Usage()
		cfg.Deliver = func(ctx context.Context, id agent.Identity) error {
			tc, err := dispatcherTLS(id)
			if err != nil {
				return err
			}
			// A request that hangs (a dispatcher mid-restart) is abandoned and
			// retried well before the spool notices nothing moves.
			client := ingestclient.New(dispatcher, tc, ingestclient.WithTimeout(10*time.Second))
			defer client.Close()
			return d.Run(ctx, client)
		}
		if *admission {
			cfg.NewAdmitter = func(ctx context.Context, id agent.Identity) (agent.Admitter, error) {
				tc, err := dispatcherTLS(id)
				if err != nil {
					return nil, err
				}
				return admit.New(dispatcher, tc, 10*time.Second)
			}
		}
		if haveDecl {
			cfg.NewCredentials = func(ctx context.Context, id agent.Identity, runID string) (credserver.Source, error) {
				tc, err := dispatcherTLS(id)
				if err != nil {
					return nil, err
				}
				return credsource.New(credsource.Config{URL: dispatcher, RunID: runID, Declaration: decl, TLS: tc})
			}
		}
	} else {
		log.Warn("reporting off: no --dispatcher, audit events and usage are only logged")
	}
	ec.Audit = cfg.Audit
	newProxy, err := egress.NewProxy(ec)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cordon-sidecar agent: %v\n", err)
		return 2
	}
	cfg.NewProxy = newProxy
	if names != "" {
		cfg.Secrets = strings.Split(names, ",")
	}
	pc.Logger = log
	provider, err := agent.NewProvider(pc)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cordon-sidecar agent: %v\n", err)
		return 2
	}
	cfg.Provider = provider
	cfg.Logger = log
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := agent.Run(ctx, cfg); err != nil {
		fmt.Fprintf(os.Stderr, "cordon-sidecar agent: %v\n", err)
		return 1
	}
	return 0
}

func healthCmd(args []string) int {
	fs := flag.NewFlagSet("cordon-sidecar health", flag.ContinueOnError)
	addr := fs.String("addr", "127.0.0.1:9902", "the agent's health endpoint")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	if err := agent.CheckHealth(ctx, *addr); err != nil {
		fmt.Fprintf(os.Stderr, "cordon-sidecar health: %v\n", err)
		return 1
	}
	return 0
}

func checkCmd(args []string) int {
	fs := flag.NewFlagSet("cordon-sidecar check", flag.ContinueOnError)
	file := fs.String("secrets-file", "", `JSON file {"name": "value"} to check`)
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *file == "" {
		fmt.Fprintln(os.Stderr, "cordon-sidecar check: pass --secrets-file FILE")
		return 2
	}
	if err := jobrun.CheckSecretsFile(context.Background(), *file, os.Stdout); err != nil {
		fmt.Fprintf(os.Stderr, "cordon-sidecar check: %v\n", err)
		return 1
	}
	return 0
}
