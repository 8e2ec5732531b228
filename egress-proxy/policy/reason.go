package policy

// Reason is the machine-readable cause of a decision. It is sent to the
// client in the X-Cordon-Deny-Reason header, logged, counted in metrics
// (a bounded label) and recorded in audit events. egress-proxy/README.md
// has the table of every code with its HTTP status.
type Reason string

const (
	// ReasonNone means allowed.
	ReasonNone Reason = ""

	// Policy denials (403). Report mode allows these and records them as
	// would_deny, except ReasonMetadata.

	// ReasonNoPolicy: the job has no policy (before the first Apply, or an
	// unknown job). Everything is denied.
	ReasonNoPolicy Reason = "no_policy"
	// ReasonNotAllowed: no rule of the job matches the host and port.
	ReasonNotAllowed Reason = "not_allowed"
	// ReasonIPLiteral: the destination is an IP literal and no cidr rule
	// of the job covers it.
	ReasonIPLiteral Reason = "ip_literal"
	// ReasonNonPublicAddress: the name matched, but one of its resolved
	// addresses is not public and no cidr rule covers it.
	ReasonNonPublicAddress Reason = "non_public_address"
	// ReasonMetadata: the destination is, or resolves to, a cloud metadata
	// address. Never allowed, not even in report mode.
	ReasonMetadata Reason = "metadata_address"
	// ReasonSNIMismatch: the tunnel's TLS ClientHello names another host
	// than the CONNECT target (domain fronting).
	ReasonSNIMismatch Reason = "sni_mismatch"
	// ReasonSNIMissing: a CONNECT to a name whose ClientHello carries no
	// server name.
	ReasonSNIMissing Reason = "sni_missing"
	// ReasonECH: the ClientHello carries Encrypted Client Hello, which
	// hides the real destination from the SNI check.
	ReasonECH Reason = "ech_refused"
	// ReasonNotTLS: a tunnel to port 443 did not start with a TLS
	// ClientHello.
	ReasonNotTLS Reason = "not_tls"

	// Protocol denials (403), never overridden by report mode.

	// ReasonBadRequest: the request is malformed or ambiguous (bad
	// authority, both Content-Length and Transfer-Encoding, obsolete line
	// folding, several Host headers).
	ReasonBadRequest Reason = "bad_request"
	// ReasonHostMismatch: the Host header disagrees with the absolute URI
	// or CONNECT target.
	ReasonHostMismatch Reason = "host_mismatch"
	// ReasonOriginForm: the request is in origin form ("GET /path"): the
	// proxy is not an origin server.
	ReasonOriginForm Reason = "origin_form"
	// ReasonBadScheme: an absolute URI with a scheme other than http (use
	// CONNECT for https).
	ReasonBadScheme Reason = "bad_scheme"
	// ReasonProxyLoop: the destination is the proxy itself.
	ReasonProxyLoop Reason = "proxy_loop"
	// ReasonClientHelloTimeout: the ClientHello did not arrive in time on
	// a tunnel that needs one.
	ReasonClientHelloTimeout Reason = "client_hello_timeout"
	// ReasonBadIdentity: a gateway peer's SVID is not
	// spiffe://TD/org/ORG/job/JOB of the configured trust domain.
	ReasonBadIdentity Reason = "bad_identity"
	// ReasonBadClientHello: the first bytes claim TLS but do not parse as
	// a ClientHello.
	ReasonBadClientHello Reason = "bad_client_hello"

	// Limits (429).

	// ReasonRateLimited: the job's request rate limit is exhausted.
	ReasonRateLimited Reason = "rate_limited"
	// ReasonTooManyConnections: the job has too many requests and tunnels
	// open.
	ReasonTooManyConnections Reason = "too_many_connections"
	// ReasonHeaderTooLarge: the request head exceeds the size limit (431
	// would be RFC-correct; 429 marks it as a limit as the contract asks).
	ReasonHeaderTooLarge Reason = "header_too_large"

	// Upstream failures.

	// ReasonDNSFailure: resolving the destination failed or returned no
	// address (502).
	ReasonDNSFailure Reason = "dns_failure"
	// ReasonDialTimeout: connecting to the destination timed out (504).
	ReasonDialTimeout Reason = "dial_timeout"
	// ReasonDialFailed: the destination refused or was unreachable (502).
	ReasonDialFailed Reason = "dial_failed"
	// ReasonUpstreamError: the destination failed mid-request (502).
	ReasonUpstreamError Reason = "upstream_error"
	// ReasonGatewayUnreachable: the sidecar could not connect to the
	// cordon-egress gateway, or the mTLS handshake failed (502).
	ReasonGatewayUnreachable Reason = "gateway_unreachable"
	// ReasonGatewayError: the gateway answered something the sidecar
	// cannot use (no or an unknown reason code, a broken response) (502).
	ReasonGatewayError Reason = "gateway_error"
)

// Known reports whether r is one of Reasons (a reason code read from a
// gateway's answer is trusted only then: metric labels stay bounded).
func (r Reason) Known() bool {
	for _, k := range Reasons {
		if r == k {
			return true
		}
	}
	return false
}

// Overridable reports whether report mode turns this denial into an allow
// (recorded as would_deny). Metadata addresses, malformed or ambiguous
// requests, loops and limits are never overridden.
func (r Reason) Overridable() bool {
	switch r {
	case ReasonNotAllowed, ReasonIPLiteral, ReasonNonPublicAddress,
		ReasonSNIMismatch, ReasonSNIMissing, ReasonECH, ReasonNotTLS:
		return true
	}
	return false
}

// Reasons lists every reason code, for documentation tests and metrics.
var Reasons = []Reason{
	ReasonNoPolicy, ReasonNotAllowed, ReasonIPLiteral, ReasonNonPublicAddress,
	ReasonMetadata, ReasonSNIMismatch, ReasonSNIMissing, ReasonECH, ReasonNotTLS,
	ReasonBadRequest, ReasonHostMismatch, ReasonOriginForm, ReasonBadScheme,
	ReasonProxyLoop, ReasonClientHelloTimeout, ReasonBadIdentity, ReasonBadClientHello,
	ReasonRateLimited, ReasonTooManyConnections, ReasonHeaderTooLarge,
	ReasonDNSFailure, ReasonDialTimeout, ReasonDialFailed, ReasonUpstreamError,
	ReasonGatewayUnreachable, ReasonGatewayError,
}
