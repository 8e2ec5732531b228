// Command fake-internet is the "internet" of Cordon's local stack and e2e
// tests: an HTTP and HTTPS origin that records every request it receives as
// one JSON line on stdout (so a test can see exactly what left the
// sandbox), a UDP echo port, and a DNS server for the names it plays. It
// listens on every address because it runs in its own container on the
// stack's "outside" network; never run it anywhere but a test network.
//
//	fake-internet --name api.example.test=172.30.0.10 --ca-out /out/ca.pem
//
// main only parses flags; the servers are in server.go.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"log/slog"
	"net/netip"
	"os"
	"os/signal"
	"strings"
	"syscall"
)

// names collects repeated --name NAME=IPv4 flags.
type names map[string]netip.Addr

func (n names) String() string { return fmt.Sprint(map[string]netip.Addr(n)) }

func (n names) Set(s string) error {
	name, addr, ok := strings.Cut(s, "=")
	if !ok || name == "" {
		return fmt.Errorf("want NAME=IPv4, got %q", s)
	}
	ip, err := netip.ParseAddr(addr)
	if err != nil || !ip.Is4() {
		return fmt.Errorf("want NAME=IPv4, %q is not an IPv4 address", addr)
	}
	n[canonicalName(name)] = ip
	return nil
}

func main() {
	cfg := Config{Names: names{}}
	fs := flag.NewFlagSet("fake-internet", flag.ContinueOnError)
	fs.StringVar(&cfg.HTTPAddr, "http", ":8080", "plain HTTP listen address (empty: off)")
	fs.StringVar(&cfg.HTTPSAddr, "https", ":8443", "HTTPS listen address (empty: off)")
	fs.StringVar(&cfg.UDPEchoAddr, "udp-echo", ":9999", "UDP echo listen address (empty: off)")
	fs.StringVar(&cfg.DNSAddr, "dns", "", "DNS listen address, UDP and TCP (empty: off)")
	fs.Var(names(cfg.Names), "name", "NAME=IPv4 the DNS server answers and the TLS certificate covers (repeatable)")
	fs.StringVar(&cfg.CAOut, "ca-out", "", "write the self-signed HTTPS certificate (PEM) here for clients to trust")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		os.Exit(2)
	}
	if fs.NArg() > 0 {
		fmt.Fprintf(os.Stderr, "fake-internet: unexpected arguments %q\n", fs.Args())
		os.Exit(2)
	}
	cfg.Logger = slog.New(slog.NewJSONHandler(os.Stderr, nil))
	cfg.Out = os.Stdout
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := Run(ctx, cfg); err != nil {
		fmt.Fprintf(os.Stderr, "fake-internet: %v\n", err)
		os.Exit(1)
	}
}
