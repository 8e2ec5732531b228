package loadgen

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
)

// This file holds the little HTTP/1.1 the load tool speaks: reading one
// response head and discarding its body on the client side, and reading one
// request head on the upstream side. Both work on bufio.Reader.ReadSlice, so a
// request or response that fits the reader's buffer costs no allocation.

// errMalformed marks input that is not the HTTP/1.1 this tool understands.
var errMalformed = errors.New("malformed http message")

// maxHeaderLines bounds a head so hostile or broken input cannot keep a reader
// busy forever.
const maxHeaderLines = 128

var (
	hdrContentLength   = []byte("Content-Length")
	hdrTransferEnc     = []byte("Transfer-Encoding")
	hdrConnection      = []byte("Connection")
	hdrProxyConnection = []byte("Proxy-Connection")
	tokClose           = []byte("close")
	tokKeepAlive       = []byte("keep-alive")
	tokChunked         = []byte("chunked")
)

// responseHead is what the client needs to know about a response.
type responseHead struct {
	status        int
	contentLength int64 // -1 when absent
	chunked       bool
	// close is true when the connection cannot carry another request after
	// this response (Connection: close, or HTTP/1.0 without keep-alive).
	close bool
}

// readLine returns the next line without its CRLF or LF. The slice is only
// valid until the next read from br.
func readLine(br *bufio.Reader) ([]byte, error) {
	line, err := br.ReadSlice('\n')
	if err != nil {
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, fmt.Errorf("%w: line longer than %d bytes", errMalformed, br.Size())
		}
		if errors.Is(err, io.EOF) && len(line) > 0 {
			return nil, io.ErrUnexpectedEOF
		}
		return nil, err
	}
	line = line[:len(line)-1]
	if n := len(line); n > 0 && line[n-1] == '\r' {
		line = line[:n-1]
	}
	return line, nil
}

// hasToken reports whether the comma-separated list v contains tok,
// ignoring case and surrounding blanks.
func hasToken(v, tok []byte) bool {
	for len(v) > 0 {
		var item []byte
		if i := bytes.IndexByte(v, ','); i >= 0 {
			item, v = v[:i], v[i+1:]
		} else {
			item, v = v, nil
		}
		if bytes.EqualFold(trimBlank(item), tok) {
			return true
		}
	}
	return false
}

// lastToken returns the last item of a comma-separated list.
func lastToken(v []byte) []byte {
	if i := bytes.LastIndexByte(v, ','); i >= 0 {
		v = v[i+1:]
	}
	return trimBlank(v)
}

func trimBlank(b []byte) []byte {
	for len(b) > 0 && (b[0] == ' ' || b[0] == '\t') {
		b = b[1:]
	}
	for len(b) > 0 && (b[len(b)-1] == ' ' || b[len(b)-1] == '\t') {
		b = b[:len(b)-1]
	}
	return b
}

// parseDecimal parses a non-negative decimal below 2^62.
func parseDecimal(b []byte) (int64, bool) {
	if len(b) == 0 || len(b) > 18 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		if c < '0' || c > '9' {
			return 0, false
		}
		n = n*10 + int64(c-'0')
	}
	return n, true
}

// parseHex parses a chunk size: hex digits, optionally followed by ";ext".
func parseHex(b []byte) (int64, bool) {
	if i := bytes.IndexByte(b, ';'); i >= 0 {
		b = b[:i]
	}
	b = trimBlank(b)
	if len(b) == 0 || len(b) > 15 {
		return 0, false
	}
	var n int64
	for _, c := range b {
		var d byte
		switch {
		case c >= '0' && c <= '9':
			d = c - '0'
		case c >= 'a' && c <= 'f':
			d = c - 'a' + 10
		case c >= 'A' && c <= 'F':
			d = c - 'A' + 10
		default:
			return 0, false
		}
		n = n<<4 | int64(d)
	}
	return n, true
}

// headerFields is the part of a head both sides care about.
type headerFields struct {
	contentLength int64 // -1 when absent
	chunked       bool
	transferEnc   bool // any Transfer-Encoding at all
	close         bool
	keepAlive     bool
}

// readHeaderFields reads header lines up to and including the empty line.
func readHeaderFields(br *bufio.Reader) (headerFields, error) {
	f := headerFields{contentLength: -1}
	for n := 0; ; n++ {
		if n == maxHeaderLines {
			return f, fmt.Errorf("%w: more than %d header lines", errMalformed, maxHeaderLines)
		}
		line, err := readLine(br)
		if err != nil {
			return f, err
		}
		if len(line) == 0 {
			return f, nil
		}
		colon := bytes.IndexByte(line, ':')
		if colon <= 0 {
			return f, fmt.Errorf("%w: header line without a name", errMalformed)
		}
		name, value := line[:colon], trimBlank(line[colon+1:])
		switch {
		case bytes.EqualFold(name, hdrContentLength):
			cl, ok := parseDecimal(value)
			if !ok || (f.contentLength >= 0 && cl != f.contentLength) {
				return f, fmt.Errorf("%w: bad Content-Length", errMalformed)
			}
			f.contentLength = cl
		case bytes.EqualFold(name, hdrTransferEnc):
			f.transferEnc = true
			f.chunked = bytes.EqualFold(lastToken(value), tokChunked)
		case bytes.EqualFold(name, hdrConnection), bytes.EqualFold(name, hdrProxyConnection):
			f.close = f.close || hasToken(value, tokClose)
			f.keepAlive = f.keepAlive || hasToken(value, tokKeepAlive)
		}
	}
}

// parseVersion checks "HTTP/1.x" and reports whether it is HTTP/1.0.
func parseVersion(v []byte) (http10 bool, ok bool) {
	if len(v) != 8 || !bytes.HasPrefix(v, []byte("HTTP/1.")) {
		return false, false
	}
	switch v[7] {
	case '0':
		return true, true
	case '1':
		return false, true
	}
	return false, false
}

