package scrub

import (
	"bytes"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"net/url"
	"strconv"
	"strings"
	"unicode/utf8"
)

// secretForms returns every byte string that counts as a printed form of the
// secret value v: the value itself (and its line-ending and trimmed variants),
// hex, base64 in every alignment and alphabet, URL and JSON escaping. The
// result is deduplicated; no form is empty.
func secretForms(v string) []string {
	seen := make(map[string]bool)
	var out []string
	add := func(s string) {
		if len(s) == 0 || seen[s] {
			return
		}
		seen[s] = true
		out = append(out, s)
	}

	// Bases: the value, the value with its surrounding whitespace trimmed
	// (shells strip trailing newlines in $(...)), and for multi-line values
	// the same with \n and \r\n line endings.
	var bases []string
	addBase := func(s string) {
		for _, b := range bases {
			if b == s {
				return
			}
		}
		if s != "" {
			bases = append(bases, s)
		}
	}
	for _, s := range []string{v, strings.TrimSpace(v)} {
		addBase(s)
		if strings.Contains(s, "\n") {
			lf := strings.ReplaceAll(s, "\r\n", "\n")
			addBase(lf)
			addBase(strings.ReplaceAll(lf, "\n", "\r\n"))
		}
	}

	for _, b := range bases {
		add(b)
		add(hex.EncodeToString([]byte(b)))
		add(strings.ToUpper(hex.EncodeToString([]byte(b))))
		for _, enc := range []*base64.Encoding{base64.StdEncoding, base64.URLEncoding} {
			add(enc.EncodeToString([]byte(b)))
			add(strings.TrimRight(enc.EncodeToString([]byte(b)), "="))
			for align := 0; align < 3; align++ {
				add(base64Stable(enc, []byte(b), align))
			}
		}
		// base64 wrapped into lines, as `base64` (76 columns) and
		// `openssl base64` (64) print it: each line of the stable part.
		if std := base64Stable(base64.StdEncoding, []byte(b), 0); len(std) > 64 {
			for _, width := range []int{64, 76} {
				for i := 0; i < len(std); i += width {
					if line := std[i:min(i+width, len(std))]; len(line) >= 8 {
						add(line)
					}
				}
			}
		}
		q := url.QueryEscape(b)
		add(q)
		add(lowerPercent(q))
		p := url.PathEscape(b)
		add(p)
		add(lowerPercent(p))
		// Other common escapers keep different sets in clear.
		add(percentEncode(b, "-_.!~*'()", false)) // JavaScript encodeURIComponent
		add(percentEncode(b, "-_.~/", false))     // Python urllib.parse.quote
		add(percentEncode(b, "-_.~", true))       // Python urllib.parse.quote_plus
		for _, j := range jsonForms(b) {
			add(j)
		}
		if q := strconv.Quote(b); len(q) >= 2 {
			add(q[1 : len(q)-1])
		}
		add(shellQuote(b))
	}

	for _, d := range dumpForms([]byte(v)) {
		add(d)
	}

	// Each line of a multi-line value on its own, so a logger that prefixes
	// every line (timestamps, levels) does not defeat redaction.
	if strings.Contains(v, "\n") {
		for _, line := range strings.Split(v, "\n") {
			line = strings.TrimSpace(line)
			if len(line) >= MinSecretLen {
				add(line)
			}
		}
	}
	return out
}

// dumpForms returns the lines hex-dump tools print for v when v starts the
// dumped data: per 16-byte row, xxd's 2-byte groups, od -tx1 / xxd -g1
// bytes, hexdump -C's two half rows and the ASCII column of xxd and
// hexdump -C; and xxd -p's 30-byte rows. (od -c's one-character columns are
// left out: they would double the automaton for a rarely used form.) Rows shorter than 4
// bytes (the tail) are left out: too short to be unambiguous patterns.
func dumpForms(v []byte) []string {
	var out []string
	for off := 0; off < len(v); off += 16 {
		row := v[off:min(off+16, len(v))]
		if len(row) < 4 {
			break
		}
		h := hex.EncodeToString(row)
		var g2, g1, hc strings.Builder
		ascii := make([]byte, len(row))
		for i, c := range row {
			if i > 0 {
				g1.WriteByte(' ')
				hc.WriteByte(' ')
				if i%2 == 0 {
					g2.WriteByte(' ')
				}
			}
			if i == 8 {
				hc.WriteByte(' ')
			}
			g2.WriteString(h[2*i : 2*i+2])
			g1.WriteString(h[2*i : 2*i+2])
			hc.WriteString(h[2*i : 2*i+2])
			ascii[i] = c
			if c < 0x20 || c > 0x7e {
				ascii[i] = '.'
			}
		}
		out = append(out, g2.String(), g1.String(), hc.String())
		if len(row) >= MinSecretLen {
			out = append(out, string(ascii))
		}
	}
	if len(v) > 30 {
		h := hex.EncodeToString(v)
		for i := 0; i+8 <= len(h); i += 60 {
			out = append(out, h[i:min(i+60, len(h))])
		}
	}
	return out
}

