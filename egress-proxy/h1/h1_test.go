package h1

import (
	"bufio"
	"bytes"
	"errors"
	"io"
	"net/http"
	"net/http/httputil"
	"strings"
	"testing"
)

func TestParseRequestKeepsOrderAndSpelling(t *testing.T) {
	raw := "GET http://a.test/p?q=1 HTTP/1.1\r\nhost: a.test\r\nx-api-KEY:  v1 \t\r\nAccept: */*\r\nx-api-key: v2\r\n\r\n"
	var h Head
	if err := ParseRequest([]byte(raw), &h); err != nil {
		t.Fatal(err)
	}
	if string(h.Method) != "GET" || string(h.Target) != "http://a.test/p?q=1" || h.Minor != 1 {
		t.Fatalf("request line: %q %q 1.%d", h.Method, h.Target, h.Minor)
	}
	want := []string{"host=a.test", "x-api-KEY=v1", "Accept=*/*", "x-api-key=v2"}
	var got []string
	for _, f := range h.Fields {
		got = append(got, string(f.Name)+"="+string(f.Value))
	}
	if strings.Join(got, "|") != strings.Join(want, "|") {
		t.Fatalf("fields %q, want %q", got, want)
	}
	if v, n := h.Get("X-API-Key"); n != 2 || string(v) != "v2" {
		t.Fatalf("Get: %q, %d", v, n)
	}
}

func TestParseRequestRefuses(t *testing.T) {
	for _, tt := range []struct {
		name, raw string
		want      error
	}{
		{"no empty line", "GET / HTTP/1.1\r\nHost: a\r\n", errNoEnd},
		{"bytes after the head", "GET / HTTP/1.1\r\n\r\nGET", errNoEnd},
		{"bare CR in field", "GET / HTTP/1.1\r\nX: a\rb\r\n\r\n", errBareCR},
		{"bare CR in request line", "GET /\r HTTP/1.1\r\n\r\n", errBareCR},
		{"obs-fold", "GET / HTTP/1.1\r\nX: a\r\n b\r\n\r\n", errObsFold},
		{"tab fold", "GET / HTTP/1.1\r\nX: a\r\n\tb\r\n\r\n", errObsFold},
		{"space before colon", "GET / HTTP/1.1\r\nHost : a\r\n\r\n", errFieldName},
		{"empty name", "GET / HTTP/1.1\r\n: a\r\n\r\n", errFieldName},
		{"no colon", "GET / HTTP/1.1\r\nHost\r\n\r\n", errFieldName},
		{"non-token name", "GET / HTTP/1.1\r\nX(y): a\r\n\r\n", errFieldName},
		{"NUL in value", "GET / HTTP/1.1\r\nX: a\x00b\r\n\r\n", errFieldValue},
		{"DEL in value", "GET / HTTP/1.1\r\nX: a\x7fb\r\n\r\n", errFieldValue},
		{"HTTP/2.0", "GET / HTTP/2.0\r\n\r\n", errVersion},
		{"lower-case version", "GET / http/1.1\r\n\r\n", errVersion},
		{"HTTP/0.9 style", "GET /\r\n\r\n", errRequestLine},
		{"two spaces", "GET  / HTTP/1.1\r\n\r\n", errRequestLine},
		{"non-token method", "G(T / HTTP/1.1\r\n\r\n", errRequestLine},
		{"control in target", "GET /\x01 HTTP/1.1\r\n\r\n", errRequestLine},
		{"DEL in target", "GET /\x7f HTTP/1.1\r\n\r\n", errRequestLine},
		{"trailing space", "GET / HTTP/1.1 \r\n\r\n", errVersion},
		{"no scheme", "GET a.test/ HTTP/1.1\r\n\r\n", errTarget},
		{"bad escape", "GET http://a/%zz HTTP/1.1\r\n\r\n", errTarget},
		{"cut escape", "GET http://a/%2 HTTP/1.1\r\n\r\n", errTarget},
		{"CONNECT origin form", "CONNECT /x HTTP/1.1\r\n\r\n", errTarget},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var h Head
			if err := ParseRequest([]byte(tt.raw), &h); !errors.Is(err, tt.want) {
				t.Fatalf("got %v, want %v", err, tt.want)
			}
		})
	}
	var h Head
	raw := "GET / HTTP/1.1\r\n" + strings.Repeat("X: y\r\n", MaxFields+1) + "\r\n"
	if err := ParseRequest([]byte(raw), &h); !errors.Is(err, errTooManyField) {
		t.Fatalf("too many fields: got %v", err)
	}
}

