// Command cordon-dev-issuer runs the test OIDC issuer of test/jwks on
// loopback for the demo: it prints the issuer URL and a token per role,
// serves discovery, the JWKS and /mint until interrupted. Never run it
// anywhere but a developer's machine: it signs whatever it is asked to.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"strings"
	"syscall"

	"github.com/cordon-dev/cordon/test/jwks"
)

func main() {
	addr := flag.String("listen", "127.0.0.1:0", "loopback address to serve on")
	org := flag.String("org", "acme", "org of the printed tokens (empty: print none)")
	roles := flag.String("roles", "reader,writer,admin", "comma-separated roles to print a token for")
	flag.Parse()
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := jwks.Serve(ctx, jwks.ServeConfig{Addr: *addr, Org: *org, Roles: strings.Split(*roles, ","), Out: os.Stdout}); err != nil {
		fmt.Fprintln(os.Stderr, "cordon-dev-issuer:", err)
		os.Exit(1)
	}
}
