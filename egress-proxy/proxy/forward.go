package proxy

import (
	"bufio"
	"context"
	"errors"
	"io"
	"net/http"
	"strconv"

	"github.com/cordon-dev/cordon/egress-proxy/h1"
	"github.com/cordon-dev/cordon/egress-proxy/policy"
)

// isHopByHop reports whether a field describes one connection, not the
// message (RFC 9110 section 7.6.1: Connection, Keep-Alive, TE, Trailer,
// Transfer-Encoding, Upgrade), or is the proxy's own (every Proxy-*
// field).
func isHopByHop(name []byte) bool {
	switch len(name) {
	case 2:
		return h1.EqualFold(name, "TE")
	case 7:
		return h1.EqualFold(name, "Trailer") || h1.EqualFold(name, "Upgrade")
	case 10:
		return h1.EqualFold(name, "Connection") || h1.EqualFold(name, "Keep-Alive")
	case 17:
		return h1.EqualFold(name, "Transfer-Encoding")
	}
	return len(name) > 6 && h1.EqualFold(name[:6], "Proxy-")
}

// dropField reports whether a field of h is not forwarded: hop-by-hop,
// one the proxy writes itself (own), or named by a Connection field.
func dropField(h *h1.Head, f h1.Field, own ...string) bool {
	if isHopByHop(f.Name) {
		return true
	}
	for _, o := range own {
		if h1.EqualFold(f.Name, o) {
			return true
		}
	}
	for named := range h.Tokens("Connection") {
		if h1.EqualFold(f.Name, named) {
			return true
		}
	}
	return false
}

