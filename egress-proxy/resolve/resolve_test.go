package resolve

import (
	"context"
	"errors"
	"slices"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/egress-proxy/internal/dnstest"
)

func TestDNS(t *testing.T) {
	srv := dnstest.Start(t)
	srv.Set("both.test", "127.0.0.2", "::1", "203.0.113.9")
	srv.Set("mapped.test", "::ffff:10.0.0.1")
	r, err := NewDNS(srv.Addr, DNSOptions{Timeout: time.Second})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	tests := []struct {
		name    string
		host    string
		want    []string
		wantErr error
	}{
		{"every answer", "both.test", []string{"127.0.0.2", "203.0.113.9", "::1"}, nil},
		{"case insensitive", "BOTH.test", []string{"127.0.0.2", "203.0.113.9", "::1"}, nil},
		{"mapped unmapped", "mapped.test", []string{"10.0.0.1"}, nil},
		{"nxdomain", "missing.test", nil, ErrNotFound},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			addrs, err := r.LookupNetIP(ctx, tt.host)
			if tt.wantErr != nil {
				if !errors.Is(err, tt.wantErr) {
					t.Fatalf("LookupNetIP(%s): got %v, %v, want %v", tt.host, addrs, err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("LookupNetIP(%s): %v", tt.host, err)
			}
			var got []string
			for _, a := range addrs {
				got = append(got, a.String())
			}
			slices.Sort(got)
			if !slices.Equal(got, tt.want) {
				t.Errorf("LookupNetIP(%s): got %v, want %v", tt.host, got, tt.want)
			}
		})
	}
}

func TestDNSCache(t *testing.T) {
	srv := dnstest.Start(t)
	srv.Set("zero.test", "127.0.0.2")
	srv.Set("cached.test", "127.0.0.3")
	srv.SetTTL("cached.test", 60)
	r, err := NewDNS(srv.Addr, DNSOptions{Timeout: time.Second, CacheMaxTTL: 30 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if _, err := r.LookupNetIP(context.Background(), "zero.test"); err != nil {
			t.Fatal(err)
		}
		if _, err := r.LookupNetIP(context.Background(), "cached.test"); err != nil {
			t.Fatal(err)
		}
	}
	if n := srv.Queries("zero.test"); n != 3 {
		t.Errorf("TTL 0 queries: got %d, want 3 (never cached)", n)
	}
	if n := srv.Queries("cached.test"); n != 1 {
		t.Errorf("TTL 60 queries: got %d, want 1 (cached)", n)
	}
	if got, ok := r.LookupCached("cached.test"); !ok || len(got) != 1 || got[0].String() != "127.0.0.3" {
		t.Errorf("LookupCached(cached.test): got %v, %v, want [127.0.0.3], true", got, ok)
	}
	for _, host := range []string{"zero.test", "never-asked.test"} {
		if got, ok := r.LookupCached(host); ok {
			t.Errorf("LookupCached(%s): got %v, true, want nothing (not cached)", host, got)
		}
	}
	off, _ := NewDNS(srv.Addr, DNSOptions{Timeout: time.Second})
	for range 2 {
		off.LookupNetIP(context.Background(), "cached.test")
	}
	if n := srv.Queries("cached.test"); n != 3 {
		t.Errorf("queries without a cache: got %d, want 3", n)
	}
}

func TestDNSUnreachable(t *testing.T) {
	r, err := NewDNS("127.0.0.1:1", DNSOptions{Timeout: 200 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	if _, err := r.LookupNetIP(context.Background(), "x.test"); err == nil {
		t.Fatal("LookupNetIP against a closed port: got nil error")
	}
}

func TestNewDNSBadServer(t *testing.T) {
	if _, err := NewDNS("127.0.0.1", DNSOptions{}); err == nil {
		t.Fatal("NewDNS without a port: got nil error")
	}
}

func TestSystemLiteral(t *testing.T) {
	addrs, err := System{}.LookupNetIP(context.Background(), "localhost")
	if err != nil {
		t.Skipf("system resolver cannot resolve localhost here: %v", err)
	}
	for _, a := range addrs {
		if !a.IsLoopback() {
			t.Errorf("localhost resolved to %v, want loopback", a)
		}
	}
}
