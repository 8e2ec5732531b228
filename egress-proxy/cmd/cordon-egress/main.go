// Command cordon-egress is Cordon's egress proxy: `serve` runs it (static
// mode for one job with --listen and --job, gateway mode with --tls-listen),
// `check` validates an allowlist directory without serving.
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"syscall"

	"github.com/cordon-dev/cordon/egress-proxy/proxy"
	"github.com/cordon-dev/cordon/egress-proxy/serve"
	"github.com/cordon-dev/cordon/internal/logbuf"
)

const usage = `usage:
  cordon-egress serve --listen 127.0.0.1:3128 --allowlists DIR --job ORG/JOB
  cordon-egress serve --listen 127.0.0.1:3128 --xds HOST:PORT [--job ORG/JOB] [--gateway HOST:PORT]
  cordon-egress serve --tls-listen 0.0.0.0:3129 --xds HOST:PORT
                      [--dns-server HOST:PORT] [--unsafe-allow-cidr CIDR]...
                      [--metrics ADDR] [--tls-listen ADDR] [--trust-domain TD]
  cordon-egress check --allowlists DIR
`

func main() {
	if len(os.Args) < 2 {
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
	switch os.Args[1] {
	case "serve":
		os.Exit(serveCmd(os.Args[2:]))
	case "check":
		os.Exit(checkCmd(os.Args[2:]))
	default:
		fmt.Fprint(os.Stderr, usage)
		os.Exit(2)
	}
}

type cidrList []netip.Prefix

func (c *cidrList) String() string { return fmt.Sprint(*c) }
func (c *cidrList) Set(s string) error {
	p, err := proxy.ParseUnsafeCIDR(s)
	if err != nil {
		return err
	}
	*c = append(*c, p)
	return nil
}

func serveCmd(args []string) int {
	fs := flag.NewFlagSet("serve", flag.ContinueOnError)
	var cfg serve.Config
	var cidrs cidrList
	fs.StringVar(&cfg.Listen, "listen", "", "plain proxy address (static mode), e.g. 127.0.0.1:3128")
	fs.StringVar(&cfg.TLSListen, "tls-listen", "", "mTLS gateway address (needs SPIFFE_ENDPOINT_SOCKET)")
	fs.StringVar(&cfg.Allowlists, "allowlists", "", "allowlist directory")
	fs.StringVar(&cfg.XDS, "xds", "", "take policies from the control plane at HOST:PORT over xDS (needs SPIFFE_ENDPOINT_SOCKET; excludes --allowlists)")
	fs.StringVar(&cfg.XDSServerID, "xds-server-id", "", "SPIFFE ID the control plane must present (default spiffe://TD/cordon/xds)")
	fs.StringVar(&cfg.Gateway, "gateway", "", "send allowed traffic on through the cordon-egress gateway at HOST:PORT over mTLS (sidecar; needs SPIFFE_ENDPOINT_SOCKET)")
	fs.StringVar(&cfg.GatewayID, "gateway-id", "", "SPIFFE ID the gateway must present (default spiffe://TD/cordon/egress-gateway)")
	fs.StringVar(&cfg.Job, "job", "", "ORG/JOB whose policy --listen enforces (with --xds: default the SVID's job)")
	fs.StringVar(&cfg.DNSServer, "dns-server", "", "resolve through this DNS server (HOST:PORT) instead of the system's")
	fs.DurationVar(&cfg.DNSCacheMaxTTL, "dns-cache-max-ttl", 0, "keep --dns-server answers for their TTL, at most this long (0: no cache)")
	fs.Var(&cidrs, "unsafe-allow-cidr", "treat resolved addresses in CIDR as public (repeatable; tests only)")
	fs.StringVar(&cfg.Metrics, "metrics", "", "serve Prometheus /metrics on ADDR")
	fs.StringVar(&cfg.TrustDomain, "trust-domain", "", "SPIFFE trust domain of gateway peers (default: the gateway's own)")
	fs.Float64Var(&cfg.Limits.RequestsPerSecond, "max-rps", 0, "per-job request rate limit (0: unlimited)")
	fs.IntVar(&cfg.Limits.MaxConcurrent, "max-concurrent", 0, "per-job concurrent requests and tunnels (0: 1024)")
	fs.DurationVar(&cfg.DrainTimeout, "drain-timeout", 0, "graceful shutdown bound (0: 10s)")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	cfg.UnsafeAllowCIDRs = cidrs
	// One JSON line per decision: buffered, or each would be a write(2)
	// (internal/logbuf). Close, deferred, writes what is left on exit.
	logw := logbuf.New(os.Stderr, 0, 0)
	defer logw.Close()
	cfg.Logger = slog.New(slog.NewJSONHandler(logw, nil))
	if err := cfg.Validate(); err != nil {
		fmt.Fprintf(os.Stderr, "cordon-egress serve: %v\n%s", err, usage)
		return 2
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
	defer stop()
	if err := serve.Run(ctx, cfg); err != nil {
		fmt.Fprintf(os.Stderr, "cordon-egress serve: %v\n", err)
		return 1
	}
	return 0
}

func checkCmd(args []string) int {
	fs := flag.NewFlagSet("check", flag.ContinueOnError)
	dir := fs.String("allowlists", "", "allowlist directory")
	if err := fs.Parse(args); err != nil {
		return 2
	}
	if *dir == "" {
		fmt.Fprintf(os.Stderr, "cordon-egress check: --allowlists DIR is required\n%s", usage)
		return 2
	}
	n, err := serve.Check(*dir)
	if err != nil {
		fmt.Fprintf(os.Stderr, "cordon-egress check: %v\n", err)
		return 1
	}
	fmt.Printf("%s: %d job policies OK\n", *dir, n)
	return 0
}
