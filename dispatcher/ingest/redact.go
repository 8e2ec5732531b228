package ingest

import (
	"regexp"
	"strings"
	"unicode/utf8"
)

// Redacted replaces every secret-looking value before it is stored.
const Redacted = "[REDACTED]"

// secretKeyParts are substrings of (lowercased) metadata keys whose values
// are secrets whatever they look like. Over-matching (token_count) costs a
// value; under-matching costs a leak.
var secretKeyParts = []string{
	"pass", "secret", "token", "apikey", "api_key", "api-key", "authoriz", "authoris",
	"credential", "privatekey", "private_key", "private-key", "cookie", "sessionid",
	"session_id", "session-id", "session_key", "accesskey", "access_key", "access-key",
	"signature", "x-amz-security",
}

func isSecretKey(k string) bool {
	k = strings.ToLower(k) // no allocation when k is already lowercase
	for _, p := range secretKeyParts {
		if strings.Contains(k, p) {
			return true
		}
	}
	return false
}

// secretPattern is a value that is a secret wherever it appears. hint is a
// cheap test every match passes, so most strings skip the regexp.
type secretPattern struct {
	hint func(s string) bool
	re   *regexp.Regexp
}

func has(sub string) func(string) bool {
	return func(s string) bool { return strings.Contains(s, sub) }
}

func hasFold(sub string) func(string) bool {
	return func(s string) bool {
		for i := 0; i+len(sub) <= len(s); i++ {
			if strings.EqualFold(s[i:i+len(sub)], sub) {
				return true
			}
		}
		return false
	}
}

var secretPatterns = []secretPattern{
	// AWS access key IDs all start with A and hold 20 uppercase characters.
	{has("A"), regexp.MustCompile(`\b(AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b`)},
	{has("eyJ"), regexp.MustCompile(`eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*`)}, // JWT
	{has("PRIVATE KEY"), regexp.MustCompile(`-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?s:.*?)(-----END [A-Z0-9 ]*PRIVATE KEY-----|$)`)},
	{has("_"), regexp.MustCompile(`\bgh[pousr]_[A-Za-z0-9]{30,}\b|\bgithub_pat_[A-Za-z0-9_]{22,}`)}, // GitHub
	{has("xox"), regexp.MustCompile(`\bxox[abposr]-[A-Za-z0-9-]{10,}`)},                             // Slack
	{has("k_"), regexp.MustCompile(`\b[sr]k_(live|test)_[A-Za-z0-9]{16,}`)},                         // Stripe
	{has("AIza"), regexp.MustCompile(`\bAIza[0-9A-Za-z_-]{35}\b`)},                                  // Google API key
	{func(s string) bool { return hasFold("bearer")(s) || hasFold("basic")(s) }, regexp.MustCompile(`(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}`)},
	{hasFold("secret_access_key"), regexp.MustCompile(`(?i)(aws_secret_access_key|secret_access_key)\s*[=:]\s*\S+`)},
}

// urlUserinfo matches the credentials of scheme://user:pass@host.
var urlUserinfo = regexp.MustCompile(`(?i)\b([a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@`)

// RedactString replaces secret-looking substrings of s and reports how many
// it replaced.
func RedactString(s string) (string, int) {
	n := 0
	for _, p := range secretPatterns {
		if p.hint(s) && p.re.MatchString(s) {
			s = p.re.ReplaceAllStringFunc(s, func(string) string { n++; return Redacted })
		}
	}
	if strings.Contains(s, "://") && strings.Contains(s, "@") && urlUserinfo.MatchString(s) {
		s = urlUserinfo.ReplaceAllStringFunc(s, func(m string) string {
			n++
			return urlUserinfo.ReplaceAllString(m, "${1}"+Redacted+"@")
		})
	}
	return s, n
}

// Literals every secret pattern, secret key or URL credential contains:
// metadata text holding none of them (and no escape sequence) has nothing
// to redact. secretHints are matched as they are; foldHints (lowercase)
// in any ASCII case.
var (
	secretHints = []string{
		"AKIA", "ASIA", "AGPA", "AIDA", "AROA", "ANPA", "ANVA", "AIPA",
		"eyJ", "PRIVATE KEY", "ghp_", "gho_", "ghu_", "ghs_", "ghr_",
		"github_pat_", "xox", "k_live_", "k_test_", "AIza", "://",
	}
	foldHints = append([]string{"bearer", "basic", "secret_access_key"}, secretKeyParts...)
)

