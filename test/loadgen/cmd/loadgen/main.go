// Command loadgen drives the egress proxy benchmark (make bench-egress):
//
//	loadgen upstream --listen 127.0.0.2:0 --name upstream.bench.test --env-file F
//	loadgen run --name squid --proxy 127.0.0.4:3128 --host upstream.bench.test --upstream 127.0.0.2:PORT --pid PID --out squid.json
//	loadgen skip --name cordon-egress --reason "not built" --out cordon-egress.json
//	loadgen table direct.json cordon-egress.json squid.json tinyproxy.json
//	loadgen freeport --host 127.0.0.4
//	loadgen relay --listen 127.0.0.6:0 --to 127.0.0.2:PORT --env-file F
//
// See test/bench/egress/README.md.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net"
	"net/netip"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/cordon-dev/cordon/test/loadgen"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: loadgen upstream|run|skip|table|freeport|relay [flags]")
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	log := slog.New(slog.NewTextHandler(os.Stderr, nil))
	var err error
	switch cmd, args := os.Args[1], os.Args[2:]; cmd {
	case "upstream":
		err = upstream(ctx, log, args)
	case "run":
		err = run(ctx, log, args)
	case "skip":
		err = skip(args)
	case "table":
		err = table(args)
	case "freeport":
		err = freeport(args)
	case "relay":
		err = relay(ctx, log, args)
	default:
		err = fmt.Errorf("unknown command %q: want upstream, run, skip, table, freeport or relay", cmd)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "loadgen:", err)
		os.Exit(1)
	}
}

func upstream(ctx context.Context, log *slog.Logger, args []string) error {
	fs := flag.NewFlagSet("upstream", flag.ExitOnError)
	var cfg loadgen.ServeConfig
	fs.StringVar(&cfg.HTTPListen, "listen", "127.0.0.1:0", "upstream HTTP address (loopback)")
	fs.StringVar(&cfg.DNSListen, "dns-listen", "", "DNS address (default: the upstream IP, random port)")
	fs.StringVar(&cfg.Name, "name", "upstream.bench.test", "host name that resolves to the upstream")
	fs.Int64Var(&cfg.BigSize, "big-size", 1<<30, "bytes served at /big")
	fs.StringVar(&cfg.EnvFile, "env-file", "", "write UPSTREAM_*/DNS_ADDR shell assignments here when ready")
	fs.Parse(args)
	cfg.Logger = log
	if _, err := loadgen.RaiseFileLimit(1 << 16); err != nil {
		return err
	}
	return loadgen.Serve(ctx, cfg)
}

func run(ctx context.Context, log *slog.Logger, args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	var cfg loadgen.Config
	var upstreamAddr, out string
	fs.StringVar(&cfg.Name, "name", "direct", "row label")
	fs.StringVar(&cfg.Target.Proxy, "proxy", "", "proxy host:port (empty: direct)")
	fs.StringVar(&cfg.Target.Host, "host", "upstream.bench.test", "upstream host name used in requests")
	fs.StringVar(&upstreamAddr, "upstream", "", "upstream IP:port")
	fs.IntVar(&cfg.ProxyPID, "pid", 0, "proxy process ID for memory readings")
	fs.IntVar(&cfg.Clients, "clients", 16, "concurrent clients")
	fs.DurationVar(&cfg.Warmup, "warmup", 2*time.Second, "unmeasured warm-up per rate phase")
	fs.DurationVar(&cfg.Duration, "duration", 10*time.Second, "measured time per rate phase")
	fs.Int64Var(&cfg.BigSize, "big-size", 1<<30, "bytes of the bulk download (must match the upstream; <0 skips)")
	fs.IntVar(&cfg.BulkRuns, "bulk-runs", 3, "bulk downloads; the table shows the median")
	fs.IntVar(&cfg.IdleTunnels, "idle", 10000, "idle tunnels for the memory phase (<0 skips)")
	fs.IntVar(&cfg.PacedRate, "paced-rate", 5000, "total requests/s of the paced keep-alive phase (<0 skips)")
	fs.StringVar(&out, "out", "", "write the result as JSON here (default: stdout)")
	fs.Parse(args)
	ap, err := netip.ParseAddrPort(upstreamAddr)
	if err != nil {
		return fmt.Errorf("--upstream %q: %w", upstreamAddr, err)
	}
	cfg.Target.Upstream = ap
	cfg.Logger = log
	limit, err := loadgen.RaiseFileLimit(1 << 16)
	if err != nil {
		return err
	}
	if cfg.IdleTunnels > 0 && limit < uint64(cfg.IdleTunnels)+1024 {
		log.Warn("open-file limit too low for the idle phase; run as root or raise ulimit -Hn", "limit", limit, "idle", cfg.IdleTunnels)
	}
	res, err := loadgen.Run(ctx, cfg)
	if err != nil {
		return err
	}
	if out == "" {
		return loadgen.WriteTable(os.Stdout, []loadgen.Result{res})
	}
	return loadgen.WriteResult(out, res)
}

func skip(args []string) error {
	fs := flag.NewFlagSet("skip", flag.ExitOnError)
	var r loadgen.Result
	var out string
	fs.StringVar(&r.Name, "name", "", "row label")
	fs.StringVar(&r.Skipped, "reason", "", "why the target was not measured")
	fs.StringVar(&out, "out", "", "result file")
	fs.Parse(args)
	if r.Name == "" || r.Skipped == "" || out == "" {
		return fmt.Errorf("skip needs --name, --reason and --out")
	}
	return loadgen.WriteResult(out, r)
}

func table(args []string) error {
	results, err := loadgen.ReadResults(args)
	if err != nil {
		return err
	}
	return loadgen.WriteTable(os.Stdout, results)
}

func freeport(args []string) error {
	fs := flag.NewFlagSet("freeport", flag.ExitOnError)
	host := fs.String("host", "127.0.0.1", "loopback IP to find a free TCP port on")
	fs.Parse(args)
	ln, err := net.Listen("tcp", net.JoinHostPort(*host, "0"))
	if err != nil {
		return fmt.Errorf("find a free port on %s: %w", *host, err)
	}
	defer ln.Close()
	fmt.Println(ln.Addr().(*net.TCPAddr).Port)
	return nil
}

func relay(ctx context.Context, log *slog.Logger, args []string) error {
	fs := flag.NewFlagSet("relay", flag.ExitOnError)
	var cfg loadgen.RelayConfig
	var to string
	fs.StringVar(&cfg.Listen, "listen", "127.0.0.1:0", "relay address (loopback)")
	fs.StringVar(&to, "to", "", "upstream IP:port every connection is relayed to (loopback)")
	fs.StringVar(&cfg.EnvFile, "env-file", "", "write RELAY_ADDR=ip:port here when ready")
	fs.Parse(args)
	ap, err := netip.ParseAddrPort(to)
	if err != nil {
		return fmt.Errorf("--to %q: %w", to, err)
	}
	cfg.To, cfg.Logger = ap, log
	if _, err := loadgen.RaiseFileLimit(1 << 16); err != nil {
		return err
	}
	return loadgen.Relay(ctx, cfg)
}
