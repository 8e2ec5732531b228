// Package allowlist parses and validates the security team's egress allowlist
// files (DESIGN.md, "Allowlist files") and resolves them into per-job policies.
//
// It is the one definition of the file format: the egress proxy compiles a
// JobPolicy into its matcher, and the control plane (xds/) lints, diffs and
// translates the same model into Envoy resources. It does not match requests
// or resolve names; that is egress-proxy/policy's job. CanonicalHost is
// shared with the proxy so that a file's hosts and a request's host are
// compared in one spelling.
package allowlist
