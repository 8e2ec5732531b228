package ingest

import (
	"regexp"
	"strings"
)

// Redacted replaces every secret-looking value before it is stored.
const Redacted = "[REDACTED]"

// secretKey matches metadata keys whose values are secrets whatever they
// look like. Over-matching (token_count) costs a value; under-matching
// costs a leak.
var secretKey = regexp.MustCompile(`(?i)(pass(word|wd|phrase)?|secret|token|api[_-]?key|authori[sz]ation|credential|private[_-]?key|cookie|session[_-]?(id|key)|access[_-]?key|signature|x-amz-security)`)

// secretValues match values that are secrets wherever they appear.
var secretValues = []*regexp.Regexp{
	regexp.MustCompile(`\b(AKIA|ASIA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b`),                            // AWS access key ID
	regexp.MustCompile(`eyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*`),                              // JWT
	regexp.MustCompile(`-----BEGIN [A-Z0-9 ]*PRIVATE KEY-----(?s:.*?)(-----END [A-Z0-9 ]*PRIVATE KEY-----|$)`), // PEM key
	regexp.MustCompile(`\bgh[pousr]_[A-Za-z0-9]{30,}\b|\bgithub_pat_[A-Za-z0-9_]{22,}`),                        // GitHub
	regexp.MustCompile(`\bxox[abposr]-[A-Za-z0-9-]{10,}`),                                                      // Slack
	regexp.MustCompile(`\b[sr]k_(live|test)_[A-Za-z0-9]{16,}`),                                                 // Stripe
	regexp.MustCompile(`\bAIza[0-9A-Za-z_-]{35}\b`),                                                            // Google API key
	regexp.MustCompile(`(?i)\b(bearer|basic)\s+[A-Za-z0-9._~+/=-]{8,}`),                                        // Authorization header value
	regexp.MustCompile(`(?i)(aws_secret_access_key|secret_access_key)\s*[=:]\s*\S+`),                           // AWS secret in a config line
}

// urlUserinfo matches the credentials of scheme://user:pass@host.
var urlUserinfo = regexp.MustCompile(`(?i)\b([a-z][a-z0-9+.-]*://)[^/\s:@]+:[^/\s@]+@`)

// RedactString replaces secret-looking substrings of s and reports how many
// it replaced.
func RedactString(s string) (string, int) {
	n := 0
	for _, re := range secretValues {
		if re.MatchString(s) {
			s = re.ReplaceAllStringFunc(s, func(string) string { n++; return Redacted })
		}
	}
	if urlUserinfo.MatchString(s) {
		s = urlUserinfo.ReplaceAllStringFunc(s, func(m string) string {
			n++
			return urlUserinfo.ReplaceAllString(m, "${1}"+Redacted+"@")
		})
	}
	return s, n
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
			if secretKey.MatchString(k) {
				if val != nil {
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
