// Package authority parses the destination a job asks the egress proxy for:
// a CONNECT request target (host:port), the authority of an absolute URI,
// or a Host header. It normalises every spelling of an IP literal
// (decimal 2130706433, hex 0x7f.1, octal 0177.0.0.1, short forms 127.1,
// bracketed and IPv4-mapped IPv6) to one netip.Addr, and canonicalises host
// names (lowercase, no trailing dot, IDNA to punycode), so that the policy
// matcher only ever compares canonical forms.
//
// It refuses, rather than guesses at, anything ambiguous: zone IDs,
// userinfo, percent-encoding, control bytes, names whose last label is
// numeric but which are not a valid IPv4 literal, and ports with signs or
// leading zeros.
//
// It does not decide whether a destination is allowed (egress-proxy/policy)
// or what class an address is (egress-proxy/addrclass).
package authority

import (
	"errors"
	"fmt"
	"net/netip"
	"strconv"
	"strings"
	"unicode/utf8"

	"github.com/cordon-dev/cordon/internal/allowlist"
)

// ErrInvalid is wrapped by every parse error of this package.
var ErrInvalid = errors.New("invalid authority")

// Host is a parsed destination host: either a canonical name or an address.
// Exactly one of Name and Addr is set.
type Host struct {
	// Name is lowercase punycode without a trailing dot. Empty for an IP
	// literal.
	Name string
	// Addr is the literal's address, unmapped (::ffff:a.b.c.d becomes
	// a.b.c.d). The zero Addr means the host is a name.
	Addr netip.Addr
}

// IsLiteral reports whether the host was an IP literal.
func (h Host) IsLiteral() bool { return h.Addr.IsValid() }

// String is the canonical host: the name, or the address (IPv6 unbracketed).
func (h Host) String() string {
	if h.IsLiteral() {
		return h.Addr.String()
	}
	return h.Name
}

// Target is a parsed host and port.
type Target struct {
	Host
	Port uint16
}

// String is the canonical host:port, IPv6 bracketed.
func (t Target) String() string { return string(t.AppendTo(nil, 0)) }

// AppendTo appends t as String does, but without the port when it is
// defaultPort (a Host field's form: "example.com" for port 80 of http).
// It allocates nothing beyond growing b.
func (t Target) AppendTo(b []byte, defaultPort uint16) []byte {
	switch {
	case t.Addr.Is6():
		b = append(b, '[')
		b = t.Addr.AppendTo(b)
		b = append(b, ']')
	case t.IsLiteral():
		b = t.Addr.AppendTo(b)
	default:
		b = append(b, t.Name...)
	}
	if defaultPort == 0 || t.Port != defaultPort {
		b = append(b, ':')
		b = strconv.AppendUint(b, uint64(t.Port), 10)
	}
	return b
}

func invalid(s, why string) error {
	return fmt.Errorf("%w %q: %s", ErrInvalid, s, why)
}

// ParseHostPort parses "host:port", "[v6]:port", or, when defaultPort is
// not zero, a host alone. It is the parser for CONNECT targets (pass 0: the
// port is required) and URI authorities (pass the scheme's port).
func ParseHostPort(s string, defaultPort uint16) (Target, error) {
	if err := checkBytes(s); err != nil {
		return Target{}, err
	}
	hostPart, portPart, hasPort, err := split(s)
	if err != nil {
		return Target{}, err
	}
	var port uint16
	switch {
	case hasPort:
		port, err = ParsePort(portPart)
		if err != nil {
			return Target{}, fmt.Errorf("%w (in %q)", err, s)
		}
	case defaultPort != 0:
		port = defaultPort
	default:
		return Target{}, invalid(s, "missing port")
	}
	h, err := ParseHost(hostPart)
	if err != nil {
		return Target{}, err
	}
	return Target{Host: h, Port: port}, nil
}

// split separates host and port without interpreting either.
func split(s string) (host, port string, hasPort bool, err error) {
	if strings.HasPrefix(s, "[") {
		end := strings.IndexByte(s, ']')
		if end < 0 {
			return "", "", false, invalid(s, "unterminated [")
		}
		host, rest := s[:end+1], s[end+1:]
		switch {
		case rest == "":
			return host, "", false, nil
		case rest[0] == ':':
			return host, rest[1:], true, nil
		default:
			return "", "", false, invalid(s, "junk after ]")
		}
	}
	i := strings.LastIndexByte(s, ':')
	if i < 0 {
		return s, "", false, nil
	}
	if strings.IndexByte(s[:i], ':') >= 0 {
		return "", "", false, invalid(s, "IPv6 literal must be bracketed")
	}
	return s[:i], s[i+1:], true, nil
}

// ParsePort parses a decimal port 1..65535: digits only, no sign, no
// leading zero.
func ParsePort(s string) (uint16, error) {
	if s == "" || len(s) > 5 || s[0] == '0' {
		return 0, invalid(s, "port must be 1-65535 without leading zeros")
	}
	n := 0
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < '0' || c > '9' {
			return 0, invalid(s, "port must be decimal digits")
		}
		n = n*10 + int(c-'0')
	}
	if n < 1 || n > 65535 {
		return 0, invalid(s, "port out of range 1-65535")
	}
	return uint16(n), nil
}

// checkBytes refuses bytes that no authority contains and that tricks rely
// on: controls (CR, LF, NUL, TAB), space, DEL, userinfo, path, query and
// fragment delimiters, backslash and percent-encoding (which would also
// carry IPv6 zone IDs).
func checkBytes(s string) error {
	if s == "" {
		return invalid(s, "empty")
	}
	if !utf8.ValidString(s) {
		return invalid(s, "not valid UTF-8")
	}
	if len(s) > 1024 {
		return invalid(s[:32]+"...", "longer than 1024 bytes")
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c <= ' ' || c == 0x7f:
			return invalid(s, "control byte or space")
		case c == '@':
			return invalid(s, "userinfo is not allowed")
		case c == '%':
			return invalid(s, "percent-encoding and zone IDs are not allowed")
		case c == '/' || c == '\\' || c == '?' || c == '#':
			return invalid(s, "path, query or fragment in authority")
		}
	}
	return nil
}

