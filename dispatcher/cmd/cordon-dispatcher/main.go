// Command cordon-dispatcher is the central service sidecars report to and
// the audit store's operator tool: migrate, serve, verify, retention. See
// dispatcher/cli.
package main

import (
	"context"
	"os"
	"os/signal"
	"syscall"

	"github.com/cordon-dev/cordon/dispatcher/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	code := cli.Run(ctx, os.Args[1:], os.Stdout, os.Stderr)
	stop()
	os.Exit(code)
}
