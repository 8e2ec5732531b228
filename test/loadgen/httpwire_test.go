package loadgen

import (
	"bufio"
	"errors"
	"io"
	"strings"
	"testing"
)

func TestReadResponse(t *testing.T) {
	tests := []struct {
		name      string
		in        string
		connect   bool
		wantHead  responseHead
		wantBody  int64
		wantErr   bool
		wantAfter string // bytes left for the next message
	}{
		{
			name:     "content-length keep-alive",
			in:       "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhelloNEXT",
			wantHead: responseHead{status: 200, contentLength: 5}, wantBody: 5, wantAfter: "NEXT",
		},
		{
			name:     "connection close",
			in:       "HTTP/1.1 200 OK\r\nconnection: Keep-Alive, CLOSE\r\ncontent-length: 1\r\n\r\nx",
			wantHead: responseHead{status: 200, contentLength: 1, close: true}, wantBody: 1,
		},
		{
			name:     "http/1.0 closes by default",
			in:       "HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\nxy",
			wantHead: responseHead{status: 200, contentLength: 2, close: true}, wantBody: 2,
		},
		{
			name:     "http/1.0 keep-alive",
			in:       "HTTP/1.0 200 OK\r\nProxy-Connection: keep-alive\r\nContent-Length: 2\r\n\r\nxy",
			wantHead: responseHead{status: 200, contentLength: 2}, wantBody: 2,
		},
		{
			name:     "chunked with extension and trailer",
			in:       "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3;x=y\r\nabc\r\nA\r\n0123456789\r\n0\r\nTrailer: 1\r\n\r\nNEXT",
			wantHead: responseHead{status: 200, contentLength: -1, chunked: true}, wantBody: 13, wantAfter: "NEXT",
		},
		{
			name:     "no length reads to eof and closes",
			in:       "HTTP/1.1 200 OK\r\n\r\nall of this",
			wantHead: responseHead{status: 200, contentLength: -1, close: true}, wantBody: 11,
		},
		{
			name:     "connect 200 has no body",
			in:       "HTTP/1.1 200 Connection established\r\nContent-Length: 99\r\n\r\nTUNNEL",
			connect:  true,
			wantHead: responseHead{status: 200}, wantAfter: "TUNNEL",
		},
		{
			name:     "interim 100 skipped",
			in:       "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n",
			wantHead: responseHead{status: 403},
		},
		{
			name:     "bare LF line endings",
			in:       "HTTP/1.1 204 No Content\n\n",
			wantHead: responseHead{status: 204},
		},
		{name: "conflicting lengths", in: "HTTP/1.1 200 OK\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n", wantErr: true},
		{name: "negative length", in: "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n", wantErr: true},
		{name: "not http", in: "SSH-2.0-OpenSSH\r\n\r\n", wantErr: true},
		{name: "http/2 status line", in: "HTTP/2.0 200 OK\r\n\r\n", wantErr: true},
		{name: "header without colon", in: "HTTP/1.1 200 OK\r\nbroken\r\n\r\n", wantErr: true},
		{name: "truncated head", in: "HTTP/1.1 200 OK\r\nContent-Le", wantErr: true},
		{name: "truncated body", in: "HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nabc", wantHead: responseHead{status: 200, contentLength: 10}, wantBody: 3, wantErr: true},
		{name: "bad chunk size", in: "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", wantHead: responseHead{status: 200, contentLength: -1, chunked: true}, wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			br := bufio.NewReaderSize(strings.NewReader(tt.in), 64)
			h, err := readResponseHead(br, tt.connect)
			var n int64
			if err == nil {
				n, err = discardBody(br, h)
			}
			if (err != nil) != tt.wantErr {
				t.Fatalf("got error %v, want error %v", err, tt.wantErr)
			}
			if err != nil && !tt.wantErr {
				return
			}
			if tt.wantErr && h.status == 0 {
				return
			}
			if h != tt.wantHead {
				t.Errorf("head: got %+v, want %+v", h, tt.wantHead)
			}
			if n != tt.wantBody {
				t.Errorf("body: got %d bytes, want %d", n, tt.wantBody)
			}
			if !tt.wantErr {
				rest, _ := io.ReadAll(br)
				if string(rest) != tt.wantAfter {
					t.Errorf("left over: got %q, want %q", rest, tt.wantAfter)
				}
			}
		})
	}
}

