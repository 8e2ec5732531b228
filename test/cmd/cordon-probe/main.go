// Command cordon-probe is the "job" of Cordon's local stack and e2e tests:
// an untrusted program that tries to get data out. Each argument is one
// attempt; each attempt's outcome is one JSON line on stdout (see Result),
// so a test reads what got through and what was stopped.
//
//	cordon-probe [--timeout 3s] [--ca FILE] ATTEMPT...
//
//	http=URL        GET through HTTP_PROXY/HTTPS_PROXY, as a well-behaved job would
//	direct=URL      GET ignoring the proxy variables
//	tcp=HOST:PORT   connect directly (IPv6 as [ADDR]:PORT)
//	udp=HOST:PORT   send a datagram, wait for any reply
//	metadata        direct GETs to the cloud metadata addresses (EC2 IMDS,
//	                the ECS credentials endpoint, the IPv6 IMDS)
//	secret=NAME     print env NAME in several encodings (the scrubber's test)
//	aws-env         report which AWS credential variables the job can see
//	parent-env      the same for its parent's (the shim's) /proc/PPID/environ
//
// It always exits 0 after its attempts (a refused connection is a result,
// not a failure); 2 on a usage error. It is a test tool: never ship it.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"syscall"
	"time"
)

const usage = `usage: cordon-probe [--timeout 3s] [--ca FILE] ATTEMPT...
attempts: http=URL direct=URL tcp=HOST:PORT udp=HOST:PORT metadata secret=NAME aws-env parent-env
each attempt prints one JSON line: {"probe":...,"target":...,"ok":...}
`

func main() {
	var cfg Config
	fs := flag.NewFlagSet("cordon-probe", flag.ContinueOnError)
	fs.Usage = func() { fmt.Fprint(os.Stderr, usage); fs.PrintDefaults() }
	fs.DurationVar(&cfg.Timeout, "timeout", 3*time.Second, "limit for each attempt")
	fs.StringVar(&cfg.CAFile, "ca", "", "PEM file of extra roots to trust for https URLs")
	if err := fs.Parse(os.Args[1:]); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			os.Exit(0)
		}
		os.Exit(2)
	}
	attempts, err := ParseAttempts(fs.Args())
	if err != nil {
		fmt.Fprintf(os.Stderr, "cordon-probe: %v\n", err)
		os.Exit(2)
	}
	cfg.Attempts = attempts
	cfg.Out = os.Stdout
	cfg.Getenv = os.Getenv
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := Run(ctx, cfg); err != nil {
		fmt.Fprintf(os.Stderr, "cordon-probe: %v\n", err)
		os.Exit(2)
	}
}
