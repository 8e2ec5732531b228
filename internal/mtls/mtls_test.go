package mtls_test

import (
	"crypto/tls"
	"net"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/mtls"
	"github.com/cordon-dev/cordon/test/spiffedev"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/svid/x509svid"
)

// TestHandshakes: a client and server built here agree; a server with
// another SPIFFE ID, a client of another trust domain and a client that
// offers TLS 1.2 at most are refused.
func TestHandshakes(t *testing.T) {
	ca, err := spiffedev.NewCA("cordon.test")
	if err != nil {
		t.Fatal(err)
	}
	other, err := spiffedev.NewCA("other.test")
	if err != nil {
		t.Fatal(err)
	}
	mint := func(ca *spiffedev.CA, path string) *x509svid.SVID {
		s, err := ca.MintX509SVID(spiffeid.RequireFromPath(ca.TrustDomain(), path), time.Hour)
		if err != nil {
			t.Fatal(err)
		}
		return s
	}
	serverID := spiffeid.RequireFromPath(ca.TrustDomain(), "/dispatcher")
	server := mtls.ServerConfig(mint(ca, "/dispatcher"), ca.Bundle(), ca.TrustDomain())
	job := mint(ca, "/org/acme/job/j")

	tooOld := mtls.ClientConfig(job, ca.Bundle(), serverID)
	tooOld.MinVersion, tooOld.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	for _, tc := range []struct {
		name   string
		client *tls.Config
		ok     bool
	}{
		{"matching", mtls.ClientConfig(job, ca.Bundle(), serverID), true},
		{"server is not the one asked for", mtls.ClientConfig(job, ca.Bundle(), spiffeid.RequireFromPath(ca.TrustDomain(), "/xds")), false},
		{"client of another trust domain", mtls.ClientConfig(mint(other, "/org/acme/job/j"), ca.Bundle(), serverID), false},
		{"client offers TLS 1.2 at most", tooOld, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := handshake(t, tc.client, server); (got == nil) != tc.ok {
				t.Errorf("handshake: got %v, want success %v", got, tc.ok)
			}
		})
	}
	if c := mtls.ClientConfig(job, ca.Bundle(), serverID); c.MinVersion != tls.VersionTLS13 || server.MinVersion != tls.VersionTLS13 {
		t.Errorf("MinVersion: client %x, server %x; want TLS 1.3 (%x) for both", c.MinVersion, server.MinVersion, tls.VersionTLS13)
	}
}

// handshake runs one TLS handshake over loopback TCP (buffered, so
// neither side's alert waits for the other to read) and returns the first
// error of either side.
func handshake(t *testing.T, client, server *tls.Config) error {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	deadline := time.Now().Add(5 * time.Second)
	srvErr := make(chan error, 1)
	go func() {
		s, err := l.Accept()
		if err != nil {
			srvErr <- err
			return
		}
		defer s.Close()
		s.SetDeadline(deadline)
		conn := tls.Server(s, server)
		err = conn.Handshake()
		if err == nil {
			// A TLS 1.3 client finishes before the server has checked its
			// certificate: read once so a refused one surfaces here.
			_, err = conn.Read(make([]byte, 1))
		}
		srvErr <- err
	}()
	c, err := net.Dial("tcp", l.Addr().String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(deadline)
	conn := tls.Client(c, client)
	err = conn.Handshake()
	if err == nil {
		_, err = conn.Write([]byte("x"))
	}
	if serr := <-srvErr; err == nil {
		err = serr
	}
	return err
}