func TestReadResponseLineTooLong(t *testing.T) {
	br := bufio.NewReaderSize(strings.NewReader("HTTP/1.1 200 OK\r\nX: "+strings.Repeat("a", 100)+"\r\n\r\n"), 32)
	if _, err := readResponseHead(br, false); !errors.Is(err, errMalformed) {
		t.Errorf("got %v, want errMalformed", err)
	}
}

func TestReadRequest(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    requestHead
		wantErr bool
	}{
		{"origin form small", "GET /small HTTP/1.1\r\nHost: a\r\n\r\n", requestHead{get: true, path: pathSmall}, false},
		{"absolute form big", "GET http://upstream.bench.test:80/big?x=1 HTTP/1.1\r\n\r\n", requestHead{get: true, path: pathBig}, false},
		{"absolute form without path", "GET http://upstream.bench.test HTTP/1.1\r\n\r\n", requestHead{get: true, path: pathOther}, false},
		{"other path", "GET /smaller HTTP/1.1\r\n\r\n", requestHead{get: true}, false},
		{"http/1.0 closes", "GET /small HTTP/1.0\r\n\r\n", requestHead{get: true, path: pathSmall, close: true}, false},
		{"http/1.0 keep-alive", "GET /small HTTP/1.0\r\nConnection: keep-alive\r\n\r\n", requestHead{get: true, path: pathSmall}, false},
		{"connection close", "GET /small HTTP/1.1\r\nConnection: close\r\n\r\n", requestHead{get: true, path: pathSmall, close: true}, false},
		{"post with body", "POST /small HTTP/1.1\r\nContent-Length: 4\r\n\r\n", requestHead{path: pathSmall, bodyLength: 4}, false},
		{"chunked body refused", "POST /small HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n", requestHead{path: pathSmall, bodyLength: -1}, false},
		{"no version", "GET /small\r\n\r\n", requestHead{}, true},
		{"bad version", "GET /small HTTP/9.9\r\n\r\n", requestHead{}, true},
		{"empty", "", requestHead{}, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := readRequestHead(bufio.NewReader(strings.NewReader(tt.in)))
			if (err != nil) != tt.wantErr {
				t.Fatalf("got error %v, want error %v", err, tt.wantErr)
			}
			if got != tt.want {
				t.Errorf("got %+v, want %+v", got, tt.want)
			}
		})
	}
}

func TestReadResponseDoesNotAllocate(t *testing.T) {
	msg := "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 3\r\nVia: 1.1 squid\r\n\r\nabc"
	r := strings.NewReader(msg)
	br := bufio.NewReader(r)
	allocs := testing.AllocsPerRun(100, func() {
		r.Reset(msg)
		br.Reset(r)
		h, err := readResponseHead(br, false)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := discardBody(br, h); err != nil {
			t.Fatal(err)
		}
	})
	if allocs != 0 {
		t.Errorf("got %v allocations per response, want 0", allocs)
	}
}

// FuzzReadResponse: whatever a proxy sends, the client parser returns
// without panicking, and a body never exceeds the input.
func FuzzReadResponse(f *testing.F) {
	f.Add([]byte("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello"), false)
	f.Add([]byte("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n3\r\nabc\r\n0\r\n\r\n"), false)
	f.Add([]byte("HTTP/1.0 200 Connection established\r\n\r\n"), true)
	f.Fuzz(func(t *testing.T, in []byte, connect bool) {
		br := bufio.NewReaderSize(strings.NewReader(string(in)), 64)
		h, err := readResponseHead(br, connect)
		if err != nil {
			return
		}
		if h.status < 100 || h.status > 999 {
			t.Fatalf("accepted status %d", h.status)
		}
		n, _ := discardBody(br, h)
		if n > int64(len(in)) {
			t.Fatalf("discarded %d body bytes from %d input bytes", n, len(in))
		}
	})
}

// FuzzReadRequest: whatever a proxy forwards, the upstream parser returns
// without panicking.
func FuzzReadRequest(f *testing.F) {
	f.Add([]byte("GET /small HTTP/1.1\r\nHost: upstream.bench.test:1\r\nVia: 1.1 squid\r\n\r\n"))
	f.Add([]byte("GET http://upstream.bench.test:1/big HTTP/1.0\r\nConnection: close\r\n\r\n"))
	f.Fuzz(func(t *testing.T, in []byte) {
		h, err := readRequestHead(bufio.NewReaderSize(strings.NewReader(string(in)), 64))
		if err == nil && h.bodyLength < -1 {
			t.Fatalf("body length %d", h.bodyLength)
		}
	})
}
