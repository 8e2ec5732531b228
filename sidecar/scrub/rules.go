package scrub

import (
	"math"
	"strings"
)

// ruleKind selects the scanner a trigger starts.
type ruleKind uint8

const (
	kindToken   ruleKind = iota // known prefix followed by a run of token bytes
	kindJWT                     // eyJ<header>.eyJ<payload>.<signature>
	kindPEM                     // -----BEGIN ... PRIVATE KEY----- body -----END
	kindKey                     // key-context: password=..., "api_key": "...", Authorization: ...
	kindEmail                   // local@domain.tld
	kindURLUser                 // scheme://user:password@host
)

// byteSet is a set of bytes.
type byteSet [4]uint64

func (s *byteSet) has(b byte) bool { return s[b>>6]&(1<<(b&63)) != 0 }

func newByteSet(spec string) byteSet {
	var s byteSet
	for i := 0; i < len(spec); i++ {
		if i+2 < len(spec) && spec[i+1] == '-' {
			for c := int(spec[i]); c <= int(spec[i+2]); c++ {
				s[c>>6] |= 1 << (c & 63)
			}
			i += 2
			continue
		}
		c := spec[i]
		s[c>>6] |= 1 << (c & 63)
	}
	return s
}

var (
	setAlnum      = newByteSet("A-Za-z0-9")
	setAlnumUnder = newByteSet("A-Za-z0-9_")
	setAlnumDash  = newByteSet("A-Za-z0-9-")
	setUpperAlnum = newByteSet("A-Z0-9")
	setB64URL     = newByteSet("A-Za-z0-9_-")
	setSlackHook  = newByteSet("A-Za-z0-9/_-")
	setB64Token   = newByteSet("A-Za-z0-9._~+/=-")
	setPEMLabel   = newByteSet("A-Z0-9 ")
	setDomain     = newByteSet("A-Za-z0-9-")
	setEmailLocal = newByteSet("A-Za-z0-9._%+-")
	// RFC 3986 userinfo: unreserved, pct-encoded and sub-delims.
	setUserinfo = newByteSet("A-Za-z0-9._~%!$&'()*+,;=-")
)

// trigger is a pattern in the automaton that starts a rule scanner.
type trigger struct {
	text  string
	kind  ruleKind
	set   *byteSet // kindToken: bytes of the token body
	exact int32    // kindToken: body must be exactly this long (0: any length >= 1)
}

// keyContextKeys are the key names whose value is redacted, as segments;
// every casing and separator style is generated (api_key, API-KEY, apiKey,
// ApiKey ...). A key matches as a suffix of a longer name too: "password"
// catches DB_PASSWORD, "token" catches access_token and AWS_SESSION_TOKEN.
var keyContextKeys = [][]string{
	{"password"}, {"passwd"}, {"secret"}, {"token"}, {"api", "key"},
	{"private", "key"}, {"secret", "key"}, {"access", "key"},
	{"secret", "access", "key"}, {"authorization"}, {"client", "secret"},
}

// tokenPrefixes are the well-known token prefixes kept in clear (so a reader
// still sees what kind of credential was printed) with the body redacted.
var tokenPrefixes = []struct {
	prefixes []string
	set      *byteSet
	exact    int32
}{
	// AWS access key IDs: a 4-letter type prefix and 16 base32 characters.
	{[]string{"AKIA", "ASIA", "AGPA", "AIDA", "AROA", "AIPA", "ANPA", "ANVA", "ABIA", "ACCA"}, &setUpperAlnum, 16},
	// GitHub tokens.
	{[]string{"ghp_", "gho_", "ghu_", "ghs_", "ghr_"}, &setAlnum, 0},
	{[]string{"github_pat_"}, &setAlnumUnder, 0},
	// Stripe keys and webhook secrets.
	{[]string{"sk_live_", "sk_test_", "rk_live_", "rk_test_", "whsec_"}, &setAlnum, 0},
	// Slack tokens and webhook URLs.
	{[]string{"xoxb-", "xoxp-", "xoxa-", "xoxr-", "xoxs-", "xoxe-", "xapp-"}, &setAlnumDash, 0},
	{[]string{"hooks.slack.com/"}, &setSlackHook, 0},
	// HTTP bearer tokens outside a key context (curl -H "Bearer ...").
	{[]string{"Bearer ", "BEARER "}, &setB64Token, 0},
}

// valuePrefixes are kept in clear at the start of a key-context value: the
// token prefixes above and HTTP authorization schemes.
var valuePrefixes = func() []string {
	var out []string
	for _, t := range tokenPrefixes {
		out = append(out, t.prefixes...)
	}
	for _, s := range []string{"Bearer ", "bearer ", "BEARER ", "Basic ", "basic ", "BASIC ", "Token ", "token "} {
		if !contains(out, s) {
			out = append(out, s)
		}
	}
	if len(out) > 64 {
		panic("scrub: more than 64 value prefixes")
	}
	return out
}()

