package proxy

import (
	"crypto/tls"

	"github.com/cordon-dev/cordon/internal/mtls"
	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// GatewayTLSConfig is the mTLS server config for ServeTLS: the gateway
// presents its own SVID, requires a client SVID that chains to td's bundle
// and is a member of td (any ID: ServeTLS then maps it to a job), TLS 1.3
// only (DESIGN.md: every Cordon connection is mTLS 1.3).
func GatewayTLSConfig(svid x509svid.Source, bundle x509bundle.Source, td spiffeid.TrustDomain) *tls.Config {
	return mtls.ServerConfig(svid, bundle, td)
}
