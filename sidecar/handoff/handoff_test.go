package handoff

import (
	"context"
	"encoding/json"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/goleak"
)

func serve(t *testing.T, cfg ServerConfig) (*Server, func()) {
	t.Helper()
	srv, err := Listen(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx) }()
	var once sync.Once
	return srv, func() {
		once.Do(func() {
			cancel()
			if err := <-done; err != nil {
				t.Errorf("Serve: %v", err)
			}
		})
	}
}

func TestHandoffOnceThenRefused(t *testing.T) {
	defer goleak.VerifyNone(t)
	sock := filepath.Join(t.TempDir(), "run", "agent.sock")
	var refusals []string
	handoffs := 0
	srv, stop := serve(t, ServerConfig{
		Socket: sock, UID: os.Getuid(),
		Env: Env{Secrets: map[string]string{"monad_rpc_key": "v-123456"}, ProxyURL: "http://127.0.0.1:3128",
			Extra: []Var{{Name: "AWS_CONTAINER_AUTHORIZATION_TOKEN", Value: "tok-abcdef", Secret: true}}},
		OnHandoff: func(uid, pid int) { handoffs++ },
		OnRefused: func(uid, pid int, reason string) { refusals = append(refusals, reason) },
	})
	defer stop()

	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if fi.Mode()&os.ModeSocket == 0 || fi.Mode().Perm() != 0o600 {
		t.Fatalf("socket mode %v, want a socket with 0600", fi.Mode())
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	env, err := Fetch(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	if env.Secrets["monad_rpc_key"] != "v-123456" || env.ProxyURL != "http://127.0.0.1:3128" {
		t.Fatalf("got %d secrets, proxy %q; want the configured env", len(env.Secrets), env.ProxyURL)
	}
	if len(env.Extra) != 1 || env.Extra[0] != (Var{Name: "AWS_CONTAINER_AUTHORIZATION_TOKEN", Value: "tok-abcdef", Secret: true}) {
		t.Fatalf("got extra %+v, want the token var", env.Extra)
	}
	if !srv.Served() {
		t.Fatal("Served() = false after a handoff")
	}
	_, err = Fetch(ctx, sock)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "already handed out") {
		t.Fatalf("second fetch: got %v, want ErrRefused (already handed out)", err)
	}
	if strings.Contains(err.Error(), "v-123456") {
		t.Fatalf("refusal leaks the value: %v", err)
	}
	stop()
	if handoffs != 1 || len(refusals) != 1 {
		t.Fatalf("got %d handoffs and %d refusals, want 1 and 1", handoffs, len(refusals))
	}
	if _, err := os.Stat(sock); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("socket still exists after shutdown: %v", err)
	}
}

func TestHandoffRefusesOtherUID(t *testing.T) {
	defer goleak.VerifyNone(t)
	if os.Getuid() != 0 {
		t.Skip("needs root to give the socket to another uid")
	}
	const jobUID = 4242
	sock := filepath.Join(t.TempDir(), "agent.sock")
	srv, stop := serve(t, ServerConfig{Socket: sock, UID: jobUID, Env: Env{Secrets: map[string]string{"k": "value-xyz"}}})
	defer stop()
	fi, err := os.Stat(sock)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != jobUID {
		t.Fatalf("socket owner uid %d, want %d", st.Uid, jobUID)
	}
	// Root can open any socket file; the peer-credential check must still
	// refuse it.
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, err = Fetch(ctx, sock)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "peer uid 0 is not the job's uid 4242") {
		t.Fatalf("got %v, want a refusal naming the uids", err)
	}
	if srv.Served() {
		t.Fatal("a refused peer consumed the handoff")
	}
}

func TestFetchNoAgent(t *testing.T) {
	_, err := Fetch(context.Background(), filepath.Join(t.TempDir(), "none.sock"))
	if err == nil || !strings.Contains(err.Error(), "is cordon-sidecar agent running") {
		t.Fatalf("got %v, want an error saying the agent is not there", err)
	}
}

func TestReportNeedsTheTokenAndIsTakenOnce(t *testing.T) {
	defer goleak.VerifyNone(t)
	sock := filepath.Join(t.TempDir(), "agent.sock")
	var mu sync.Mutex
	var reports []string
	_, stop := serve(t, ServerConfig{
		Socket: sock, UID: os.Getuid(), Env: Env{Secrets: map[string]string{}},
		OnReport: func(r json.RawMessage) error {
			mu.Lock()
			defer mu.Unlock()
			reports = append(reports, string(r))
			return nil
		},
	})
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()

	// Before the env was handed out nobody knows the token.
	if err := Report(ctx, sock, "", map[string]int{"exit_code": 0}); !errors.Is(err, ErrRefused) {
		t.Fatalf("report without token: got %v, want ErrRefused", err)
	}
	env, err := Fetch(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	if len(env.ReportToken) != 64 {
		t.Fatalf("report token %q, want 32 random bytes in hex", env.ReportToken)
	}
	if err := Report(ctx, sock, strings.Repeat("0", 64), map[string]int{"exit_code": 1}); !errors.Is(err, ErrRefused) {
		t.Fatalf("report with a forged token: got %v, want ErrRefused", err)
	}
	if err := Report(ctx, sock, env.ReportToken, map[string]int{"exit_code": 3}); err != nil {
		t.Fatal(err)
	}
	if err := Report(ctx, sock, env.ReportToken, map[string]int{"exit_code": 4}); !errors.Is(err, ErrRefused) {
		t.Fatalf("second report: got %v, want ErrRefused", err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(reports) != 1 || reports[0] != `{"exit_code":3}` {
		t.Fatalf("got reports %q, want only the genuine one", reports)
	}
}

func TestMalformedRequestRefused(t *testing.T) {
	defer goleak.VerifyNone(t)
	sock := filepath.Join(t.TempDir(), "agent.sock")
	srv, stop := serve(t, ServerConfig{Socket: sock, UID: os.Getuid(), Env: Env{Secrets: map[string]string{"k": "value-abcdef"}}})
	defer stop()
	for _, req := range []string{"not json\n", `{"op":"dump"}` + "\n", strings.Repeat("x", maxRequest+10)} {
		conn, err := net.Dial("unix", sock)
		if err != nil {
			t.Fatal(err)
		}
		conn.Write([]byte(req))
		b, _ := io.ReadAll(conn)
		conn.Close()
		if !strings.Contains(string(b), `"error"`) || strings.Contains(string(b), "value-abcdef") {
			t.Fatalf("request %.20q: answer %q, want a refusal without the secret", req, b)
		}
	}
	if srv.Served() {
		t.Fatal("a malformed request consumed the handoff")
	}
}