func TestRequestFraming(t *testing.T) {
	for _, tt := range []struct {
		name, fields string
		minor        string
		want         Framing
		err          error
	}{
		{"none", "", "1", Framing{Length: 0}, nil},
		{"length", "Content-Length: 12\r\n", "1", Framing{Length: 12, Declared: true}, nil},
		{"zero length", "Content-Length: 0\r\n", "1", Framing{Length: 0, Declared: true}, nil},
		{"chunked", "Transfer-Encoding: Chunked\r\n", "1", Framing{Length: -1, Chunked: true}, nil},
		{"CL and TE", "Content-Length: 3\r\nTransfer-Encoding: chunked\r\n", "1", Framing{}, errCLandTE},
		{"two CL, same value", "Content-Length: 3\r\nContent-Length: 3\r\n", "1", Framing{}, errCLConflict},
		{"CL list", "Content-Length: 3, 3\r\n", "1", Framing{}, errCL},
		{"signed CL", "Content-Length: +3\r\n", "1", Framing{}, errCL},
		{"hex CL", "Content-Length: 0x3\r\n", "1", Framing{}, errCL},
		{"huge CL", "Content-Length: 1234567890123456789\r\n", "1", Framing{}, errCL},
		{"empty CL", "Content-Length: \r\n", "1", Framing{}, errCL},
		{"gzip, chunked", "Transfer-Encoding: gzip, chunked\r\n", "1", Framing{}, errTE},
		{"chunked twice", "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n", "1", Framing{}, errTE},
		{"chunked with junk", "Transfer-Encoding: chunkedx\r\n", "1", Framing{}, errTE},
		{"TE in HTTP/1.0", "Transfer-Encoding: chunked\r\n", "0", Framing{}, errTEinHTTP10},
		{"two Hosts", "Host: a\r\nHost: b\r\n", "1", Framing{}, errMultipleHost},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var h Head
			if err := ParseRequest([]byte("POST http://a/ HTTP/1."+tt.minor+"\r\n"+tt.fields+"\r\n"), &h); err != nil {
				t.Fatal(err)
			}
			got, err := RequestFraming(&h)
			if !errors.Is(err, tt.err) || err == nil && got != tt.want {
				t.Fatalf("got %+v, %v; want %+v, %v", got, err, tt.want, tt.err)
			}
		})
	}
}

