package jwks

import (
	"context"
	"fmt"
	"io"
	"strings"
)

// ServeConfig configures Serve.
type ServeConfig struct {
	// Addr is the loopback address to listen on. If empty, 127.0.0.1:0.
	Addr string
	// Org and Roles choose the tokens printed at start: one per
	// role for subject "<role>-user". If Org is empty, none are printed.
	Org   string
	Roles []string
	// Out receives the issuer URL and the tokens. Required.
	Out io.Writer
}

// Serve runs an issuer until ctx ends, printing its URL, JWKS URL and a
// token per role, for the demo (point the dispatcher's OIDC issuer at the
// printed URL and audience DefaultAudience).
func Serve(ctx context.Context, cfg ServeConfig) error {
	if cfg.Addr == "" {
		cfg.Addr = "127.0.0.1:0"
	}
	is, err := NewOn(cfg.Addr)
	if err != nil {
		return err
	}
	defer is.Close()
	fmt.Fprintf(cfg.Out, "issuer   %s\njwks     %s\naudience %s\nmint     %s/mint?sub=SUB&org=ORG&role=ROLE\n",
		is.URL(), is.JWKSURL(), DefaultAudience, is.URL())
	if cfg.Org != "" {
		for _, role := range cfg.Roles {
			role = strings.TrimSpace(role)
			tok, err := is.Mint(is.Claims(role+"-user", cfg.Org, role), MintOptions{})
			if err != nil {
				return err
			}
			fmt.Fprintf(cfg.Out, "token %s %s\n", role, tok)
		}
	}
	<-ctx.Done()
	return nil
}
