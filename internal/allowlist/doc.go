// Package allowlist parses and validates the security team's egress allowlist
// files (DESIGN.md, "Allowlist files") and resolves them into per-job policies.
//
// It is the one definition of the file format: the egress proxy compiles a
// JobPolicy into its matcher, and the control plane (xds/) lints, diffs and
// translates the same model into Envoy resources. It does not match requests,
// resolve names or classify addresses; that is the proxy's job. CanonicalHost
// is shared with the proxy so that a file's hosts and a request's host are
// compared in one spelling.
//
// # Why the files are strict
//
// The seeds set the rules this package enforces: "Allowlisted endpoints
// only", "User jobs cannot make arbitrary outbound HTTP calls", and "Changes
// require review/approval; allowlist is IaC-managed; no ad-hoc outbound
// endpoints". A reviewer approves what the file says, so the file must mean
// exactly what it reads: anything the parser would have to guess about is
// an error, reported with FILE:LINE:COL and what to write instead. Parse and
// LoadDir report every problem at once (an ErrorList), so one CI run shows a
// pull request's whole list.
//
// # Format (version 1)
//
// One YAML file per org (deploy/allowlists/*.yaml), one YAML document per
// file. deploy/allowlists/allowlist.schema.json is the same format as a JSON
// Schema for editors; a test keeps its field names equal to the parser's.
//
//	version: 1                  # required; only 1 exists
//	org: acme                   # required; one org per file, no org in two files
//	endpoint_sets:              # named destination groups
//	  monad_rpc:
//	    platform_only: true     # user-class jobs may not allow it (default false)
//	    entries:                # required, at least one
//	      - host: rpc.monad.example   # exactly one of host and cidr
//	        ports: [443, 8545]        # required, 1..65535, no duplicates
//	      - cidr: 10.20.0.0/16
//	        ports: [5432]
//	webhooks:                   # pre-approved webhook URLs
//	  - https://hooks.slack.com/services/T0/B0/
//	jobs:
//	  block_follower:
//	    class: platform         # required: platform | user
//	    mode: enforce           # enforce (default) | report
//	    allow: [monad_rpc]      # endpoint set names (default none)
//	    webhooks: true          # may reach the webhooks (default false)
//
// # Rules, and why
//
// Structure. Unknown fields, duplicate keys, wrong types and missing
// required fields are errors, never ignored: a misspelt "platfrom_only"
// would otherwise silently hand RPC to user jobs. Integers are plain
// decimal (no 0x1bb); booleans are true/false. Org, job and endpoint set
// names are lowercase slugs (1 to 63 of a-z, 0-9, '-', '_', starting and
// ending with a letter or digit), which are valid SPIFFE ID path segments:
// a job's identity is spiffe://TD/org/ORG/job/JOB.
//
// Hostile YAML. Anchors, aliases and merge keys are refused: they are how a
// small file expands into gigabytes ("billion laughs"), and a value defined
// far from its use is one a reviewer does not read. Explicit tags, files
// over MaxFileSize (1 MiB), files that are not UTF-8 or hold a NUL byte, and
// files with a second YAML document are refused too.
//
// Hosts. A host is written in its canonical form, lowercase punycode without
// a trailing dot, as CanonicalHost returns it; "RPC.Example", "bücher.de"
// and "rpc.example." are errors that name the spelling to write, rather than
// being normalised, so the reviewed text and the enforced policy are the
// same string. "*." is allowed only as the whole first label and matches any
// depth of subdomain, never the apex. An IP literal in any spelling
// ("10.0.0.1", "2130706433", "0x7f.1", "[::1]") is refused in host: use a
// cidr entry, which is the only way to allow an address.
//
// Public suffixes. A wildcard over a public suffix of the Public Suffix
// List's ICANN section ("*.com", "*.co.uk", "*.uk"), or over a bare
// top-level label not on the list ("*.example", "*.internal"), is an error:
// it allows names anyone can register. A wildcard over a suffix of the
// list's private section, where a service hands out names to its customers
// ("*.s3.us-east-1.amazonaws.com", "*.github.io"), is allowed, because
// DESIGN.md's own example uses one for S3, but File.Warnings and
// Set.Warnings report it: any bucket on that suffix, an attacker's
// included, is reachable, which is an exfiltration route. cordon-xds lint
// prints warnings without failing; prefer the VPC endpoint's own name, as
// deploy/allowlists/acme.yaml does.
//
// CIDRs. A cidr is parsed with net/netip and must be masked ("10.20.0.1/16"
// is an error suggesting "10.20.0.0/16"); an IPv4-mapped IPv6 prefix is
// stored as its IPv4 prefix. A cidr that covers a cloud metadata address
// (169.254.169.254, 169.254.170.2, fd00:ec2::254) or an IPv6 form that
// embeds one (mapped, compatible, NAT64 64:ff9b::/96 and 64:ff9b:1::/48,
// 6to4, Teredo) is an error, so 0.0.0.0/0, ::/0, 169.254.0.0/16 and
// 2000::/3 are refused: metadata serves the task role's credentials, and no
// job may reach it.
//
// Jobs. Every allow names a defined endpoint set, once. A user-class job may
// not allow a platform_only set (seeds: user jobs "query platform storage
// only, no raw RPC access"). webhooks: true needs at least one webhook in
// the file. mode defaults to enforce; report allows every destination and
// records would-deny, and Warnings points it out.
//
// Webhooks. A webhook is an https URL (seeds: "TLS required") with a
// canonical DNS host, an optional port (default 443) and a path that is a
// prefix; userinfo, query, fragment, backslashes and dot or encoded-slash
// path segments are errors. Messages about userinfo never repeat the URL,
// which may hold a credential. List a path prefix rather than a full Slack
// URL, whose last segment is a secret.
//
// # Resolution
//
// Set.Policy and Set.Policies resolve a job into a self-contained JobPolicy:
// its endpoint sets' entries in allow order (Source "endpoint_set:NAME"),
// then, when webhooks is true, each webhook's host and port (Source
// "webhook:URL"). Ports are sorted ascending. Lookups of an unknown org or
// job fail with errors that match ErrUnknownOrg / ErrUnknownJob.
package allowlist