func TestResponseFraming(t *testing.T) {
	for _, tt := range []struct {
		name, head string
		isHead     bool
		want       Framing
		err        error
	}{
		{"length", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", false, Framing{Length: 5, Declared: true}, nil},
		{"same length twice", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\ncontent-length: 5\r\n\r\n", false, Framing{Length: 5, Declared: true}, nil},
		{"different lengths", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n", false, Framing{}, errCLConflict},
		{"chunked", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", false, Framing{Length: -1, Chunked: true}, nil},
		{"CL and TE", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", false, Framing{}, errCLandTE},
		{"until close", "HTTP/1.1 200 OK\r\n\r\n", false, Framing{Length: -1}, nil},
		{"HEAD", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n", true, Framing{Length: 0, Declared: true}, nil},
		{"204", "HTTP/1.1 204 No Content\r\n\r\n", false, Framing{Length: 0}, nil},
		{"304 with length", "HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n", false, Framing{Length: 0, Declared: true}, nil},
		{"no reason", "HTTP/1.1 200\r\nContent-Length: 0\r\n\r\n", false, Framing{Length: 0, Declared: true}, nil},
	} {
		t.Run(tt.name, func(t *testing.T) {
			var h Head
			if err := ParseResponse([]byte(tt.head), &h); err != nil {
				t.Fatal(err)
			}
			got, err := ResponseFraming(&h, tt.isHead)
			if !errors.Is(err, tt.err) || err == nil && got != tt.want {
				t.Fatalf("got %+v, %v; want %+v, %v", got, err, tt.want, tt.err)
			}
		})
	}
}

func TestParseResponseRefuses(t *testing.T) {
	for _, raw := range []string{
		"HTTP/1.1 200OK\r\n\r\n",
		"HTTP/1.1 20 OK\r\n\r\n",
		"HTTP/1.1 600 Odd\r\n\r\n",
		"HTTP/1.1 2x0 OK\r\n\r\n",
		"HTTP/1.2 200 OK\r\n\r\n",
		"HTTP/1.1 200 O\x00K\r\n\r\n",
		"HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n",
		"HTTP/1.1 200 OK\r\nSet-Cookie: a\rb\r\n\r\n",
		"ICY 200 OK\r\n\r\n",
	} {
		var h Head
		if err := ParseResponse([]byte(raw), &h); err == nil {
			t.Errorf("%q: accepted, want an error", raw)
		}
	}
}

func TestHasToken(t *testing.T) {
	var h Head
	ParseRequest([]byte("GET / HTTP/1.1\r\nConnection: keep-alive , X-Secret\r\nconnection: CLOSE\r\n\r\n"), &h)
	for tok, want := range map[string]bool{"close": true, "x-secret": true, "keep-alive": true, "secret": false, "": false} {
		if got := h.HasToken("Connection", tok); got != want {
			t.Errorf("HasToken(%q) = %v, want %v", tok, got, want)
		}
	}
}

func TestCopyChunked(t *testing.T) {
	in := "3;ext=1\r\nabc\r\n10\r\n0123456789abcdef\r\n0\r\nX-Trailer: smuggled\r\n\r\nNEXT"
	br := bufio.NewReader(strings.NewReader(in))
	var out bytes.Buffer
	n, err := CopyChunked(&out, br, 1024, true)
	if err != nil || n != 19 {
		t.Fatalf("got %d, %v", n, err)
	}
	// Chunk boundaries may move; extensions and trailers must be gone.
	got := out.String()
	if strings.Contains(got, "ext") || strings.Contains(got, "Trailer") || !strings.HasSuffix(got, "\r\n0\r\n\r\n") {
		t.Fatalf("re-chunked %q", got)
	}
	if data, err := io.ReadAll(httputil.NewChunkedReader(strings.NewReader(got))); err != nil || string(data) != "abc0123456789abcdef" {
		t.Fatalf("re-chunked body decodes to %q, %v", data, err)
	}
	if rest, _ := io.ReadAll(br); string(rest) != "NEXT" {
		t.Fatalf("left %q after the body, want the next message", rest)
	}
	out.Reset()
	CopyChunked(&out, bufio.NewReader(strings.NewReader(in)), 1024, false)
	if out.String() != "abc0123456789abcdef" {
		t.Fatalf("plain copy %q", out.String())
	}
	for name, bad := range map[string]string{
		"bad size":      "x\r\nabc\r\n0\r\n\r\n",
		"short chunk":   "5\r\nabc",
		"no last chunk": "3\r\nabc\r\n",
		"long trailer":  "0\r\nX: " + strings.Repeat("y", 2000) + "\r\n\r\n",
		"no CRLF":       "3\r\nabcX\r\n0\r\n\r\n",
	} {
		if _, err := CopyChunked(io.Discard, bufio.NewReader(strings.NewReader(bad)), 1024, true); err == nil {
			t.Errorf("%s: accepted", name)
		}
	}
}

func TestCopyN(t *testing.T) {
	br := bufio.NewReaderSize(strings.NewReader(strings.Repeat("a", 100)+"rest"), 16)
	var out bytes.Buffer
	if n, err := CopyN(&out, br, 100); n != 100 || err != nil || out.Len() != 100 {
		t.Fatalf("got %d, %v, %d bytes", n, err, out.Len())
	}
	if n, err := CopyN(io.Discard, br, 10); n != 4 || !errors.Is(err, io.ErrUnexpectedEOF) {
		t.Fatalf("short body: got %d, %v", n, err)
	}
}

// FuzzResponseAgreesWithNetHTTP is the same check for response heads.
func FuzzResponseAgreesWithNetHTTP(f *testing.F) {
	for _, s := range []string{
		"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n",
		"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
		"HTTP/1.0 200 OK\r\n\r\n",
		"HTTP/1.1 304 Not Modified\r\nContent-Length: 5\r\n\r\n",
		"HTTP/1.1 200\r\nContent-Length: 5\r\nContent-Length: 5\r\n\r\n",
		"HTTP/1.1 100 Continue\r\n\r\n",
	} {
		f.Add([]byte(s), false)
	}
	f.Fuzz(func(t *testing.T, raw []byte, isHead bool) {
		end := HeadEnd(raw, 0)
		if end == 0 {
			return
		}
		raw = raw[:end]
		var h Head
		if ParseResponse(raw, &h) != nil {
			return
		}
		fr, err := ResponseFraming(&h, isHead)
		if err != nil {
			return
		}
		method := "GET"
		if isHead {
			method = "HEAD"
		}
		resp, err := http.ReadResponse(bufio.NewReader(bytes.NewReader(raw)), &http.Request{Method: method})
		if err != nil {
			t.Fatalf("h1 accepted what net/http refuses (%v): %q", err, raw)
		}
		if resp.StatusCode != h.Status || resp.ProtoMinor != h.Minor {
			t.Fatalf("status: net/http %d 1.%d, h1 %d 1.%d", resp.StatusCode, resp.ProtoMinor, h.Status, h.Minor)
		}
		bodyless := fr.Length == 0 && !fr.Chunked
		switch {
		case fr.Chunked && (len(resp.TransferEncoding) != 1 || resp.TransferEncoding[0] != "chunked"):
			t.Fatalf("h1 chunked, net/http %q", resp.TransferEncoding)
		case !fr.Chunked && !bodyless && resp.ContentLength != fr.Length:
			t.Fatalf("length: net/http %d, h1 %d", resp.ContentLength, fr.Length)
		}
	})
}

// TestParseDoesNotAllocate: parsing a head, reading its framing and walking
// its Connection tokens (what the proxy does per request) allocates nothing
// once the Fields slice has grown.
func TestParseDoesNotAllocate(t *testing.T) {
	raw := []byte("GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\nAccept: */*\r\n\r\n")
	var h Head
	allocs := testing.AllocsPerRun(100, func() {
		if err := ParseRequest(raw, &h); err != nil {
			t.Fatal(err)
		}
		if _, err := RequestFraming(&h); err != nil {
			t.Fatal(err)
		}
		for _, f := range h.Fields {
			for named := range h.Tokens("Connection") {
				_ = EqualFold(f.Name, named)
			}
		}
		_ = h.HasToken("Connection", "close")
	})
	if allocs != 0 {
		t.Fatalf("%.1f allocations per request head, want 0", allocs)
	}
}

// TestCopyDoesNotAllocate: copying a body into a *bufio.Writer (the
// proxy's writers) allocates nothing per chunk; CopyChunked only its
// decoder (httputil's chunked reader), not its 16 KiB buffer.
func TestCopyDoesNotAllocate(t *testing.T) {
	in := strings.Repeat("3\r\nabc\r\n", 10) + "0\r\n\r\n"
	sr := strings.NewReader(in)
	br := bufio.NewReaderSize(sr, 16)
	bw := bufio.NewWriter(io.Discard)
	for _, tt := range []struct {
		name string
		max  float64
		copy func() (int64, error)
	}{
		{"CopyN", 0, func() (int64, error) { return CopyN(bw, br, int64(len(in))) }},
		{"CopyToEOF, re-chunked", 0, func() (int64, error) { return CopyToEOF(bw, br, true) }},
		{"CopyChunked", 1, func() (int64, error) { return CopyChunked(bw, br, 1024, true) }},
	} {
		allocs := testing.AllocsPerRun(100, func() {
			sr.Reset(in)
			br.Reset(sr)
			if _, err := tt.copy(); err != nil {
				t.Fatalf("%s: %v", tt.name, err)
			}
		})
		if allocs > tt.max {
			t.Errorf("%s: got %.1f allocations per body, want at most %.0f", tt.name, allocs, tt.max)
		}
	}
}
