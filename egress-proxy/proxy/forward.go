package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"strings"
	"sync/atomic"

	"github.com/cordon-dev/cordon/egress-proxy/policy"
)

// isHopByHop reports whether a canonical header name describes one
// connection, not the message (RFC 9110 section 7.6.1: Connection,
// Keep-Alive, TE, Trailer, Transfer-Encoding, Upgrade), or is the
// proxy's own (every Proxy-* field).
func isHopByHop(name string) bool {
	switch name {
	case "Connection", "Keep-Alive", "Te", "Trailer", "Transfer-Encoding", "Upgrade":
		return true
	}
	return strings.HasPrefix(name, "Proxy-")
}

// stripHopByHop deletes the hop-by-hop fields of h and those its
// Connection fields name. It walks h once and allocates nothing.
func stripHopByHop(h http.Header) {
	for _, f := range h["Connection"] {
		for name := range strings.SplitSeq(f, ",") {
			if name = strings.TrimSpace(name); name != "" {
				h.Del(name)
			}
		}
	}
	for name := range h {
		if isHopByHop(name) {
			delete(h, name)
		}
	}
}

// forward sends an allowed plain HTTP request upstream and the response
// back. Redirects are returned to the client, never followed.
func (s *Server) forward(ctx context.Context, cc *clientConn, js *jobState, req *http.Request, chk checked, o *outcome) bool {
	deadline := o.start.Add(s.lim.TotalTimeout)
	// The request is rewritten in place (it is this proxy's own, read from
	// the client); what the client asked about its connection is kept.
	reqClose := req.Close
	out := req
	out.RequestURI = ""
	authorityStr := chk.target.String()
	if chk.target.Port == 80 {
		authorityStr = chk.target.Host.String()
		if chk.target.Addr.Is6() {
			authorityStr = "[" + authorityStr + "]"
		}
	}
	out.URL.Host = authorityStr
	out.Host = authorityStr
	expect := strings.EqualFold(out.Header.Get("Expect"), "100-continue")
	stripHopByHop(out.Header)
	out.Header.Del("Expect")
	if _, ok := out.Header["User-Agent"]; !ok {
		out.Header["User-Agent"] = []string{""} // add none of our own
	}
	out.Close = false
	if expect {
		cc.conn.Write([]byte("HTTP/1.1 100 Continue\r\n\r\n"))
	}
	var sent atomic.Int64
	body := req.Body
	if body != nil && body != http.NoBody {
		out.Body = &countingReader{r: body, n: &sent}
	}

	addrs := chk.addrs
	if s.cfg.Gateway != nil {
		addrs = gatewayKey
	}
	resp, uc, err := s.send(ctx, js.pool, addrs, out, deadline)
	if err != nil {
		var de *dialError
		switch {
		case errors.As(err, &de):
			o.decision, o.reason = decisionError, de.reason
		case isTimeout(err) || errors.Is(err, context.DeadlineExceeded):
			o.decision, o.reason = decisionError, policy.ReasonDialTimeout
		default:
			o.decision, o.reason = decisionError, policy.ReasonUpstreamError
		}
		s.deny(ctx, cc, o)
		return false
	}
	if s.cfg.Gateway != nil {
		if r := gatewayRefusal(resp); r != policy.ReasonNone {
			resp.Body.Close()
			uc.c.Close()
			o.decision, o.reason = decisionFor(r), r
			s.deny(ctx, cc, o)
			return false
		}
	}
	// Only the proxy decides: a destination must not forge a refusal (a
	// sidecar behind this gateway would take it for the gateway's).
	resp.Header.Del(DenyReasonHeader)
	o.addr = uc.ap
	upstreamClose := resp.Close
	stripHopByHop(resp.Header)
	var recv atomic.Int64
	resp.Body = &countingReader{r: resp.Body, n: &recv}
	keep := !reqClose && req.ProtoAtLeast(1, 1)
	resp.Close = !keep
	resp.Proto, resp.ProtoMajor, resp.ProtoMinor = "HTTP/1.1", 1, 1
	if !req.ProtoAtLeast(1, 1) && resp.ContentLength < 0 {
		resp.TransferEncoding = nil // HTTP/1.0 client: body until close
	}
	bw := s.writers.Get().(*bufio.Writer)
	bw.Reset(cc.conn)
	werr := resp.Write(bw) // reads the upstream body to its end, or fails
	if werr == nil {
		werr = bw.Flush()
	}
	bw.Reset(nil)
	s.writers.Put(bw)
	resp.Body.Close()
	if werr == nil && !upstreamClose {
		// The deadline stays: nothing reads or writes an idle pooled
		// connection, and send sets a new one before reusing it.
		js.pool.put(uc)
	} else {
		uc.c.Close()
	}
	o.status = resp.StatusCode
	o.bytes = sent.Load() + recv.Load()
	s.m.bytesUp.Add(float64(sent.Load()))
	s.m.bytesDown.Add(float64(recv.Load()))
	s.record(ctx, o)
	if werr != nil {
		return false
	}
	// The next request starts after this one's body: finish reading it,
	// or close when it is too long to be worth it.
	if body != nil {
		n, _ := io.CopyN(io.Discard, body, 256<<10)
		if n == 256<<10 {
			return false
		}
	}
	return keep
}

// countingReader counts bytes per Read call (no per-byte work).
type countingReader struct {
	r io.ReadCloser
	n *atomic.Int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func (c *countingReader) Close() error { return c.r.Close() }
