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

// TestRefusedRunHandsOutOnlyTheReason: a refused run's env op answers with
// the reason (no secrets, no token), once, and takes no report.
func TestRefusedRunHandsOutOnlyTheReason(t *testing.T) {
	defer goleak.VerifyNone(t)
	sock := filepath.Join(t.TempDir(), "agent.sock")
	_, stop := serve(t, ServerConfig{Socket: sock, UID: os.Getuid(),
		Env:      Env{Secrets: map[string]string{"k": "never-handed"}, Refusal: "org acme is at its concurrency limit (0)"},
		OnReport: func(json.RawMessage) error { t.Error("report taken for a refused run"); return nil }})
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	env, err := Fetch(ctx, sock)
	var rr *RunRefusedError
	if !errors.As(err, &rr) {
		t.Fatalf("Fetch: got env %+v, err %v; want *RunRefusedError", env, err)
	}
	if rr.Reason != "org acme is at its concurrency limit (0)" {
		t.Errorf("reason: got %q, want the agent's", rr.Reason)
	}
	if _, err := Fetch(ctx, sock); !errors.Is(err, ErrRefused) {
		t.Errorf("second Fetch: got %v, want ErrRefused", err)
	}
	if err := Report(ctx, sock, "", map[string]int{"exit_code": 0}); err == nil {
		t.Error("report of a refused run accepted")
	}
}

// TestWatchGetsTheOrder: a watch with the token waits for the agent's
// order; one with a wrong token is refused at once; a watch still waiting
// when the server closes ends with an error.
func TestWatchGetsTheOrder(t *testing.T) {
	defer goleak.VerifyNone(t)
	sock := filepath.Join(t.TempDir(), "agent.sock")
	srv, stop := serve(t, ServerConfig{Socket: sock, UID: os.Getuid(), Env: Env{}})
	defer stop()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	env, err := Fetch(ctx, sock)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := Watch(ctx, sock, "wrong"); !errors.Is(err, ErrRefused) {
		t.Fatalf("watch with a wrong token: got %v, want ErrRefused", err)
	}
	got := make(chan Order, 1)
	werr := make(chan error, 1)
	go func() {
		o, err := Watch(context.Background(), sock, env.ReportToken)
		got <- o
		werr <- err
	}()
	select {
	case o := <-got:
		t.Fatalf("watch answered before any order: %+v, %v", o, <-werr)
	case <-time.After(200 * time.Millisecond):
	}
	srv.Order(Order{Reason: "anomaly: egress 40x baseline", Grace: 3 * time.Second})
	srv.Order(Order{Reason: "second order, ignored"})
	o := <-got
	if err := <-werr; err != nil {
		t.Fatalf("watch: %v", err)
	}
	if o.Reason != "anomaly: egress 40x baseline" || o.Grace != 3*time.Second {
		t.Errorf("order: got %+v, want the first one", o)
	}
	// A late watch gets the standing order at once.
	if o, err := Watch(ctx, sock, env.ReportToken); err != nil || o.Reason != "anomaly: egress 40x baseline" {
		t.Errorf("late watch: got %+v, %v", o, err)
	}
}

func TestWatchEndsWhenServerCloses(t *testing.T) {
	defer goleak.VerifyNone(t)
	sock := filepath.Join(t.TempDir(), "agent.sock")
	_, stop := serve(t, ServerConfig{Socket: sock, UID: os.Getuid(), Env: Env{}})
	env, err := Fetch(context.Background(), sock)
	if err != nil {
		t.Fatal(err)
	}
	werr := make(chan error, 1)
	go func() { _, err := Watch(context.Background(), sock, env.ReportToken); werr <- err }()
	time.Sleep(100 * time.Millisecond)
	stop()
	select {
	case err := <-werr:
		if err == nil {
			t.Error("watch: got nil error after the server closed, want one")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("watch still waiting 5s after the server closed")
	}
	// A watch cut by its own ctx ends too.
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	if _, err := Watch(ctx, sock, env.ReportToken); err == nil {
		t.Error("watch of a closed server: got nil error")
	}
}
