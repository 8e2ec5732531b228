// Package h1 reads and writes HTTP/1.1 message heads for the egress proxy,
// strictly and without allocating.
//
// A proxy that parses with net/http and writes with it again changes every
// message it forwards: header names are canonicalised ("x-api-key"
// becomes "X-Api-Key"), fields are re-sorted, and it spends more time
// allocating maps and strings than the kernel spends moving the bytes. h1
// parses a complete head (through its empty line, already in memory) into
// slices of that memory, and the proxy writes the fields it keeps back out
// in the order and spelling the client used.
//
// Strictness is the point: h1 accepts a subset of what net/http accepts
// (FuzzRequestAgreesWithNetHTTP checks it), so that no request can mean
// one thing to this proxy and another to the server behind it:
//   - lines end in CRLF (a bare LF is tolerated, as RFC 9112 section 2.2
//     allows; a bare CR anywhere is an error);
//   - the method and field names are tokens; the request target has no
//     whitespace or control characters; the version is exactly HTTP/1.1 or HTTP/1.0;
//   - field values hold no control characters but HTAB; a line starting
//     with whitespace (obs-fold, a classic smuggling vector) is an error;
//   - framing (Content-Length, Transfer-Encoding) is decided by
//     RequestFraming and ResponseFraming, which refuse every ambiguity.
package h1

import (
	"bytes"
	"errors"
	"iter"
	"strconv"
)

// Field is one header field: its name as sent and its value without the
// surrounding whitespace. Both alias the parsed head.
type Field struct {
	Name, Value []byte
}

// Head is a parsed request or response head. Its slices alias the bytes
// it was parsed from; Fields is reused across parses.
type Head struct {
	// Request line.
	Method, Target []byte
	// Status line.
	Status int
	Reason []byte
	// Minor is the minor version: HTTP/1.Minor, 0 or 1.
	Minor  int
	Fields []Field
}

// Error is a parse error: what was wrong, for logs (never the bytes
// themselves, which may carry secrets).
type Error string

func (e Error) Error() string { return "h1: " + string(e) }

const (
	errNoEnd        = Error("head does not end in an empty line")
	errRequestLine  = Error("malformed request line")
	errStatusLine   = Error("malformed status line")
	errVersion      = Error("unsupported HTTP version (want HTTP/1.1 or HTTP/1.0)")
	errBareCR       = Error("bare CR in head")
	errObsFold      = Error("obsolete line folding")
	errFieldName    = Error("malformed header field name")
	errFieldValue   = Error("control character in header field value")
	errTooManyField = Error("too many header fields")
	errTarget       = Error("malformed request target")
)

// MaxFields bounds the number of header fields in one head.
const MaxFields = 256

// HeadEnd returns the length of the head at the start of buf, through its
// empty line, or 0 when buf does not hold a whole head yet. from is where
// an earlier call stopped searching (0 the first time).
func HeadEnd(buf []byte, from int) int {
	for i := max(0, from-2); i < len(buf); i++ {
		if buf[i] != '\n' {
			continue
		}
		if i+1 < len(buf) && buf[i+1] == '\n' {
			return i + 2
		}
		if i+2 < len(buf) && buf[i+1] == '\r' && buf[i+2] == '\n' {
			return i + 3
		}
	}
	return 0
}

// ParseRequest parses a complete request head (through its empty line).
func ParseRequest(head []byte, h *Head) error {
	*h = Head{Fields: h.Fields[:0]}
	line, rest, err := nextLine(head)
	if err != nil {
		return err
	}
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 || !isToken(line[:sp1]) {
		return errRequestLine
	}
	h.Method = line[:sp1]
	line = line[sp1+1:]
	sp2 := bytes.IndexByte(line, ' ')
	if sp2 <= 0 {
		return errRequestLine
	}
	h.Target = line[:sp2]
	for _, c := range h.Target {
		// Bytes above 0x7f pass (net/http takes them too): a Unicode
		// host name is normalised and matched by the proxy, and the
		// proxy percent-encodes them in the path it sends on.
		if c <= ' ' || c == 0x7f {
			return errRequestLine
		}
	}
	if !validTarget(h.Method, h.Target) {
		return errTarget
	}
	if h.Minor, err = parseVersion(line[sp2+1:]); err != nil {
		return err
	}
	return parseFields(rest, h)
}

// ParseResponse parses a complete response head (through its empty line).
func ParseResponse(head []byte, h *Head) error {
	*h = Head{Fields: h.Fields[:0]}
	line, rest, err := nextLine(head)
	if err != nil {
		return err
	}
	// HTTP/1.1 SP 3DIGIT [SP reason-phrase]
	if len(line) < 12 || line[8] != ' ' {
		return errStatusLine
	}
	if h.Minor, err = parseVersion(line[:8]); err != nil {
		return err
	}
	code := line[9:12]
	if code[0] < '1' || code[0] > '5' || !isDigit(code[1]) || !isDigit(code[2]) {
		return errStatusLine
	}
	h.Status = int(code[0]-'0')*100 + int(code[1]-'0')*10 + int(code[2]-'0')
	if len(line) > 12 {
		if line[12] != ' ' {
			return errStatusLine
		}
		h.Reason = line[13:]
		for _, c := range h.Reason {
			if c < ' ' && c != '\t' || c == 0x7f {
				return errStatusLine
			}
		}
	}
	return parseFields(rest, h)
}