// base64Stable returns the base64 characters that depend only on the bytes
// of secret when secret starts at byte offset align (mod 3) inside a longer
// encoded string: the characters that straddle a neighbouring byte vary with
// the surrounding data, so they are left out. It returns "" when fewer than
// four characters are stable (too short to be a useful, unambiguous pattern).
func base64Stable(enc *base64.Encoding, secret []byte, align int) string {
	buf := make([]byte, align+len(secret))
	copy(buf[align:], secret)
	s := enc.EncodeToString(buf)
	// Character i covers bits [6i, 6i+6); the secret covers [8*align, 8*(align+len)).
	lo := (8*align + 5) / 6
	hi := (8 * (align + len(secret))) / 6
	if hi-lo < 4 {
		return ""
	}
	return s[lo:hi]
}

// shellQuote returns s as bash's printf %q writes a printable-ASCII string:
// a backslash before every byte outside [A-Za-z0-9._+:@%/=-] (and before
// ~ or # at the start). It returns "" for other strings (bash switches to
// $'...' quoting for them).
func shellQuote(s string) string {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c < 0x20 || c > 0x7e:
			return ""
		case c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte("._+:@%/=-", c) >= 0,
			i > 0 && (c == '~' || c == '#'):
		default:
			b.WriteByte('\\')
		}
		b.WriteByte(c)
	}
	return b.String()
}

// percentEncode escapes every byte of s except ASCII letters, digits and
// the bytes in keep as %XX (upper-case hex); with spacePlus a space becomes '+'.
func percentEncode(s, keep string, spacePlus bool) string {
	const digits = "0123456789ABCDEF"
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		c := s[i]
		switch {
		case c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || strings.IndexByte(keep, c) >= 0:
			b.WriteByte(c)
		case c == ' ' && spacePlus:
			b.WriteByte('+')
		default:
			b.WriteByte('%')
			b.WriteByte(digits[c>>4])
			b.WriteByte(digits[c&15])
		}
	}
	return b.String()
}

// lowerPercent rewrites %XX escapes with lower-case hex digits, the form some
// encoders produce.
func lowerPercent(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	b := []byte(s)
	for i := 0; i+2 < len(b); i++ {
		if b[i] == '%' {
			b[i+1] = lowerHex(b[i+1])
			b[i+2] = lowerHex(b[i+2])
			i += 2
		}
	}
	return string(b)
}

func lowerHex(c byte) byte {
	if c >= 'A' && c <= 'F' {
		return c + ('a' - 'A')
	}
	return c
}

// jsonForms returns the body (without quotes) of the JSON string encoding of
// s as Go's encoding/json writes it (with and without HTML escaping of <>&)
// and as an ASCII-only encoder writes it (Python's json.dumps default: every
// non-ASCII rune as \uXXXX, surrogate pairs above U+FFFF).
func jsonForms(s string) []string {
	var out []string
	if b, err := json.Marshal(s); err == nil {
		out = append(out, string(b[1:len(b)-1]))
	}
	var buf bytes.Buffer
	e := json.NewEncoder(&buf)
	e.SetEscapeHTML(false)
	if err := e.Encode(s); err == nil {
		b := bytes.TrimRight(buf.Bytes(), "\n")
		out = append(out, string(b[1:len(b)-1]))
	}
	out = append(out, asciiJSON(s, false), asciiJSON(s, true))
	// PHP's json_encode also escapes '/'.
	for _, f := range out[:2] {
		out = append(out, strings.ReplaceAll(f, "/", `\/`))
	}
	return out
}

// asciiJSON escapes s like an ASCII-only JSON encoder; upper selects
// upper-case hex digits in \u escapes.
func asciiJSON(s string, upper bool) string {
	const lowerDigits, upperDigits = "0123456789abcdef", "0123456789ABCDEF"
	digits := lowerDigits
	if upper {
		digits = upperDigits
	}
	var b strings.Builder
	u := func(r rune) {
		b.WriteString(`\u`)
		for shift := 12; shift >= 0; shift -= 4 {
			b.WriteByte(digits[(r>>shift)&0xf])
		}
	}
	for i := 0; i < len(s); {
		r, size := utf8.DecodeRuneInString(s[i:])
		i += size
		switch {
		case r == '"':
			b.WriteString(`\"`)
		case r == '\\':
			b.WriteString(`\\`)
		case r == '\n':
			b.WriteString(`\n`)
		case r == '\r':
			b.WriteString(`\r`)
		case r == '\t':
			b.WriteString(`\t`)
		case r < 0x20 || (r >= 0x80 && r < 0x10000):
			u(r)
		case r >= 0x10000:
			r -= 0x10000
			u(0xd800 + (r>>10)&0x3ff)
			u(0xdc00 + r&0x3ff)
		default:
			b.WriteRune(r)
		}
	}
	return b.String()
}
