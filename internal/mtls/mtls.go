// Package mtls is the one definition of the TLS between Cordon's
// components (DESIGN.md: "All connections between Cordon's components use
// mTLS with SVIDs, TLS 1.3 only"): both sides present an X.509-SVID,
// verify the other's against the trust bundle, and speak TLS 1.3 or
// nothing. Every client and server configuration in the project is built
// here, so the rule cannot be forgotten by one of them.
//
// It does not fetch SVIDs (a *workloadapi.X509Source, or test/spiffedev,
// is both sources) and does not decide what an authenticated peer may do.
package mtls

import (
	"crypto/tls"

	"github.com/spiffe/go-spiffe/v2/bundle/x509bundle"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/spiffetls/tlsconfig"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// ClientConfig presents svid's SVID and accepts only a server presenting
// exactly server.
func ClientConfig(svid x509svid.Source, bundle x509bundle.Source, server spiffeid.ID) *tls.Config {
	c := tlsconfig.MTLSClientConfig(svid, bundle, tlsconfig.AuthorizeID(server))
	c.MinVersion = tls.VersionTLS13
	return c
}

// ServerConfig presents svid's SVID and requires a client SVID of trust
// domain td (which one, the server decides per request).
func ServerConfig(svid x509svid.Source, bundle x509bundle.Source, td spiffeid.TrustDomain) *tls.Config {
	c := tlsconfig.MTLSServerConfig(svid, bundle, tlsconfig.AuthorizeMemberOf(td))
	c.MinVersion = tls.VersionTLS13
	return c
}
