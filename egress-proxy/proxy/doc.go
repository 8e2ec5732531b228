// Package proxy is Cordon's egress proxy server: a default-deny forward
// proxy for plain HTTP (absolute URIs) and CONNECT tunnels that enforces one
// job's allowlist policy (sidecar, static mode) or each mTLS peer's job
// policy (gateway mode), per DESIGN.md "Egress policy semantics".
//
// For every request it parses the destination strictly
// (egress-proxy/authority), matches it against the job's compiled policy
// (egress-proxy/policy), resolves the name once and classifies every answer
// (egress-proxy/addrclass), then dials exactly an address it checked: the
// dialer never resolves, so DNS rebinding cannot reach an internal address.
// Tunnels hold the client's first bytes until a TLS ClientHello's SNI
// matches the CONNECT host (egress-proxy/sni), then splice between the raw
// TCP connections.
//
// The server reads requests itself instead of running net/http.Server:
// net/http deletes the Host header before any handler sees it, and the
// proxy must refuse a Host header that disagrees with the URI, and must own
// the raw connection for the splice path. Message heads are parsed and
// written by egress-proxy/h1 (strict, no allocation, fields forwarded in
// the client's order and spelling; never more lenient than net/http, which
// FuzzRequestAgreesWithNetHTTP checks). Plain HTTP goes upstream over a
// per-job keep-alive pool keyed by the checked address (a request reuses a
// connection only if its own check produced that address), written and
// read on the request's goroutine; redirects are passed back, never
// followed.
//
// Every decision writes exactly one log line (msg "egress decision", keys
// job, decision, reason, host, port, addr, method, bytes, duration), one
// audit event and one metric increment. decision is allow, deny,
// would_deny (report mode) or error (allowed, but DNS or the upstream
// failed). Request headers, paths and bodies are never logged.
//
// Responses the proxy generates carry X-Cordon-Deny-Reason with a
// policy.Reason code: 403 for policy and protocol denials, 429 for limits,
// 502 for DNS and upstream failures, 504 for dial timeouts. Report mode
// allows what policy.Reason.Overridable says and records would_deny; a
// metadata address, a malformed request, a loop to the proxy itself and
// the limits are denied in report mode too. A denied tunnel (SNI mismatch,
// not TLS on 443) has already been answered 200, so it is closed instead.
//
// With Config.Gateway (a sidecar on Fargate) the proxy checks the policy
// and then sends what it allowed on through the cordon-egress gateway over
// mTLS, which checks again and is the only hop that resolves and dials
// (GatewayUpstream).
//
// It is not the allowlist parser (internal/allowlist), the policy
// distribution (egress-proxy/xdsclient) or the usage reporter (sidecar/).
package proxy
