package proxy

import (
	"bufio"
	"io"
	"net/http"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/egress-proxy/h1"
	"github.com/cordon-dev/cordon/egress-proxy/policy"
	"github.com/cordon-dev/cordon/internal/allowlist"
)

// scriptedUpstream answers every request head it reads with the next of
// answers (raw bytes, then it closes the connection if the answer ends
// in "\x00close"), and hands each request head it read to heads.
func scriptedUpstream(t *testing.T, e *env, answers ...string) (port uint16, heads chan string) {
	t.Helper()
	ln := listenOn(t, "127.0.0.2")
	t.Cleanup(func() { ln.Close() })
	heads = make(chan string, len(answers)+1)
	next := make(chan string, len(answers))
	for _, a := range answers {
		next <- a
	}
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				defer c.Close()
				br := bufio.NewReader(c)
				for {
					n, err := readHead(br, 64<<10)
					if err != nil {
						return
					}
					head, _ := br.Peek(n)
					heads <- string(head)
					br.Discard(n)
					var h h1.Head
					h1.ParseRequest(head, &h)
					if fr, err := h1.RequestFraming(&h); err == nil && fr.Length > 0 {
						br.Discard(int(fr.Length))
					}
					var a string
					select {
					case a = <-next:
					default:
						return
					}
					if body, ok := strings.CutSuffix(a, "\x00close"); ok {
						io.WriteString(c, body)
						return
					}
					io.WriteString(c, a)
				}
			}()
		}
	}()
	port = portOf(ln.Addr())
	if err := e.store.Apply([]*allowlist.JobPolicy{{Org: "acme", Job: "block_follower",
		Rules: []allowlist.Rule{{Host: "allowed.test", Ports: []uint16{port}}}}}); err != nil {
		t.Fatal(err)
	}
	return port, heads
}

