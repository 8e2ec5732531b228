package proxy

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"io"
	"net"
	"net/http"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/mtls"
	"github.com/cordon-dev/cordon/test/spiffedev"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
)

func TestGateway(t *testing.T) {
	e := newEnv(t, envOpts{})
	ca, err := spiffedev.NewCA("cordon.test")
	if err != nil {
		t.Fatal(err)
	}
	gwID := spiffeid.RequireFromString("spiffe://cordon.test/service/egress-gateway")
	gwSVID, err := ca.MintX509SVID(gwID, 0)
	if err != nil {
		t.Fatal(err)
	}
	srv, err := New(Config{Store: e.store, TrustDomain: ca.TrustDomain(), Resolver: e.srv.resolver,
		UnsafeAllowCIDRs: e.srv.cfg.UnsafeAllowCIDRs, Logger: e.srv.log})
	if err != nil {
		t.Fatal(err)
	}
	ln := listenOn(t, "127.0.0.1")
	done := make(chan error, 1)
	go func() {
		done <- srv.ServeTLS(context.Background(), ln, GatewayTLSConfig(gwSVID, ca.Bundle(), ca.TrustDomain()))
	}()
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		srv.Shutdown(ctx)
		if err := <-done; !errors.Is(err, ErrServerClosed) {
			t.Errorf("ServeTLS: got %v, want ErrServerClosed", err)
		}
	})

	other, err := spiffedev.NewCA("other.test")
	if err != nil {
		t.Fatal(err)
	}
	gwBundle := ca.Bundle()
	mint := func(signer *spiffedev.CA, id string) *tls.Config {
		svid, err := signer.MintX509SVID(spiffeid.RequireFromString(id), 0)
		if err != nil {
			t.Fatal(err)
		}
		// The client trusts the gateway's CA whatever its own CA is.
		return mtls.ClientConfig(svid, gwBundle, gwID)
	}
	tests := []struct {
		name       string
		conf       *tls.Config
		wantStatus int // 0: the connection is refused
		wantReason string
	}{
		{"job svid", mint(ca, "spiffe://cordon.test/org/acme/job/block_follower"), 200, ""},
		{"job without policy", mint(ca, "spiffe://cordon.test/org/acme/job/unknown"), 403, "no_policy"},
		{"malformed id", mint(ca, "spiffe://cordon.test/service/x"), 0, ""},
		{"extra segments", mint(ca, "spiffe://cordon.test/org/acme/job/block_follower/x"), 0, ""},
		{"other trust domain", mint(other, "spiffe://other.test/org/acme/job/block_follower"), 0, ""},
	}
	t.Run("tunnel over mtls", func(t *testing.T) {
		c, err := net.DialTimeout("tcp", ln.Addr().String(), 2*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		defer c.Close()
		c.SetDeadline(time.Now().Add(5 * time.Second))
		tc := tls.Client(c, mint(ca, "spiffe://cordon.test/org/acme/job/block_follower"))
		io.WriteString(tc, e.sub("CONNECT allowed.test:$HP HTTP/1.1\r\nHost: allowed.test:$HP\r\n\r\n"))
		br := bufio.NewReader(tc)
		resp, err := http.ReadResponse(br, &http.Request{Method: http.MethodConnect})
		if err != nil || resp.StatusCode != 200 {
			t.Fatalf("CONNECT: %v %v", resp, err)
		}
		io.WriteString(tc, "GET /through HTTP/1.1\r\nHost: allowed.test\r\nConnection: close\r\n\r\n")
		r2, err := http.ReadResponse(br, nil)
		if err != nil {
			t.Fatal(err)
		}
		body, _ := io.ReadAll(r2.Body)
		if string(body) != "ok GET /through 0" {
			t.Errorf("through the gateway tunnel: got %q, want ok GET /through 0", body)
		}
	})
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := net.DialTimeout("tcp", ln.Addr().String(), 2*time.Second)
			if err != nil {
				t.Fatal(err)
			}
			defer c.Close()
			c.SetDeadline(time.Now().Add(5 * time.Second))
			tc := tls.Client(c, tt.conf)
			io.WriteString(tc, e.sub(get("http://allowed.test:$HP/gw")))
			resp, err := http.ReadResponse(bufio.NewReader(tc), nil)
			if tt.wantStatus == 0 {
				if err == nil {
					t.Fatalf("got %d, want the connection refused", resp.StatusCode)
				}
				return
			}
			if err != nil {
				t.Fatalf("read response: %v", err)
			}
			if resp.StatusCode != tt.wantStatus || resp.Header.Get(DenyReasonHeader) != tt.wantReason {
				t.Errorf("got %d %q, want %d %q", resp.StatusCode, resp.Header.Get(DenyReasonHeader), tt.wantStatus, tt.wantReason)
			}
			if tc.ConnectionState().Version != tls.VersionTLS13 {
				t.Errorf("TLS version: got %x, want TLS 1.3", tc.ConnectionState().Version)
			}
		})
	}
}
