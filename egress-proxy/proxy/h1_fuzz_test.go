package proxy

import (
	"bufio"
	"bytes"
	"net/http"
	"net/textproto"
	"testing"

	"github.com/cordon-dev/cordon/egress-proxy/h1"
	"github.com/cordon-dev/cordon/egress-proxy/policy"
)

// FuzzRequestAgreesWithNetHTTP checks that the proxy is never more lenient
// than net/http about a request head and agrees with it on what it
// accepts: every head that h1 parses and parseTarget lets through
// (whatever the policy then says), net/http parses too, to the same
// method, target, version, field values and body framing. A head that
// meant one thing here and another to a server would be a smuggling route.
func FuzzRequestAgreesWithNetHTTP(f *testing.F) {
	for _, s := range []string{
		"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n\r\n",
		"POST http://a.test:8080/x?y HTTP/1.1\r\nHost: a.test:8080\r\nContent-Length: 3\r\n\r\n",
		"POST http://a.test/ HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
		"CONNECT a.test:443 HTTP/1.1\r\nHost: a.test:443\r\n\r\n",
		"CONNECT [::1]:443 HTTP/1.1\r\n\r\n",
		"GET http://a.test/ HTTP/1.0\r\nConnection: keep-alive\r\nX-A:\tb \r\n\r\n",
		"GET http://a.test/ HTTP/1.1\nHost: a.test\n\n",
		"GET http://a.test/ HTTP/1.1\r\nHost: a.test\r\n X: folded\r\n\r\n",
		"GET http://a.test/ HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n",
		"GET http://0x7f.1/%41?%zz HTTP/1.1\r\n\r\n",
		"GET HTTP://A.TEST:80 HTTP/1.1\r\nHost: a.test\r\n\r\n",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		end := h1.HeadEnd(raw, 0)
		if end == 0 {
			return
		}
		raw = raw[:end]
		req := &request{headLen: end}
		if h1.ParseRequest(raw, &req.Head) != nil {
			return
		}
		_, _, fr, reason := parseTarget(req)
		if reason != policy.ReasonNone {
			return
		}
		hr, err := http.ReadRequest(bufio.NewReader(bytes.NewReader(raw)))
		if err != nil {
			t.Fatalf("the proxy accepts what net/http refuses (%v): %q", err, raw)
		}
		if hr.Method != string(req.Method) || hr.RequestURI != string(req.Target) || hr.ProtoMinor != req.Minor {
			t.Fatalf("request line: net/http %q %q 1.%d, proxy %q %q 1.%d", hr.Method, hr.RequestURI, hr.ProtoMinor, req.Method, req.Target, req.Minor)
		}
		for _, fl := range req.Fields {
			key := textproto.CanonicalMIMEHeaderKey(string(fl.Name))
			if key == "Host" {
				continue // net/http reports the target's authority as Host; parseTarget checked they agree
			}
			if (key == "Transfer-Encoding" || key == "Content-Length") && len(hr.Header[key]) == 0 {
				continue // net/http moves framing fields out of Header
			}
			found := false
			for _, v := range hr.Header[key] {
				found = found || v == string(fl.Value)
			}
			if !found {
				t.Fatalf("field %s: proxy %q, net/http %q", key, fl.Value, hr.Header[key])
			}
		}
		switch {
		case fr.Chunked:
			if len(hr.TransferEncoding) != 1 || hr.TransferEncoding[0] != "chunked" {
				t.Fatalf("proxy: chunked, net/http %q", hr.TransferEncoding)
			}
		case hr.Method != http.MethodConnect && hr.ContentLength != fr.Length:
			t.Fatalf("length: net/http %d, proxy %d", hr.ContentLength, fr.Length)
		}
	})
}
