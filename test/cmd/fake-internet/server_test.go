package main

import (
	"bufio"
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net"
	"net/http"
	"net/netip"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/miekg/dns"
	"go.uber.org/goleak"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

// lockedBuffer is an io.Writer safe for the server's goroutines.
type lockedBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *lockedBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *lockedBuffer) records(t *testing.T) []Record {
	b.mu.Lock()
	defer b.mu.Unlock()
	var rs []Record
	sc := bufio.NewScanner(bytes.NewReader(b.buf.Bytes()))
	for sc.Scan() {
		var r Record
		if err := json.Unmarshal(sc.Bytes(), &r); err != nil {
			t.Fatalf("line %q is not a Record: %v", sc.Text(), err)
		}
		rs = append(rs, r)
	}
	return rs
}

func TestFakeInternet(t *testing.T) {
	out := &lockedBuffer{}
	s, err := Start(Config{
		HTTPAddr:    "127.0.0.1:0",
		HTTPSAddr:   "127.0.0.1:0",
		UDPEchoAddr: "127.0.0.1:0",
		DNSAddr:     "127.0.0.1:0",
		Names:       map[string]netip.Addr{"api.example.test": netip.MustParseAddr("10.9.8.7")},
		Out:         out,
	})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()

	t.Run("http request is recorded with its body", func(t *testing.T) {
		resp, err := http.Post("http://"+s.Addr("http").String()+"/leak?k=v", "text/plain", strings.NewReader("exfil"))
		if err != nil {
			t.Fatal(err)
		}
		io.Copy(io.Discard, resp.Body)
		resp.Body.Close()
		rs := out.records(t)
		last := rs[len(rs)-1]
		if last.Scheme != "http" || last.Path != "/leak" || last.Query != "k=v" || last.Body != "exfil" {
			t.Errorf("got %+v, want scheme http, path /leak, query k=v, body exfil", last)
		}
	})

	t.Run("https certificate covers the names and SNI is recorded", func(t *testing.T) {
		roots := x509.NewCertPool()
		if !roots.AppendCertsFromPEM(s.CertPEM()) {
			t.Fatal("CertPEM holds no certificate")
		}
		addr := s.Addr("https").String()
		conn, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: "api.example.test"})
		if err != nil {
			t.Fatalf("TLS to api.example.test: %v", err)
		}
		io.WriteString(conn, "GET /s HTTP/1.1\r\nHost: api.example.test\r\nConnection: close\r\n\r\n")
		resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		conn.Close()
		if resp.StatusCode != 200 {
			t.Errorf("got status %d, want 200", resp.StatusCode)
		}
		rs := out.records(t)
		last := rs[len(rs)-1]
		if last.Scheme != "https" || last.SNI != "api.example.test" {
			t.Errorf("got scheme %q sni %q, want https api.example.test", last.Scheme, last.SNI)
		}
		if _, err := tls.Dial("tcp", addr, &tls.Config{RootCAs: roots, ServerName: "other.test"}); err == nil {
			t.Error("TLS to other.test: got nil error, want a certificate name mismatch")
		}
	})

	t.Run("udp echo", func(t *testing.T) {
		c, err := net.Dial("udp", s.Addr("udp-echo").String())
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		c.Write([]byte("ping"))
		buf := make([]byte, 16)
		n, err := c.Read(buf)
		if err != nil || string(buf[:n]) != "ping" {
			t.Errorf("got %q, %v, want ping", buf[:n], err)
		}
	})

	dnsCases := []struct {
		name      string
		qname     string
		qtype     uint16
		wantRcode int
		wantA     string
	}{
		{"known name, A", "API.Example.Test.", dns.TypeA, dns.RcodeSuccess, "10.9.8.7"},
		{"known name, AAAA is empty", "api.example.test.", dns.TypeAAAA, dns.RcodeSuccess, ""},
		{"unknown name", "evil.test.", dns.TypeA, dns.RcodeNameError, ""},
	}
	for _, tc := range dnsCases {
		for _, network := range []string{"udp", "tcp"} {
			t.Run("dns "+network+" "+tc.name, func(t *testing.T) {
				m := new(dns.Msg)
				m.SetQuestion(tc.qname, tc.qtype)
				c := &dns.Client{Net: network, Timeout: 5 * time.Second}
				r, _, err := c.Exchange(m, s.Addr("dns").String())
				if err != nil {
					t.Fatal(err)
				}
				var gotA string
				for _, rr := range r.Answer {
					if a, ok := rr.(*dns.A); ok {
						gotA = a.A.String()
					}
				}
				if r.Rcode != tc.wantRcode || gotA != tc.wantA {
					t.Errorf("got rcode %d A %q, want rcode %d A %q", r.Rcode, gotA, tc.wantRcode, tc.wantA)
				}
			})
		}
	}

	if err := s.Close(); err != nil {
		t.Errorf("Close: %v", err)
	}
	if err := s.Close(); err != nil {
		t.Errorf("second Close: %v", err)
	}
}

func TestNamesFlag(t *testing.T) {
	cases := []struct {
		name, arg string
		wantErr   bool
	}{
		{"ok", "API.example.test.=10.0.0.1", false},
		{"no equals", "api.example.test", true},
		{"IPv6", "api.example.test=::1", true},
		{"empty name", "=10.0.0.1", true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			n := names{}
			err := n.Set(tc.arg)
			if (err != nil) != tc.wantErr {
				t.Fatalf("Set(%q): got error %v, want error %v", tc.arg, err, tc.wantErr)
			}
			if !tc.wantErr && n["api.example.test"] != netip.MustParseAddr("10.0.0.1") {
				t.Errorf("got %v, want api.example.test=10.0.0.1 (lowercased, no trailing dot)", n)
			}
		})
	}
}
