package loadgen

import (
	"bytes"
	"context"
	"io"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

// TestRelay: bytes go both ways unchanged, small messages and a bulk
// transfer past the switch to splice; a client's half-close reaches the
// upstream; ending ctx stops Relay and closes the open connections.
func TestRelay(t *testing.T) {
	// The upstream echoes everything, then closes its side at EOF.
	up, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer up.Close()
	go func() {
		for {
			c, err := up.Accept()
			if err != nil {
				return
			}
			go func() {
				io.Copy(c, c)
				c.(*net.TCPConn).CloseWrite()
			}()
		}
	}()
	env := filepath.Join(t.TempDir(), "relay.env")
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() {
		done <- Relay(ctx, RelayConfig{Listen: "127.0.0.1:0", To: netip.MustParseAddrPort(up.Addr().String()), EnvFile: env})
	}()
	var addr string
	for deadline := time.Now().Add(5 * time.Second); addr == "" && time.Now().Before(deadline); time.Sleep(10 * time.Millisecond) {
		if b, err := os.ReadFile(env); err == nil {
			addr = strings.TrimSpace(strings.TrimPrefix(string(b), "RELAY_ADDR="))
		}
	}
	if addr == "" {
		t.Fatal("relay wrote no env file")
	}

	c, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	for _, msg := range []string{"GET /small HTTP/1.1\r\n\r\n", "x"} {
		io.WriteString(c, msg)
		got := make([]byte, len(msg))
		if _, err := io.ReadFull(c, got); err != nil || string(got) != msg {
			t.Fatalf("small message: got %q, %v; want %q", got, err, msg)
		}
	}
	bulk := bytes.Repeat([]byte("0123456789abcdef"), 1<<16) // 1 MiB
	go func() {
		c.Write(bulk)
		c.(*net.TCPConn).CloseWrite()
	}()
	got, err := io.ReadAll(c)
	if err != nil || !bytes.Equal(got, bulk) {
		t.Fatalf("bulk: got %d bytes (equal: %v), %v; want the %d sent, then EOF", len(got), bytes.Equal(got, bulk), err, len(bulk))
	}

	// An idle connection is closed when the relay stops.
	idle, err := net.Dial("tcp", addr)
	if err != nil {
		t.Fatal(err)
	}
	defer idle.Close()
	io.WriteString(idle, "ping")
	idle.SetDeadline(time.Now().Add(5 * time.Second))
	if _, err := io.ReadFull(idle, make([]byte, 4)); err != nil {
		t.Fatal(err)
	}
	cancel()
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Relay: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Relay did not return after its context ended")
	}
	if n, err := idle.Read(make([]byte, 1)); err == nil {
		t.Fatalf("idle connection after stop: read %d bytes, want it closed", n)
	}
}

func TestRelayRefusesNonLoopback(t *testing.T) {
	for _, cfg := range []RelayConfig{
		{Listen: "127.0.0.1:0", To: netip.MustParseAddrPort("192.0.2.1:80")},
		{Listen: "0.0.0.0:0", To: netip.MustParseAddrPort("127.0.0.1:80")},
		{Listen: "localhost:0", To: netip.MustParseAddrPort("127.0.0.1:80")},
	} {
		err := Relay(context.Background(), cfg)
		if err == nil || !strings.Contains(err.Error(), "loopback") {
			t.Errorf("%+v: got %v, want a refusal of the non-loopback address", cfg, err)
		}
	}
}