// validTarget checks the form of a request target (RFC 9112 section 3.2):
// authority form for CONNECT, otherwise origin form ("/..."), asterisk
// form ("*") or absolute form ("scheme:..."); and every percent sign
// starts an escape of two hex digits.
func validTarget(method, t []byte) bool {
	for i := 0; i < len(t); i++ {
		if t[i] == '%' && (i+2 >= len(t) || !isHex(t[i+1]) || !isHex(t[i+2])) {
			return false
		}
	}
	switch {
	case string(method) == "CONNECT":
		return t[0] != '/'
	case t[0] == '/', string(t) == "*":
		return true
	}
	colon := bytes.IndexByte(t, ':')
	if colon <= 0 {
		return false
	}
	for i, c := range t[:colon] {
		alpha := 'a' <= c && c <= 'z' || 'A' <= c && c <= 'Z'
		if !alpha && (i == 0 || !(isDigit(c) || c == '+' || c == '-' || c == '.')) {
			return false
		}
	}
	return true
}

func isHex(c byte) bool { return isDigit(c) || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F' }

func parseVersion(v []byte) (int, error) {
	switch string(v) {
	case "HTTP/1.1":
		return 1, nil
	case "HTTP/1.0":
		return 0, nil
	}
	return 0, errVersion
}

// nextLine splits the first line off b, without its CRLF or LF.
func nextLine(b []byte) (line, rest []byte, err error) {
	nl := bytes.IndexByte(b, '\n')
	if nl < 0 {
		return nil, nil, errNoEnd
	}
	line, rest = b[:nl], b[nl+1:]
	if len(line) > 0 && line[len(line)-1] == '\r' {
		line = line[:len(line)-1]
	}
	if bytes.IndexByte(line, '\r') >= 0 {
		return nil, nil, errBareCR
	}
	return line, rest, nil
}

func parseFields(b []byte, h *Head) error {
	for {
		line, rest, err := nextLine(b)
		if err != nil {
			return err
		}
		b = rest
		if len(line) == 0 {
			if len(b) != 0 {
				return errNoEnd // bytes after the empty line: not one head
			}
			return nil
		}
		if line[0] == ' ' || line[0] == '\t' {
			return errObsFold
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 || !isToken(line[:colon]) {
			return errFieldName // includes whitespace before the colon
		}
		v := trimOWS(line[colon+1:])
		for _, c := range v {
			if c < ' ' && c != '\t' || c == 0x7f {
				return errFieldValue
			}
		}
		if len(h.Fields) == MaxFields {
			return errTooManyField
		}
		h.Fields = append(h.Fields, Field{Name: line[:colon], Value: v})
	}
}

// Get returns the value of the one field named name (ASCII
// case-insensitive) and the number of fields with that name (0: absent;
// more than 1: the value is the last).
func (h *Head) Get(name string) (last []byte, n int) {
	for _, f := range h.Fields {
		if EqualFold(f.Name, name) {
			n++
			last = f.Value
		}
	}
	return last, n
}

// Tokens yields the items of every comma-separated list field named name
// (Connection, Transfer-Encoding), without their surrounding whitespace;
// empty items are skipped.
func (h *Head) Tokens(name string) iter.Seq[[]byte] {
	return func(yield func([]byte) bool) {
		for _, f := range h.Fields {
			if !EqualFold(f.Name, name) {
				continue
			}
			for item := range bytes.SplitSeq(f.Value, []byte(",")) {
				if item = trimOWS(item); len(item) > 0 && !yield(item) {
					return
				}
			}
		}
	}
}

// HasToken reports whether a list field named name lists token.
func (h *Head) HasToken(name, token string) bool {
	for item := range h.Tokens(name) {
		if EqualFold(item, token) {
			return true
		}
	}
	return false
}

// Framing is how a message body is delimited.
type Framing struct {
	// Length is the body length from Content-Length (0 for a request with
	// neither field); -1 when the body is chunked or runs to the end of
	// the connection.
	Length  int64
	Chunked bool
	// Declared reports that the message had a Content-Length field (a
	// request may say "Content-Length: 0"; one without it has no body).
	Declared bool
}

const (
	errTE           = Error("unsupported Transfer-Encoding (only a single \"chunked\" is accepted)")
	errCLandTE      = Error("both Content-Length and Transfer-Encoding")
	errCL           = Error("malformed Content-Length")
	errCLConflict   = Error("conflicting Content-Length fields")
	errTEinHTTP10   = Error("Transfer-Encoding in an HTTP/1.0 message")
	errMultipleHost = Error("more than one Host field")
)

// RequestFraming decides how a request's body is delimited, refusing
// every ambiguity RFC 9112 section 6 leaves a server to resolve: both
// Content-Length and Transfer-Encoding, more than one Content-Length, a
// transfer coding other than one "chunked", Transfer-Encoding in HTTP/1.0.
// A request with neither has no body. It also checks the Host field:
// at most one (an absolute-form target names the destination, so a
// missing Host is tolerated; the proxy writes its own).
func RequestFraming(h *Head) (Framing, error) {
	if _, n := h.Get("Host"); n > 1 {
		return Framing{}, errMultipleHost
	}
	cl, nCL := h.Get("Content-Length")
	te, nTE := h.Get("Transfer-Encoding")
	switch {
	case nTE > 0 && nCL > 0:
		return Framing{}, errCLandTE
	case nTE > 0:
		if h.Minor == 0 {
			return Framing{}, errTEinHTTP10
		}
		if nTE > 1 || !EqualFold(te, "chunked") {
			return Framing{}, errTE
		}
		return Framing{Length: -1, Chunked: true}, nil
	case nCL > 1:
		return Framing{}, errCLConflict
	case nCL == 1:
		n, err := parseLength(cl)
		if err != nil {
			return Framing{}, err
		}
		return Framing{Length: n, Declared: true}, nil
	}
	return Framing{Length: 0}, nil
}

// ResponseFraming decides how a response's body is delimited (RFC 9112
// section 6.3): none for HEAD requests and 1xx, 204 and 304 answers;
// chunked when Transfer-Encoding is exactly "chunked"; Content-Length
// (repeated identical values are tolerated, as the RFC allows); otherwise
// until the connection closes (Length -1, not Chunked).
func ResponseFraming(h *Head, head bool) (Framing, error) {
	// The framing fields are checked even where they do not apply: an
	// answer that is malformed there is not trusted elsewhere either.
	te, nTE := h.Get("Transfer-Encoding")
	nCL := 0
	length := int64(-1)
	for _, f := range h.Fields {
		if !EqualFold(f.Name, "Content-Length") {
			continue
		}
		n, err := parseLength(f.Value)
		if err != nil {
			return Framing{}, err
		}
		if nCL > 0 && n != length {
			return Framing{}, errCLConflict
		}
		nCL++
		length = n
	}
	switch {
	case nTE > 0 && nCL > 0:
		return Framing{}, errCLandTE
	case nTE > 0 && h.Minor == 0:
		return Framing{}, errTEinHTTP10
	case nTE > 0 && (nTE > 1 || !EqualFold(te, "chunked")):
		return Framing{}, errTE
	case head || h.Status < 200 || h.Status == 204 || h.Status == 304:
		return Framing{Length: 0, Declared: nCL > 0}, nil
	case nTE > 0:
		return Framing{Length: -1, Chunked: true}, nil
	}
	return Framing{Length: length, Declared: nCL > 0}, nil
}

// parseLength parses a Content-Length value: 1 to 18 decimal digits.
func parseLength(v []byte) (int64, error) {
	if len(v) == 0 || len(v) > 18 {
		return 0, errCL
	}
	var n int64
	for _, c := range v {
		if !isDigit(c) {
			return 0, errCL
		}
		n = n*10 + int64(c-'0')
	}
	return n, nil
}

// AppendStatusLine appends "HTTP/1.1 CODE REASON\r\n".
func AppendStatusLine(b []byte, code int, reason []byte) []byte {
	b = append(b, "HTTP/1.1 "...)
	b = strconv.AppendInt(b, int64(code), 10)
	b = append(b, ' ')
	b = append(b, reason...)
	return append(b, "\r\n"...)
}

// AppendField appends "name: value\r\n".
func AppendField(b, name, value []byte) []byte {
	b = append(b, name...)
	b = append(b, ": "...)
	b = append(b, value...)
	return append(b, "\r\n"...)
}

func trimOWS(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// EqualFold is ASCII case-insensitive equality of b and s (header names
// and tokens are ASCII; no Unicode folding, so "K" never matches a
// Kelvin sign).
func EqualFold[S string | []byte](b []byte, s S) bool {
	if len(b) != len(s) {
		return false
	}
	for i := range len(b) {
		x, y := b[i], s[i]
		if 'A' <= x && x <= 'Z' {
			x += 'a' - 'A'
		}
		if 'A' <= y && y <= 'Z' {
			y += 'a' - 'A'
		}
		if x != y {
			return false
		}
	}
	return true
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }

// tchar per RFC 9110 section 5.6.2.
var tchar = [256]bool{}

func init() {
	for c := '0'; c <= '9'; c++ {
		tchar[c] = true
	}
	for c := 'a'; c <= 'z'; c++ {
		tchar[c] = true
		tchar[c-'a'+'A'] = true
	}
	for _, c := range "!#$%&'*+-.^_`|~" {
		tchar[c] = true
	}
}

func isToken(b []byte) bool {
	if len(b) == 0 {
		return false
	}
	for _, c := range b {
		if !tchar[c] {
			return false
		}
	}
	return true
}

// ErrTrailerTooLarge is returned by DiscardTrailer for a trailer section
// longer than its limit.
var ErrTrailerTooLarge = errors.New("h1: chunked trailer section too large")