// readResponseHead reads a status line and headers. For a response to
// CONNECT, pass connect=true: a 2xx then has no body whatever its headers say.
// Interim 1xx responses are skipped.
func readResponseHead(br *bufio.Reader, connect bool) (responseHead, error) {
	for {
		line, err := readLine(br)
		if err != nil {
			return responseHead{}, err
		}
		// "HTTP/1.1 200 OK": version, space, three digits, then space or end.
		if len(line) < 12 || line[8] != ' ' || (len(line) > 12 && line[12] != ' ') {
			return responseHead{}, fmt.Errorf("%w: bad status line", errMalformed)
		}
		http10, ok := parseVersion(line[:8])
		status, ok2 := parseDecimal(line[9:12])
		if !ok || !ok2 || status < 100 || status > 999 {
			return responseHead{}, fmt.Errorf("%w: bad status line", errMalformed)
		}
		f, err := readHeaderFields(br)
		if err != nil {
			return responseHead{}, err
		}
		if status < 200 && status != 101 {
			continue
		}
		h := responseHead{
			status:        int(status),
			contentLength: f.contentLength,
			chunked:       f.chunked,
			close:         f.close || (http10 && !f.keepAlive),
		}
		switch {
		case connect && status/100 == 2, status == 204, status == 304, status == 101:
			h.contentLength, h.chunked = 0, false
		case f.transferEnc && !f.chunked:
			// An encoding we cannot frame: the body runs to the end.
			h.contentLength, h.close = -1, true
		case f.chunked:
			h.contentLength = -1
		case f.contentLength < 0:
			h.close = true
		}
		return h, nil
	}
}

// discardBody reads and drops the body described by h and returns its size.
// A body without length runs to EOF; the caller must close the connection.
func discardBody(br *bufio.Reader, h responseHead) (int64, error) {
	switch {
	case h.chunked:
		return discardChunked(br)
	case h.contentLength >= 0:
		n, err := br.Discard(int(h.contentLength))
		if err != nil && errors.Is(err, io.EOF) {
			err = io.ErrUnexpectedEOF
		}
		return int64(n), err
	default:
		return io.Copy(io.Discard, br)
	}
}

func discardChunked(br *bufio.Reader) (int64, error) {
	var total int64
	for {
		line, err := readLine(br)
		if err != nil {
			return total, err
		}
		size, ok := parseHex(line)
		if !ok {
			return total, fmt.Errorf("%w: bad chunk size", errMalformed)
		}
		if size == 0 {
			for n := 0; ; n++ { // trailers, then the final empty line
				if n == maxHeaderLines {
					return total, fmt.Errorf("%w: too many trailer lines", errMalformed)
				}
				line, err := readLine(br)
				if err != nil {
					return total, err
				}
				if len(line) == 0 {
					return total, nil
				}
			}
		}
		d, err := br.Discard(int(size))
		total += int64(d)
		if err != nil {
			return total, err
		}
		line, err = readLine(br)
		if err != nil {
			return total, err
		}
		if len(line) != 0 {
			return total, fmt.Errorf("%w: chunk not followed by CRLF", errMalformed)
		}
	}
}

// upstreamPath says which resource a request asked for.
type upstreamPath int

const (
	pathOther upstreamPath = iota
	pathSmall
	pathBig
)

// requestHead is what the upstream needs to know about a request.
type requestHead struct {
	get   bool // GET (or HEAD is refused: the upstream serves GET only)
	path  upstreamPath
	close bool // the client wants the connection closed after the response
	// bodyLength is the request body size to skip; -1 means a body this
	// upstream cannot frame (Transfer-Encoding), so it answers and closes.
	bodyLength int64
}

var (
	pathSmallBytes = []byte("/small")
	pathBigBytes   = []byte("/big")
)

// readRequestHead reads a request line and headers. The target may be in
// origin form ("/small") or absolute form ("http://host:port/small"), since
// some proxies forward the latter.
func readRequestHead(br *bufio.Reader) (requestHead, error) {
	line, err := readLine(br)
	if err != nil {
		return requestHead{}, err
	}
	sp1 := bytes.IndexByte(line, ' ')
	if sp1 <= 0 {
		return requestHead{}, fmt.Errorf("%w: bad request line", errMalformed)
	}
	rest := line[sp1+1:]
	sp2 := bytes.IndexByte(rest, ' ')
	if sp2 <= 0 {
		return requestHead{}, fmt.Errorf("%w: bad request line", errMalformed)
	}
	http10, ok := parseVersion(rest[sp2+1:])
	if !ok {
		return requestHead{}, fmt.Errorf("%w: bad request version", errMalformed)
	}
	var h requestHead
	h.get = string(line[:sp1]) == "GET" // no allocation: compiler-optimised comparison
	target := rest[:sp2]
	if len(target) > 7 && bytes.EqualFold(target[:7], []byte("http://")) {
		target = target[7:]
		if i := bytes.IndexByte(target, '/'); i >= 0 {
			target = target[i:]
		} else {
			target = nil
		}
	}
	if i := bytes.IndexByte(target, '?'); i >= 0 {
		target = target[:i]
	}
	switch {
	case bytes.Equal(target, pathSmallBytes):
		h.path = pathSmall
	case bytes.Equal(target, pathBigBytes):
		h.path = pathBig
	}
	f, err := readHeaderFields(br)
	if err != nil {
		return requestHead{}, err
	}
	h.close = f.close || (http10 && !f.keepAlive)
	switch {
	case f.transferEnc:
		h.bodyLength = -1
	case f.contentLength > 0:
		h.bodyLength = f.contentLength
	}
	return h, nil
}
