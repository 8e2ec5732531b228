package allowlist

import (
	"errors"
	"fmt"
	"net/netip"
	"strings"
	"unicode/utf8"

	"golang.org/x/net/idna"
)

// ErrIPLiteral is returned (wrapped) by CanonicalHost when the host is an IP
// address in any spelling it recognises: the caller must handle it as an
// address (allowlist files use a cidr entry for that), never as a name.
var ErrIPLiteral = errors.New("host is an IP address literal")

// ErrBadHost is returned (wrapped) by CanonicalHost for every host that is
// not a valid DNS name.
var ErrBadHost = errors.New("invalid host name")

// MaxHostLen is the longest name CanonicalHost accepts, in bytes, without a
// trailing dot (RFC 1035: 255 octets on the wire).
const MaxHostLen = 253

// lookupProfile is UTS #46 processing for lookup (RFC 5891 section 5): case
// and width mapping, NFC, the Bidi and ContextJ rules, STD3 (letters,
// digits, hyphen) and DNS length limits, non-transitional so "ß" stays
// distinct from "ss" as browsers treat it today. CheckHyphens is off as in
// the WHATWG URL standard: real names such as CDN hosts use "--" in the
// third and fourth positions; checkLDH still refuses a leading or trailing
// hyphen.
var lookupProfile = idna.New(
	idna.MapForLookup(),
	idna.BidiRule(),
	idna.CheckHyphens(false),
	idna.CheckJoiners(true),
	idna.VerifyDNSLength(true),
	idna.Transitional(false),
)

// CanonicalHost returns s as the one spelling hosts are compared in:
// lowercase punycode (IDNA lookup profile) without a trailing dot. It
// rejects empty labels, labels over 63 bytes, names over 253 bytes, any
// character outside letters, digits and hyphen (so "*" too: wildcards are
// the allowlist parser's business), and IP literals (ErrIPLiteral), which
// includes names whose last label is numeric ("2130706433", "1.0x7f"),
// because URL parsers read those as IPv4 addresses.
//
// The proxy calls it on every request host before matching, so it must be
// total: any input yields a name or an error, never a panic.
func CanonicalHost(s string) (string, error) {
	h, err := canonicalHost(s)
	if err != nil {
		if len(s) > 80 {
			s = s[:80] + "..."
		}
		return "", fmt.Errorf("canonical host %q: %w", s, err)
	}
	return h, nil
}

// canonicalHost is CanonicalHost with errors that do not repeat the host,
// for messages that already show it.
func canonicalHost(s string) (string, error) {
	if s == "" {
		return "", fmt.Errorf("%w: empty host", ErrBadHost)
	}
	if len(s) > 4*MaxHostLen {
		// Bound the work IDNA does on hostile input; no valid name, even
		// written in Unicode, is this long.
		return "", fmt.Errorf("%w: %d bytes is longer than any DNS name", ErrBadHost, len(s))
	}
	if !utf8.ValidString(s) {
		// IDNA would map the bad bytes to U+FFFD and encode that.
		return "", fmt.Errorf("%w: not valid UTF-8", ErrBadHost)
	}
	if isIPLiteral(s) {
		return "", ErrIPLiteral
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < utf8.RuneSelf && !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return "", fmt.Errorf("%w: character %q is not allowed: use letters, digits, hyphens and dots", ErrBadHost, c)
		}
	}
	h := strings.TrimSuffix(s, ".")
	// Fast path: for ASCII letters, digits and hyphens UTS #46 mapping is
	// lowercasing, so only names with other runes or A-labels ("xn--", whose
	// punycode must be validated) need the IDNA profile.
	if isASCII(h) {
		h = strings.ToLower(h)
	}
	if !isLowerLDH(h) || strings.Contains(h, "xn--") {
		a, err := lookupProfile.ToASCII(h)
		if err != nil {
			return "", fmt.Errorf("%w: %v", ErrBadHost, err)
		}
		h = a
	}
	// Mapping can turn fullwidth digits and dots into an address
	// ("１２７．０．０．１"), so classify again after it.
	if isIPLiteral(h) {
		return "", ErrIPLiteral
	}
	if err := checkLDH(h); err != nil {
		return "", fmt.Errorf("%w: %v", ErrBadHost, err)
	}
	return h, nil
}

// isASCII reports whether s holds only ASCII bytes.
func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// isLowerLDH reports whether s holds only lowercase letters, digits, hyphens
// and dots.
func isLowerLDH(s string) bool {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if !(c >= 'a' && c <= 'z' || c >= '0' && c <= '9' || c == '-' || c == '.') {
			return false
		}
	}
	return true
}

// checkLDH checks what IDNA does not promise on every path: label and name
// lengths, empty labels, letters/digits/hyphen only, no leading or trailing
// hyphen.
func checkLDH(h string) error {
	if h == "" {
		return errors.New("empty name")
	}
	if len(h) > MaxHostLen {
		return fmt.Errorf("name is %d bytes, over the %d-byte limit", len(h), MaxHostLen)
	}
	if !isLowerLDH(h) {
		return errors.New("only letters, digits, hyphens and dots are allowed")
	}
	for label := range strings.SplitSeq(h, ".") {
		switch {
		case label == "":
			return errors.New("empty label")
		case len(label) > 63:
			return fmt.Errorf("label %q is %d bytes, over the 63-byte limit", label, len(label))
		case label[0] == '-' || label[len(label)-1] == '-':
			return fmt.Errorf("label %q starts or ends with a hyphen", label)
		}
	}
	return nil
}

// isIPLiteral reports whether s would be read as an IP address by a URL
// parser: an IPv4 or IPv6 literal (bracketed or not, with or without zone)
// or a name
// whose last label is a number in decimal, octal or hex (WHATWG URL's
// "ends in a number" rule, which also covers "127.1" and "0x7f.1").
func isIPLiteral(s string) bool {
	t := strings.TrimSuffix(s, ".")
	if len(t) > 2 && t[0] == '[' && t[len(t)-1] == ']' {
		t = t[1 : len(t)-1]
	}
	if strings.IndexByte(t, ':') >= 0 {
		// Only IPv6 literals carry a colon; parse only then, since a failed
		// parse allocates its error. Dotted IPv4 ends in a number below.
		_, err := netip.ParseAddr(t)
		return err == nil
	}
	last := t
	if i := strings.LastIndexByte(t, '.'); i >= 0 {
		last = t[i+1:]
	}
	return isNumericLabel(last)
}

// isNumericLabel reports whether label is a decimal, octal or 0x-hex number.
func isNumericLabel(label string) bool {
	if label == "" {
		return false
	}
	digits := label
	hex := false
	if len(label) >= 2 && label[0] == '0' && (label[1] == 'x' || label[1] == 'X') {
		digits, hex = label[2:], true
		if digits == "" {
			return true // "0x" alone is zero to WHATWG
		}
	}
	for i := 0; i < len(digits); i++ {
		c := digits[i]
		switch {
		case c >= '0' && c <= '9':
		case hex && (c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'):
		default:
			return false
		}
	}
	return true
}