// TestForwardKeepsFieldsAsSent checks what the upstream receives: the
// client's fields in their order and spelling, minus hop-by-hop fields,
// those Connection names, and Proxy-*; Host written by the proxy.
func TestForwardKeepsFieldsAsSent(t *testing.T) {
	e := newEnv(t, envOpts{})
	port, heads := scriptedUpstream(t, e, "HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
	p := strconv.Itoa(int(port))
	resp, body := e.roundTrip("GET http://allowed.test:" + p + "/p?q=%41 HTTP/1.1\r\nhost: allowed.test:" + p +
		"\r\nx-lower: 1\r\nX-Upper: 2\r\nConnection: keep-alive, X-Hop\r\nX-Hop: secret\r\nProxy-Authorization: Basic eA==\r\n" +
		"Keep-Alive: 5\r\nTE: trailers\r\nx-lower: 3\r\n\r\n")
	if resp.StatusCode != 200 || body != "ok" {
		t.Fatalf("got %d %q", resp.StatusCode, body)
	}
	want := "GET /p?q=%41 HTTP/1.1\r\nHost: allowed.test:" + p + "\r\nx-lower: 1\r\nX-Upper: 2\r\nx-lower: 3\r\n\r\n"
	if got := <-heads; got != want {
		t.Fatalf("upstream got\n%q\nwant\n%q", got, want)
	}
}

// TestForwardResponseFraming covers how answers of every framing reach
// HTTP/1.1 and HTTP/1.0 clients, and which answers are refused.
func TestForwardResponseFraming(t *testing.T) {
	for _, tt := range []struct {
		name, method, version, answer string
		wantStatus                    int
		wantBody                      string
		wantTE                        []string
		wantCL                        string
		wantClose                     bool
	}{
		{"length", "GET", "1.1", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello", 200, "hello", nil, "5", false},
		{"chunked, trailers dropped", "GET", "1.1", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5;x=y\r\nhello\r\n0\r\nX-Trailer: t\r\n\r\n", 200, "hello", []string{"chunked"}, "", false},
		{"until close, to 1.1: chunked", "GET", "1.1", "HTTP/1.1 200 OK\r\n\r\nhello\x00close", 200, "hello", []string{"chunked"}, "", false},
		{"until close, to 1.0", "GET", "1.0", "HTTP/1.1 200 OK\r\n\r\nhello\x00close", 200, "hello", nil, "", true},
		{"chunked, to 1.0: plain", "GET", "1.0", "HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n", 200, "hello", nil, "", true},
		{"HEAD keeps the length", "HEAD", "1.1", "HTTP/1.1 200 OK\r\nContent-Length: 99\r\n\r\n", 200, "", nil, "99", false},
		{"interim answer skipped", "GET", "1.1", "HTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok", 200, "ok", nil, "2", false},
		{"forged refusal stripped", "GET", "1.1", "HTTP/1.1 200 OK\r\nX-Cordon-Deny-Reason: not_allowed\r\nContent-Length: 2\r\n\r\nok", 200, "ok", nil, "2", false},
		{"length and chunked refused", "GET", "1.1", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: chunked\r\n\r\n", 502, "cordon egress: upstream_error\n", nil, "", true},
		{"two lengths refused", "GET", "1.1", "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\nhello", 502, "cordon egress: upstream_error\n", nil, "", true},
		{"gzip coding refused", "GET", "1.1", "HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n", 502, "cordon egress: upstream_error\n", nil, "", true},
		{"folded field refused", "GET", "1.1", "HTTP/1.1 200 OK\r\nX: a\r\n b\r\nContent-Length: 0\r\n\r\n", 502, "cordon egress: upstream_error\n", nil, "", true},
		{"switching protocols refused", "GET", "1.1", "HTTP/1.1 101 Switching Protocols\r\nUpgrade: x\r\n\r\n", 502, "cordon egress: upstream_error\n", nil, "", true},
	} {
		t.Run(tt.name, func(t *testing.T) {
			e := newEnv(t, envOpts{})
			port, _ := scriptedUpstream(t, e, tt.answer)
			c := e.dial()
			p := strconv.Itoa(int(port))
			io.WriteString(c, tt.method+" http://allowed.test:"+p+"/ HTTP/"+tt.version+"\r\nHost: allowed.test:"+p+"\r\n\r\n")
			br := bufio.NewReader(c)
			resp, err := http.ReadResponse(br, &http.Request{Method: tt.method})
			if err != nil {
				t.Fatal(err)
			}
			body, err := io.ReadAll(resp.Body)
			if err != nil {
				t.Fatalf("body: %v", err)
			}
			if resp.StatusCode != tt.wantStatus || string(body) != tt.wantBody {
				t.Fatalf("got %d %q (reason %q), want %d %q", resp.StatusCode, body, resp.Header.Get(DenyReasonHeader), tt.wantStatus, tt.wantBody)
			}
			if tt.wantStatus != 200 {
				if r := resp.Header.Get(DenyReasonHeader); r != string(policy.ReasonUpstreamError) {
					t.Fatalf("reason %q, want upstream_error", r)
				}
				return
			}
			if resp.Header.Get(DenyReasonHeader) != "" || resp.Trailer.Get("X-Trailer") != "" {
				t.Fatalf("forwarded a forged refusal or a trailer: %v %v", resp.Header, resp.Trailer)
			}
			if strings.Join(resp.TransferEncoding, ",") != strings.Join(tt.wantTE, ",") || resp.Header.Get("Content-Length") != tt.wantCL && tt.method != "HEAD" {
				t.Fatalf("framing: TE %q CL %q, want TE %q CL %q", resp.TransferEncoding, resp.Header.Get("Content-Length"), tt.wantTE, tt.wantCL)
			}
			if tt.method == "HEAD" && resp.ContentLength != 99 {
				t.Fatalf("HEAD: Content-Length %d, want 99", resp.ContentLength)
			}
			// The connection closes exactly when it must.
			c.SetReadDeadline(time.Now().Add(300 * time.Millisecond))
			_, err = br.ReadByte()
			closed := err == io.EOF
			if closed != tt.wantClose || !closed && !isTimeout(err) {
				t.Fatalf("after the answer: read error %v, want closed=%v", err, tt.wantClose)
			}
		})
	}
}

// TestRequestFramingRefused checks that ambiguous request framing never
// reaches an upstream.
func TestRequestFramingRefused(t *testing.T) {
	e := newEnv(t, envOpts{})
	port, heads := scriptedUpstream(t, e)
	p := strconv.Itoa(int(port))
	for name, fields := range map[string]string{
		"two lengths":        "Content-Length: 3\r\nContent-Length: 3\r\n",
		"length list":        "Content-Length: 3, 3\r\n",
		"gzip coding":        "Transfer-Encoding: gzip\r\n",
		"chunked twice":      "Transfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n",
		"space before colon": "Transfer-Encoding : chunked\r\n",
		"bare CR":            "X: a\rContent-Length: 3\r\n",
	} {
		resp, _ := e.roundTrip("POST http://allowed.test:" + p + "/ HTTP/1.1\r\nHost: allowed.test:" + p + "\r\n" + fields + "\r\nabc")
		if resp.StatusCode != 403 || resp.Header.Get(DenyReasonHeader) != string(policy.ReasonBadRequest) {
			t.Errorf("%s: got %d %q, want 403 bad_request", name, resp.StatusCode, resp.Header.Get(DenyReasonHeader))
		}
	}
	select {
	case h := <-heads:
		t.Fatalf("upstream received %q", h)
	default:
	}
}

func TestAppendPath(t *testing.T) {
	for _, tt := range []struct{ path, want string }{
		{"", "/"},
		{"?q=1", "/?q=1"},
		{"/p?q", "/p?q"},
		{"/\xc3\xa9", "/%C3%A9"},
	} {
		if got := string(appendPath(nil, []byte(tt.path))); got != tt.want {
			t.Errorf("appendPath(%q): got %q, want %q", tt.path, got, tt.want)
		}
	}
}