func contains(list []string, s string) bool {
	for _, x := range list {
		if x == s {
			return true
		}
	}
	return false
}

// keyVariants returns the spellings of a key made of segments.
func keyVariants(segs []string) []string {
	var out []string
	add := func(s string) {
		if !contains(out, s) {
			out = append(out, s)
		}
	}
	title := func(s string) string { return strings.ToUpper(s[:1]) + s[1:] }
	for _, sep := range []string{"_", "-", ""} {
		lower := strings.Join(segs, sep)
		add(lower)
		add(strings.ToUpper(lower))
		t := make([]string, len(segs))
		for i, s := range segs {
			t[i] = title(s)
		}
		add(strings.Join(t, sep))
		if sep == "" && len(segs) > 1 {
			add(segs[0] + strings.Join(t[1:], ""))
		}
	}
	return out
}

func buildTriggers(rules, emails bool) []trigger {
	var ts []trigger
	if rules {
		for _, tp := range tokenPrefixes {
			for _, p := range tp.prefixes {
				ts = append(ts, trigger{text: p, kind: kindToken, set: tp.set, exact: tp.exact})
			}
		}
		ts = append(ts, trigger{text: "eyJ", kind: kindJWT}, trigger{text: "-----BEGIN ", kind: kindPEM},
			trigger{text: "://", kind: kindURLUser})
		for _, k := range keyContextKeys {
			for _, v := range keyVariants(k) {
				ts = append(ts, trigger{text: v, kind: kindKey})
			}
		}
	}
	if emails {
		ts = append(ts, trigger{text: "@", kind: kindEmail})
	}
	return ts
}

// noHold is a validator's hold when it needs no bytes held back.
const noHold = math.MaxInt64

// Scanner limits.
const (
	maxJWTHeader  = 4096    // a JWT header segment longer than this is not matched
	maxPEMBody    = 1 << 20 // a PEM body longer than this ends the redaction
	maxEmailLocal = 64      // RFC 5321 local-part limit
	maxEmailHost  = 253
	maxKeyGap     = 8 // bytes of quotes/spaces allowed around a key's separator
	maxUserinfo   = 256
	maxValidators = 16
)

// validator is one running rule scanner.
type validator struct {
	kind       ruleKind
	phase      uint8
	committed  bool  // owns a growing interval starting at ivStart
	escaped    bool  // previous byte was a backslash inside a "-quoted value
	quote      byte  // kindKey: the value's closing quote; '\\' for \"...\"
	trig       int32 // trigger index
	n          int32 // bytes consumed in the current phase
	kept       int32 // kindKey: length of the value prefix kept in clear
	dots       int32 // kindJWT: dots seen; kindEmail: dots in the domain
	ok, okPrev bool  // kindEmail: domain valid so far / before the last dot
	alpha      bool  // kindEmail: current label is all letters
	mask       uint64
	start      int64 // start of the (possible) redaction
	ivStart    int64 // committed: a position inside the owned interval
	at         int64 // kindEmail: position of '@'
	hold       int64 // bytes at or after hold may still be redacted
}

// activate starts the scanner of trigger t, whose text ended at position end.
func (w *Writer) activate(t int32, end int64) {
	if w.nVals == maxValidators {
		w.dropped++
		return
	}
	tr := &w.s.triggers[t]
	v := validator{kind: tr.kind, trig: t, hold: noHold}
	switch tr.kind {
	case kindToken, kindJWT:
		v.start, v.hold = end, end
	case kindEmail:
		at := end - 1
		run := w.localRun(int(at - w.bufStart))
		if run < 1 || run > maxEmailLocal {
			return
		}
		v.start = at - int64(run) + int64(min(run, 4))
		if v.start < w.emitted {
			v.start = w.emitted
		}
		if v.start > at {
			return
		}
		v.at, v.hold, v.alpha = at, v.start, true
	}
	if tr.kind == kindURLUser {
		v.hold = noHold // the user name stays in clear
	}
	w.vals[w.nVals] = v
	w.nVals++
}

// feedAll gives byte b at position pos to every running scanner.
func (w *Writer) feedAll(b byte, pos int64) {
	for i := 0; i < w.nVals; {
		if w.feed(&w.vals[i], b, pos) {
			w.nVals--
			w.vals[i] = w.vals[w.nVals]
			continue
		}
		i++
	}
}

// commit makes v own a growing redaction interval [start, end).
func (w *Writer) commit(v *validator, start, end int64) {
	w.addInterval(start, end, ruleMarker, prioRule)
	v.committed, v.ivStart, v.hold = true, start, noHold
	if i := w.find(start); i >= 0 {
		w.ivs[i].grow++
	}
}

