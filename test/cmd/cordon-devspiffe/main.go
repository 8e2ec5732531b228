// Command cordon-devspiffe is the development SPIFFE identity provider: it
// serves the Workload API from an in-memory CA over unix sockets, one
// identity per socket, with short-lived, rotating SVIDs. make demo and the
// e2e tests run it where SPIRE is absent. Never run it in production.
//
//	cordon-devspiffe --trust-domain cordon.test \
//	  --serve /run/spire/job.sock=spiffe://cordon.test/org/acme/job/block_follower \
//	  --bundle-out /run/spire/bundle.pem
package main

import (
	"context"
	"flag"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/cordon-dev/cordon/test/spiffedev"
)

type endpoints []spiffedev.Endpoint

func (e *endpoints) String() string { return fmt.Sprint(*e) }
func (e *endpoints) Set(s string) error {
	ep, err := spiffedev.ParseEndpoint(s)
	if err != nil {
		return err
	}
	*e = append(*e, ep)
	return nil
}

func main() {
	var cfg spiffedev.DevConfig
	var eps endpoints
	flag.StringVar(&cfg.TrustDomain, "trust-domain", "cordon.test", "trust domain of the dev CA")
	flag.Var(&eps, "serve", "SOCKET=SPIFFE_ID to serve (repeatable)")
	flag.DurationVar(&cfg.TTL, "ttl", 0, "SVID lifetime (default 2m; rotated at half)")
	flag.StringVar(&cfg.BundleOut, "bundle-out", "", "write the CA certificate (PEM) here")
	flag.Parse()
	if flag.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "cordon-devspiffe: unexpected arguments %s\n", strings.Join(flag.Args(), " "))
		os.Exit(2)
	}
	cfg.Endpoints = eps
	cfg.Logger = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := spiffedev.RunDev(ctx, cfg); err != nil {
		fmt.Fprintf(os.Stderr, "cordon-devspiffe: %v\n", err)
		os.Exit(1)
	}
}