// ParseHost parses a host without a port: a bracketed IPv6 literal, an
// IPv4 literal in any inet_aton spelling, or a DNS name.
func ParseHost(s string) (Host, error) {
	if err := checkBytes(s); err != nil {
		return Host{}, err
	}
	if strings.HasPrefix(s, "[") {
		if !strings.HasSuffix(s, "]") {
			return Host{}, invalid(s, "unterminated [")
		}
		a, err := netip.ParseAddr(s[1 : len(s)-1])
		if err != nil || !a.Is6() {
			return Host{}, invalid(s, "brackets must hold an IPv6 address")
		}
		return Host{Addr: a.Unmap()}, nil
	}
	if strings.IndexByte(s, ':') >= 0 {
		return Host{}, invalid(s, "IPv6 literal must be bracketed")
	}
	// One trailing dot is the DNS root; "127.0.0.1." is still a literal.
	trimmed := strings.TrimSuffix(s, ".")
	if a, ok := ParseIPv4(trimmed); ok {
		return Host{Addr: a}, nil
	}
	if endsInNumber(trimmed) {
		return Host{}, invalid(s, "numeric last label but not a valid IPv4 address")
	}
	name, err := CanonicalName(s)
	if err != nil {
		return Host{}, err
	}
	// IDNA mapping turns full-width digits and ideographic dots into ASCII:
	// "１２７。０。０。１" must not slip through as a name.
	if a, ok := ParseIPv4(name); ok {
		return Host{Addr: a}, nil
	}
	if endsInNumber(name) {
		return Host{}, invalid(s, "numeric last label but not a valid IPv4 address")
	}
	return Host{Name: name}, nil
}

// endsInNumber reports whether the last label is decimal digits or 0x-hex,
// the WHATWG URL rule for "this must be an IPv4 address": such a host is
// never treated as a name, since resolvers and libraries disagree on it.
func endsInNumber(s string) bool {
	last := s[strings.LastIndexByte(s, '.')+1:]
	if last == "" {
		return false
	}
	if strings.HasPrefix(last, "0x") || strings.HasPrefix(last, "0X") {
		last = last[2:]
		for i := 0; i < len(last); i++ {
			if !isHex(last[i]) {
				return false
			}
		}
		return true
	}
	for i := 0; i < len(last); i++ {
		if last[i] < '0' || last[i] > '9' {
			return false
		}
	}
	return true
}

func isHex(c byte) bool {
	return c >= '0' && c <= '9' || c >= 'a' && c <= 'f' || c >= 'A' && c <= 'F'
}

// ParseIPv4 parses the inet_aton spellings of an IPv4 address: one to four
// dot-separated parts, each decimal, octal (leading 0) or hex (0x), the last
// part filling the remaining bytes ("127.1" is 127.0.0.1, "2130706433" is
// 127.0.0.1, "0x7f.1" is 127.0.0.1).
func ParseIPv4(s string) (netip.Addr, bool) {
	if s == "" {
		return netip.Addr{}, false
	}
	var parts [4]uint64
	n := 0
	for {
		i := strings.IndexByte(s, '.')
		part := s
		if i >= 0 {
			part = s[:i]
		}
		if n == 4 {
			return netip.Addr{}, false
		}
		v, ok := parseIPv4Part(part)
		if !ok {
			return netip.Addr{}, false
		}
		parts[n] = v
		n++
		if i < 0 {
			break
		}
		s = s[i+1:]
	}
	var v uint64
	for i := 0; i < n-1; i++ {
		if parts[i] > 0xff {
			return netip.Addr{}, false
		}
		v |= parts[i] << (8 * (3 - i))
	}
	last := parts[n-1]
	if last >= 1<<(8*(5-n)) {
		return netip.Addr{}, false
	}
	v |= last
	return netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), true
}

func parseIPv4Part(p string) (uint64, bool) {
	if p == "" || len(p) > 12 {
		return 0, false
	}
	base := uint64(10)
	switch {
	case len(p) >= 2 && (p[:2] == "0x" || p[:2] == "0X"):
		base, p = 16, p[2:]
		if p == "" {
			return 0, true // "0x" is 0 in inet_aton
		}
	case len(p) > 1 && p[0] == '0':
		base, p = 8, p[1:]
	}
	var v uint64
	for i := 0; i < len(p); i++ {
		c := p[i]
		var d uint64
		switch {
		case c >= '0' && c <= '9':
			d = uint64(c - '0')
		case c >= 'a' && c <= 'f':
			d = uint64(c-'a') + 10
		case c >= 'A' && c <= 'F':
			d = uint64(c-'A') + 10
		default:
			return 0, false
		}
		if d >= base {
			return 0, false
		}
		v = v*base + d
	}
	return v, true
}

// CanonicalName returns a DNS name in the one form allowlists use, by
// allowlist.CanonicalHost (so the proxy and the allowlist parser can never
// disagree on a spelling): IDNA lookup profile to punycode, lowercase, one
// trailing dot removed, letters, digits, hyphens and dots only. Unicode
// look-alikes become their own xn-- names, so a homograph never equals the
// name it imitates.
func CanonicalName(s string) (string, error) {
	if err := checkBytes(s); err != nil {
		return "", err
	}
	name, err := allowlist.CanonicalHost(s)
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrInvalid, err)
	}
	return name, nil
}