// extend grows v's interval to end.
func (w *Writer) extend(v *validator, end int64) {
	w.addInterval(v.ivStart, end, ruleMarker, prioRule)
}

// release ends v's ownership of its interval; it reports true (done).
func (w *Writer) release(v *validator) bool {
	if v.committed {
		if i := w.find(v.ivStart); i >= 0 {
			w.ivs[i].grow--
		}
		v.committed = false
	}
	return true
}

// feed gives byte b at position pos to v; it reports whether v is done.
func (w *Writer) feed(v *validator, b byte, pos int64) bool {
	switch v.kind {
	case kindToken:
		tr := &w.s.triggers[v.trig]
		if !tr.set.has(b) {
			return w.release(v)
		}
		v.n++
		if tr.exact > 0 {
			if v.n == tr.exact {
				w.addInterval(v.start, pos+1, ruleMarker, prioRule)
				return true
			}
			return false
		}
		if v.committed {
			w.extend(v, pos+1)
		} else {
			w.commit(v, v.start, pos+1)
		}
		return false

	case kindJWT:
		switch v.phase {
		case 0: // header
			if setB64URL.has(b) {
				v.n++
				return v.n > maxJWTHeader
			}
			if b == '.' && v.n > 0 {
				v.phase, v.n = 1, 0
				return false
			}
			return true
		case 1: // "eyJ" of the payload
			if b != "eyJ"[v.n] {
				return true
			}
			v.n++
			if v.n == 3 {
				v.phase, v.dots = 2, 1
				w.commit(v, v.start, pos+1)
			}
			return false
		default: // rest of payload and signature
			if setB64URL.has(b) || b == '.' && v.dots < 2 {
				if b == '.' {
					v.dots++
				}
				w.extend(v, pos+1)
				return false
			}
			return w.release(v)
		}

	case kindPEM:
		switch v.phase {
		case 0: // label, then the closing dashes
			if setPEMLabel.has(b) && v.n < 64 {
				v.n++
				w.pemLabel(v, b)
				return false
			}
			if b == '-' && v.n > 0 {
				v.phase, v.dots = 1, 1
				return false
			}
			return true
		case 1:
			if b != '-' {
				return true
			}
			v.dots++
			if v.dots == 5 {
				if !v.ok {
					return true
				}
				v.phase = 2
			}
			return false
		case 2: // first body byte
			v.phase, v.n = 3, 0
			w.commit(v, pos, pos+1)
			w.pemEnd(v, b)
			return false
		default:
			v.n++
			if w.pemEnd(v, b) {
				w.release(v)
				return true
			}
			w.extend(v, pos+1-int64(v.dots))
			if v.n > maxPEMBody {
				return w.release(v)
			}
			return false
		}

	case kindKey:
		return w.feedKey(v, b, pos)

	case kindURLUser:
		v.n++
		if v.n > maxUserinfo {
			return true
		}
		switch {
		case v.phase == 0 && b == ':': // end of the user name
			v.phase, v.start, v.hold = 1, pos+1, pos+1
		case b == '@' && v.phase == 1 && pos > v.start:
			// The password, and the '@' so that an email mask merging
			// with this redaction cannot swallow the separator.
			w.addInterval(v.start, pos+1, urlUserMarker, prioRule)
			return true
		case !setUserinfo.has(b):
			return true
		}
		return false

	case kindEmail:
		if setDomain.has(b) {
			v.n++
			if v.n > maxEmailHost {
				return true
			}
			v.alpha = v.alpha && (b|0x20 >= 'a' && b|0x20 <= 'z')
			v.kept++ // current label length
			v.ok = v.dots >= 1 && v.kept >= 2 && v.alpha
			return false
		}
		if b == '.' && v.kept > 0 {
			v.n++
			v.dots++
			v.okPrev, v.kept, v.alpha, v.ok = v.ok, 0, true, false
			return false
		}
		w.finishEmail(v)
		return true
	}
	return true
}

// pemLabel tracks whether the PEM label contains "PRIVATE KEY", reusing
// v.kept as the match length.
func (w *Writer) pemLabel(v *validator, b byte) {
	const want = "PRIVATE KEY"
	if v.ok {
		return
	}
	if b == want[v.kept] {
		v.kept++
		if int(v.kept) == len(want) {
			v.ok = true
		}
		return
	}
	v.kept = 0
	if b == want[0] {
		v.kept = 1
	}
}