// hint is one literal of secretHints or foldHints.
type hint struct {
	s    string
	fold bool
}

// hintsAt lists, by byte, the hints that can start with it, so that
// mayHoldSecret reads the text once instead of once per hint; pairAt marks
// the first two bytes of every hint (in lowercase ASCII), so that most
// positions are passed over without looking at any hint.
var hintsAt, pairAt = func() (t [utf8.RuneSelf][]hint, pairs [utf8.RuneSelf][utf8.RuneSelf]bool) {
	for _, h := range secretHints {
		t[h[0]] = append(t[h[0]], hint{h, false})
		pairs[lowerASCII(h[0])][lowerASCII(h[1])] = true
	}
	for _, h := range foldHints {
		lo, up := h[0], h[0]
		if 'a' <= lo && lo <= 'z' {
			up = lo - 'a' + 'A'
		}
		t[lo] = append(t[lo], hint{h, true})
		if up != lo {
			t[up] = append(t[up], hint{h, true})
		}
		pairs[h[0]][h[1]] = true
	}
	return t, pairs
}()

func lowerASCII(c byte) byte {
	if 'A' <= c && c <= 'Z' {
		return c + 'a' - 'A'
	}
	return c
}

// mayHoldSecret reports whether RedactMetadata could change the JSON object
// raw, which must hold no escape sequence. Any non-ASCII byte answers yes:
// Unicode case folding maps a few non-ASCII letters onto ASCII ones (the
// Kelvin sign onto k, the long s onto s), which the ASCII comparison here
// would miss and the redaction's lowercasing and (?i) patterns would not.
func mayHoldSecret(raw []byte) bool {
	for i, c := range raw {
		if c >= utf8.RuneSelf {
			return true
		}
		// Every hint is at least two bytes long.
		if i+1 == len(raw) || raw[i+1] >= utf8.RuneSelf || !pairAt[lowerASCII(c)][lowerASCII(raw[i+1])] {
			continue
		}
		for _, h := range hintsAt[c] {
			if len(raw)-i < len(h.s) {
				continue
			}
			if h.fold && hasPrefixFoldASCII(raw[i:], h.s) || !h.fold && string(raw[i:i+len(h.s)]) == h.s {
				return true
			}
		}
	}
	return false
}

// hasPrefixFoldASCII reports whether b starts with lower (lowercase ASCII)
// in any ASCII case.
func hasPrefixFoldASCII(b []byte, lower string) bool {
	for j := 0; j < len(lower); j++ {
		if lowerASCII(b[j]) != lower[j] {
			return false
		}
	}
	return true
}

// RedactMetadata returns a copy of m with the values of secret-named keys
// and secret-looking strings replaced, and the number of replacements.
func RedactMetadata(m map[string]any) (map[string]any, int) {
	if m == nil {
		return nil, 0
	}
	v, n := redactValue(m)
	return v.(map[string]any), n
}

func redactValue(v any) (any, int) {
	switch x := v.(type) {
	case string:
		return RedactString(x)
	case map[string]any:
		out := make(map[string]any, len(x))
		total := 0
		for k, val := range x {
			if isSecretKey(k) {
				if val != nil && val != Redacted {
					out[k] = Redacted
					total++
				} else {
					out[k] = nil
				}
				continue
			}
			r, n := redactValue(val)
			out[k] = r
			total += n
		}
		return out, total
	case []any:
		out := make([]any, len(x))
		total := 0
		for i, val := range x {
			r, n := redactValue(val)
			out[i] = r
			total += n
		}
		return out, total
	default:
		return v, 0
	}
}

var emailRE = regexp.MustCompile(`([A-Za-z0-9._%+-]{1,64})@([A-Za-z0-9.-]+\.[A-Za-z]{2,})`)

// MaskEmails masks the local part of every email address in s, keeping its
// first four characters (user***@example.com), for logs.
func MaskEmails(s string) string {
	return emailRE.ReplaceAllStringFunc(s, func(m string) string {
		local, domain, _ := strings.Cut(m, "@")
		if len(local) > 4 {
			local = local[:4]
		}
		return local + "***@" + domain
	})
}