// forward sends an allowed plain HTTP request upstream and the response
// back. Redirects are returned to the client, never followed.
//
// Fields are forwarded in the client's order and spelling; the proxy
// writes Host (from the checked target), the framing fields and
// Connection itself, and drops hop-by-hop fields, those the client's
// Connection names, and Expect (it answers 100-continue itself).
func (s *Server) forward(ctx context.Context, cc *clientConn, js *jobState, req *request, path []byte, framing h1.Framing, chk checked, o *outcome) bool {
	deadline := o.start.Add(s.lim.TotalTimeout)
	clientKeep := req.Minor == 1 && !req.HasToken("Connection", "close")
	expect := false
	if v, n := req.Get("Expect"); n == 1 && h1.EqualFold(v, "100-continue") {
		expect = true
	}

	// The upstream head, built now: req's slices alias the read buffer,
	// which the body read below reuses.
	out := s.heads.Get().(*[]byte)
	defer s.heads.Put(out)
	b := append((*out)[:0], req.Method...)
	b = append(b, ' ')
	if s.cfg.Gateway != nil {
		b = append(b, "http://"...) // absolute form: the gateway is a proxy
		b = chk.target.AppendTo(b, 80)
	}
	b = appendPath(b, path)
	b = append(b, " HTTP/1.1\r\nHost: "...)
	b = chk.target.AppendTo(b, 80)
	b = append(b, "\r\n"...)
	for _, f := range req.Fields {
		if !dropField(&req.Head, f, "Host", "Expect", "Content-Length") {
			b = h1.AppendField(b, f.Name, f.Value)
		}
	}
	switch {
	case framing.Chunked:
		b = append(b, "Transfer-Encoding: chunked\r\n"...)
	case framing.Declared:
		b = append(b, "Content-Length: "...)
		b = strconv.AppendInt(b, framing.Length, 10)
		b = append(b, "\r\n"...)
	}
	b = append(b, "\r\n"...)
	*out = b
	head := b
	method := o.method
	cc.br.Discard(req.headLen)
	req = nil // its slices are stale from here on

	if expect {
		cc.conn.Write(continueLine)
	}
	body := func(w io.Writer) (int64, error) {
		switch {
		case framing.Chunked:
			return h1.CopyChunked(w, cc.br, s.lim.MaxHeaderBytes, true)
		case framing.Length > 0:
			return h1.CopyN(w, cc.br, framing.Length)
		}
		return 0, nil
	}
	replayable := !framing.Chunked && framing.Length == 0 &&
		(method == http.MethodGet || method == http.MethodHead || method == http.MethodOptions || method == http.MethodTrace)

	addrs := chk.addrs
	if s.cfg.Gateway != nil {
		addrs = gatewayKey
	}
	ex := &cc.ex
	if err := s.send(ctx, js.pool, addrs, head, body, replayable, method == http.MethodHead, deadline, ex); err != nil {
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
	uc, resp := ex.uc, &ex.resp
	if s.cfg.Gateway != nil {
		v, _ := resp.Get(DenyReasonHeader)
		if r := gatewayRefusal(string(v)); r != policy.ReasonNone {
			s.closeUpstream(uc)
			o.decision, o.reason = decisionFor(r), r
			s.deny(ctx, cc, o)
			return false
		}
	}
	o.addr = uc.ap
	o.status = resp.Status

	// The client's head: the status line, the upstream's fields minus
	// hop-by-hop ones and any X-Cordon-Deny-Reason (only the proxy
	// decides: a destination must not forge a refusal, which a sidecar
	// behind this gateway would take for the gateway's), then framing.
	bodyless := ex.framing.Length == 0 && !ex.framing.Chunked
	toEOF := ex.framing.Length < 0 && !ex.framing.Chunked
	// An HTTP/1.1 client gets a body of unknown length chunked and keeps
	// its connection; an HTTP/1.0 one gets it raw and then the close.
	rechunk := (ex.framing.Chunked || toEOF) && clientKeep
	b = h1.AppendStatusLine(b[:0], resp.Status, resp.Reason)
	for _, f := range resp.Fields {
		if dropField(resp, f, DenyReasonHeader, "Content-Length") {
			continue
		}
		b = h1.AppendField(b, f.Name, f.Value)
	}
	switch {
	case rechunk:
		b = append(b, "Transfer-Encoding: chunked\r\n"...)
	case ex.framing.Declared:
		// As sent, so also a HEAD or 304 answer's Content-Length: it
		// describes the representation, not this message's (absent) body.
		v, _ := resp.Get("Content-Length")
		b = h1.AppendField(b, []byte("Content-Length"), v)
	}
	if !clientKeep {
		b = append(b, "Connection: close\r\n"...)
	}
	b = append(b, "\r\n"...)
	*out = b
	uc.br.Discard(ex.headLen) // resp aliases uc.br: it is stale from here on

	bw := s.writers.Get().(*bufio.Writer)
	bw.Reset(cc.conn)
	_, werr := bw.Write(b)
	var recv int64
	var rerr error
	if werr == nil && !bodyless {
		switch {
		case ex.framing.Chunked:
			recv, rerr = h1.CopyChunked(bw, uc.br, s.lim.MaxHeaderBytes, rechunk)
		case toEOF:
			recv, rerr = h1.CopyToEOF(bw, uc.br, rechunk)
			if rerr == nil && rechunk {
				_, rerr = io.WriteString(bw, "0\r\n\r\n")
			}
		default:
			recv, rerr = h1.CopyN(bw, uc.br, ex.framing.Length)
		}
	}
	if werr == nil {
		werr = bw.Flush()
	}
	bw.Reset(nil)
	s.writers.Put(bw)
	if werr == nil && rerr == nil && ex.reusable && !toEOF {
		// The deadline stays: nothing reads or writes an idle pooled
		// connection, and send sets a new one before reusing it.
		s.poolUpstream(js.pool, uc)
	} else {
		s.closeUpstream(uc)
	}
	o.bytesOut, o.bytesIn = ex.sent, recv
	s.m.bytesUp.Add(float64(ex.sent))
	s.m.bytesDown.Add(float64(recv))
	s.record(ctx, o)
	return werr == nil && rerr == nil && clientKeep
}

// continueLine is the interim answer to "Expect: 100-continue".
var continueLine = []byte("HTTP/1.1 100 Continue\r\n\r\n")

// appendPath appends a request path and query in origin form: "/"
// first when path is empty or only a query, and bytes above 0x7f
// percent-encoded (a client may send raw UTF-8; a URI is ASCII).
func appendPath(b, path []byte) []byte {
	const hex = "0123456789ABCDEF"
	if len(path) == 0 || path[0] == '?' {
		b = append(b, '/')
	}
	for _, c := range path {
		if c < 0x80 {
			b = append(b, c)
			continue
		}
		b = append(b, '%', hex[c>>4], hex[c&15])
	}
	return b
}