// pemEnd tracks "-----END" in a PEM body, reusing v.dots as the matched
// length; it reports true when the whole marker was seen.
func (w *Writer) pemEnd(v *validator, b byte) bool {
	const want = "-----END"
	if b == want[v.dots] {
		v.dots++
		return int(v.dots) == len(want)
	}
	switch {
	case b == '-' && v.dots <= 5:
		// Still a run of dashes: the last five may start the marker.
	case b == '-':
		v.dots = 1
	default:
		v.dots = 0
	}
	return false
}

func (w *Writer) finishEmail(v *validator) {
	ok := v.ok
	if v.kept == 0 {
		ok = v.okPrev
	}
	if ok {
		w.addInterval(v.start, v.at+1, emailMarker, prioEmail)
	}
}

// isValueEnd reports whether b ends a key-context value quoted with q.
func isValueEnd(q, b byte) bool {
	if b == '\n' || b == '\r' {
		return true
	}
	switch q {
	case 0:
		return b <= ' ' || b == 0x7f || strings.IndexByte(",;&\"'`})]", b) >= 0
	default:
		return b == q
	}
}

func (w *Writer) feedKey(v *validator, b byte, pos int64) bool {
	switch v.phase {
	case 0: // between the key and its separator
		if b == ':' || b == '=' {
			v.phase, v.n = 1, 0
			return false
		}
		if strings.IndexByte("\"'`\\ \t]", b) >= 0 && v.n < maxKeyGap {
			v.n++
			return false
		}
		return true
	case 1: // between the separator and the value
		switch {
		case (b == ' ' || b == '\t') && v.n < maxKeyGap:
			v.n++
			return false
		case b == '"' || b == '\'' || b == '`':
			v.quote, v.phase = b, 2
			v.start, v.hold, v.n, v.mask = pos+1, pos+1, 0, 1<<len(valuePrefixes)-1
			return false
		case b == '\\':
			v.phase = 5
			return false
		case isValueEnd(0, b):
			return true
		}
		v.quote, v.phase = 0, 2
		v.start, v.hold, v.n, v.mask = pos, pos, 0, 1<<len(valuePrefixes)-1
		return w.feedKey(v, b, pos)
	case 5: // \" opens a value inside a JSON string
		if b != '"' {
			return true
		}
		v.quote, v.phase = '\\', 2
		v.start, v.hold, v.n, v.mask = pos+1, pos+1, 0, 1<<len(valuePrefixes)-1
		return false
	case 2: // start of the value: a known prefix stays in clear
		var next uint64
		for m := v.mask; m != 0; m &= m - 1 {
			i := trailingZeros(m)
			p := valuePrefixes[i]
			if int(v.n) < len(p) && p[v.n] == b {
				next |= 1 << i
			}
		}
		if next != 0 {
			v.n++
			v.mask = next
			for m := next; m != 0; m &= m - 1 {
				if len(valuePrefixes[trailingZeros(m)]) == int(v.n) {
					v.kept, v.phase, v.hold = v.n, 3, noHold
					return false
				}
			}
			return false
		}
		if w.valueEnd(v, b) {
			if v.n > 0 {
				w.addInterval(v.start, pos, ruleMarker, prioRule)
			}
			return true
		}
		v.phase = 4
		w.commit(v, v.start, pos+1)
		return false
	case 3: // a prefix was kept; the first secret byte
		if w.valueEnd(v, b) {
			return true
		}
		v.phase = 4
		w.commit(v, pos, pos+1)
		return false
	default: // inside the value
		if w.valueEnd(v, b) {
			return w.release(v)
		}
		w.extend(v, pos+1)
		return false
	}
}

// valueEnd reports whether b ends v's value, tracking backslash escapes in
// double-quoted values.
func (w *Writer) valueEnd(v *validator, b byte) bool {
	if v.quote == '"' {
		if v.escaped {
			v.escaped = false
			return b == '\n' || b == '\r'
		}
		if b == '\\' {
			v.escaped = true
			return false
		}
	}
	return isValueEnd(v.quote, b)
}

func trailingZeros(m uint64) int {
	n := 0
	for m&1 == 0 {
		m >>= 1
		n++
	}
	return n
}

// eof finishes every scanner at the end of the stream.
func (w *Writer) eof() {
	for i := 0; i < w.nVals; i++ {
		v := &w.vals[i]
		switch {
		case v.committed:
			w.release(v)
		case v.kind == kindToken && w.s.triggers[v.trig].exact == 0 && v.n > 0:
			w.addInterval(v.start, w.pos, ruleMarker, prioRule)
		case v.kind == kindKey && v.phase == 2 && v.n > 0:
			w.addInterval(v.start, w.pos, ruleMarker, prioRule)
		case v.kind == kindEmail:
			w.finishEmail(v)
		case v.kind == kindURLUser:
			// No '@' yet: not a URL with a password.
		}
	}
	w.nVals = 0
}
