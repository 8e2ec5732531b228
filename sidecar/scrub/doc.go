// Package scrub redacts secrets from a job's output while it streams.
//
// It is for the stdout and stderr of an untrusted job: `cordon-sidecar run`
// puts one Writer between each stream and the container log, so that
// "all log outputs are scrubbed for secret patterns before persistence"
// (seeds/000). It is a safety net against accidental disclosure, not an
// access control: it cannot stop a job that wants to exfiltrate a secret
// (see "What it cannot catch"). It is not for structured logs the platform
// writes itself (those must not contain secrets in the first place).
//
// # What is redacted
//
// Every injected secret value (Config.Secrets) in each of these printed
// forms:
//   - the value itself, with surrounding whitespace trimmed, and for
//     multi-line values (a PEM key, a JSON credentials file) with \n and with
//     \r\n line endings, and each line of 6 bytes or more on its own (so a
//     logger that prefixes every line does not defeat it);
//   - hex, lower and upper case;
//   - base64, standard and URL alphabets, padded and unpadded, including
//     inside a longer base64 string at any of the three byte alignments:
//     the characters that depend only on the secret's bytes are matched, so
//     the one or two characters at each edge that mix in neighbouring bytes
//     may remain (they carry at most 4 bits of the secret each); and for
//     values over 48 bytes, base64 wrapped at 64 or 76 columns (openssl
//     base64, base64(1)) when the value starts the encoded data;
//   - URL query escaping (url.QueryEscape) and path escaping (url.PathEscape),
//     with upper- and lower-case percent escapes, and the escaping of
//     JavaScript's encodeURIComponent and Python's quote and quote_plus;
//   - JSON string escaping as Go's encoding/json writes it (with and without
//     HTML escaping of <>&), as an ASCII-only encoder writes it (Python's
//     json.dumps: \uXXXX for non-ASCII, upper- or lower-case hex), with '/'
//     escaped as PHP's json_encode does, Go's %q quoting and bash's
//     printf %q quoting;
//   - hex dumps of the value (when it starts the dumped data): the rows of
//     xxd, xxd -p, xxd -g1, od -tx1 and hexdump -C, including their
//     ASCII columns, except a final row of fewer than 4 bytes.
//
// A match is replaced by "[REDACTED:NAME]" where NAME is the secret's name
// (or by Config.Marker). The name is not secret — it is the env var the job
// reads and it is recorded in audit events — and it tells whoever reads the
// log which secret the job printed. New refuses a configuration in which a
// secret form occurs inside a marker.
//
// Rules (unless Config.DisableRules) catch well-known credentials that were
// not injected by Cordon, keeping a recognisable prefix and replacing the
// rest with "***REDACTED***", as seeds/002 shows:
//
//	{"api_key": "sk_live_abc123xyz"}  ->  {"api_key": "sk_live_***REDACTED***"}
//
// The rules:
//
//   - AWS access key IDs (AKIA, ASIA, AGPA, AIDA, AROA, AIPA, ANPA, ANVA,
//     ABIA, ACCA followed by 16 of [A-Z0-9]);
//   - GitHub tokens (ghp_, gho_, ghu_, ghs_, ghr_, github_pat_), Stripe keys
//     (sk_live_, sk_test_, rk_live_, rk_test_, whsec_), Slack tokens (xoxb-,
//     xoxp-, xoxa-, xoxr-, xoxs-, xoxe-, xapp-) and webhook URLs
//     (hooks.slack.com/...), and "Bearer <token>";
//   - JWTs (eyJ<header>.eyJ<payload>.<signature>, header at most 4 KiB);
//   - passwords in URLs (scheme://user:password@host: the password, up to
//     256 bytes of userinfo);
//   - PEM private key blocks: everything between the "-----BEGIN ...PRIVATE
//     KEY-----" line and "-----END" (at most 1 MiB);
//   - key-context values: a key ending in password, passwd, secret, token,
//     api_key, private_key, secret_key, access_key, secret_access_key,
//     client_secret or authorization (any case, _ - or camelCase), then
//     optional quotes and spaces, ':' or '=', then the value — quoted (up to
//     the closing quote, honouring \" escapes) or bare (up to whitespace or
//     one of ,;&"'`})] ). This covers password=..., "token": "...",
//     DB_PASSWORD='...', AWS secret keys (aws_secret_access_key = ...) and
//     Authorization: Bearer/Basic/Token ... (the scheme stays in clear).
//
// Emails (unless Config.DisableEmailMask) are masked as seeds/002 asks for
// SENSITIVE data ("Masked (user***@example.com)"): the first 4 bytes of the
// local part are kept, the rest becomes "***", the domain is kept:
// user@example.com -> user***@example.com, alice.smith@example.org ->
// alic***@example.org. A local part of 4 bytes or fewer is kept whole (the
// domain and a 4-byte prefix identify little; masking more would make logs
// useless for support). Only address-like text is masked: a local part of
// 1–64 bytes of [A-Za-z0-9._%+-] and a domain of at least two labels whose
// last is 2+ letters (so pkg@1.2.3 and @mentions are left alone).
//
// # Short secrets
//
// Values shorter than MinSecretLen (6 bytes) are refused by New with a
// *ShortSecretError naming the secret (never its value): a value like "1",
// "abc" or "true" occurs everywhere in ordinary output, so it can be
// neither redacted without destroying the log nor left in it silently.
// With Config.IgnoreShortSecrets such values are accepted and not redacted,
// and Scrubber.Unscrubbed lists their names so the caller can say so.
//
// # Streaming and the hold-back guarantee
//
// All secret forms and the rules' trigger texts are compiled into one
// Aho–Corasick automaton. A Writer holds back only the bytes that may still
// become part of a redaction: the longest suffix of the output that is a
// prefix of some pattern that a further byte could extend, the candidate
// of a rule still being checked (at most 4 KiB, for a JWT header), and up
// to 60 bytes of a possible email local part (so the tail of a word that
// ends a write, past its first 4 bytes, waits for the next byte; a newline,
// space or most punctuation releases it). Everything before that is written
// to the destination before Write returns, so output is never delayed by a
// pause in the job; it is not line-buffered (a megabyte line without
// newlines streams through). A secret split across writes is redacted
// whatever the pauses between them, and held bytes are scrubbed and
// written by Close. Redactions are the union of all matches, so overlapping
// secrets leave no part of either in clear; which marker a merged
// redaction gets may depend on write timing, what is redacted does not.
//
// ANSI escape sequences around a secret (colour codes) do not stop its
// redaction; an escape sequence inside a secret's bytes does (see below).
//
// # What it cannot catch
//
//   - A job that transforms a secret before printing it: encrypts, hashes,
//     compresses, reverses, splits it ("abc" ... "def"), prints one
//     character per line, interleaves escape sequences or other bytes
//     inside it, encodes it twice, or uses an encoding not listed above
//     (base32, base64 wrapped at other widths or starting mid-data,
//     URL-escaping of the base64, mixed-case hex, UTF-16, ...). Scrubbing
//     is a safety net for honest jobs; a hostile job is stopped by the
//     egress policy, not here.
//   - A secret written somewhere other than stdout/stderr (files, network).
//   - Rule matches beyond their bounds (a JWT header over 4 KiB, more than
//     16 rule candidates open at the same time: the excess are not checked),
//     credentials without a known prefix or key context, key names not in
//     the list above, and values given as command-line flags
//     ("--password hunter2": no ':' or '=').
//   - The last bits at the edges of a base64 encoding, as noted above.
package scrub
