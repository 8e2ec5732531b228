package secrets

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/credentials"
	"go.uber.org/goleak"

	"github.com/cordon-dev/cordon/test/fakeaws"
)

const (
	valueA = "sm-value-AAAA-0123456789"
	valueB = "sm-value-BBBB-9876543210"
)

// smSetup runs the fake endpoint and returns a provider using the real SDK
// client against it, plus the log buffer.
func smSetup(t *testing.T, endpoint string) (*SecretsManager, *bytes.Buffer) {
	t.Helper()
	client, err := NewSecretsManagerClient(ClientConfig{
		Region:      "us-east-1",
		Endpoint:    endpoint,
		Credentials: credentials.NewStaticCredentialsProvider("AKIDTESTFAKEAWS", "test-secret-key", ""),
		MaxAttempts: 4,
		MaxBackoff:  20 * time.Millisecond,
	})
	if err != nil {
		t.Fatal(err)
	}
	var logs bytes.Buffer
	p, err := NewSecretsManager(SecretsManagerConfig{
		Client: client, Env: "prod", Org: "acme",
		Logger: slog.New(slog.NewJSONHandler(&logs, &slog.HandlerOptions{Level: slog.LevelDebug})),
	})
	if err != nil {
		t.Fatal(err)
	}
	return p, &logs
}

func TestSecretsManager(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	tests := []struct {
		name      string
		setup     func(*fakeaws.SecretsManager)
		names     []string
		want      map[string]string
		wantErrIs error
		wantErr   string // substring of the error
		wantCalls map[string]int
	}{
		{
			name:      "found by batch",
			names:     []string{"monad_rpc_key", "db_url"},
			want:      map[string]string{"monad_rpc_key": valueA, "db_url": valueB},
			wantCalls: map[string]int{"BatchGetSecretValue": 1, "GetSecretValue": 0},
		},
		{
			name:      "found one by one when batch is denied",
			setup:     func(f *fakeaws.SecretsManager) { f.NoBatch = true },
			names:     []string{"monad_rpc_key", "db_url"},
			want:      map[string]string{"monad_rpc_key": valueA, "db_url": valueB},
			wantCalls: map[string]int{"BatchGetSecretValue": 1, "GetSecretValue": 2},
		},
		{
			name:      "missing",
			names:     []string{"monad_rpc_key", "nope"},
			wantErrIs: ErrNotFound,
			wantErr:   `"nope" (/prod/acme/nope)`,
		},
		{
			name:      "missing one by one",
			setup:     func(f *fakeaws.SecretsManager) { f.NoBatch = true },
			names:     []string{"nope"},
			wantErrIs: ErrNotFound,
			wantErr:   `"nope"`,
		},
		{
			name:      "access denied",
			setup:     func(f *fakeaws.SecretsManager) { f.Deny("/prod/acme/db_url") },
			names:     []string{"monad_rpc_key", "db_url"},
			wantErrIs: ErrAccessDenied,
			wantErr:   `"db_url"`,
		},
		{
			name:      "access denied one by one",
			setup:     func(f *fakeaws.SecretsManager) { f.NoBatch = true; f.Deny("/prod/acme/db_url") },
			names:     []string{"monad_rpc_key", "db_url"},
			wantErrIs: ErrAccessDenied,
			wantErr:   `"db_url"`,
		},
		{
			name:      "throttled then ok",
			setup:     func(f *fakeaws.SecretsManager) { f.Throttle(2) },
			names:     []string{"monad_rpc_key"},
			want:      map[string]string{"monad_rpc_key": valueA},
			wantCalls: map[string]int{"BatchGetSecretValue": 3},
		},
		{
			name:      "throttled past the retry budget",
			setup:     func(f *fakeaws.SecretsManager) { f.Throttle(100) },
			names:     []string{"monad_rpc_key"},
			wantErr:   "ThrottlingException",
			wantCalls: map[string]int{"BatchGetSecretValue": 4},
		},
		{
			name:    "binary secret",
			setup:   func(f *fakeaws.SecretsManager) { f.PutBinary("/prod/acme/bin", []byte(valueA)) },
			names:   []string{"bin"},
			wantErr: "stored as binary",
		},
		{
			name:      "invalid name never reaches the network",
			names:     []string{"../other/key"},
			wantErr:   "cannot be part of an environment variable",
			wantCalls: map[string]int{"BatchGetSecretValue": 0},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			fake := fakeaws.NewSecretsManager()
			fake.Put("/prod/acme/monad_rpc_key", valueA)
			fake.Put("/prod/acme/db_url", valueB)
			fake.Put("/staging/acme/nope", valueB) // another env's secret is not found
			if tt.setup != nil {
				tt.setup(fake)
			}
			srv := httptest.NewServer(fake)
			defer srv.Close()
			p, logs := smSetup(t, srv.URL)

			got, err := p.Fetch(context.Background(), tt.names)
			assertNoValues(t, "log", logs.String())
			if tt.wantErr != "" || tt.wantErrIs != nil {
				if err == nil {
					t.Fatalf("got %v, nil; want an error", got)
				}
				assertNoValues(t, "error", err.Error())
				if tt.wantErrIs != nil && !errors.Is(err, tt.wantErrIs) {
					t.Errorf("got error %v, want one wrapping %v", err, tt.wantErrIs)
				}
				if !strings.Contains(err.Error(), tt.wantErr) {
					t.Errorf("got error %q, want it to contain %q", err, tt.wantErr)
				}
				if got != nil {
					t.Errorf("got partial result %d secrets with an error, want nil", len(got))
				}
			} else {
				if err != nil {
					t.Fatal(err)
				}
				if fmt.Sprint(got) != fmt.Sprint(tt.want) {
					t.Errorf("got %d secrets %v, want %d", len(got), keys(got), len(tt.want))
				}
			}
			for op, n := range tt.wantCalls {
				if c := fake.Calls(op); c != n {
					t.Errorf("%s calls: got %d, want %d", op, c, n)
				}
			}
		})
	}
}

func TestSecretsManagerUnreachable(t *testing.T) {
	defer goleak.VerifyNone(t, goleak.IgnoreCurrent())
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := ln.Addr().String()
	ln.Close() // nothing listens there now
	p, logs := smSetup(t, "http://"+addr)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	_, err = p.Fetch(ctx, []string{"monad_rpc_key"})
	if err == nil || !strings.Contains(err.Error(), `"monad_rpc_key"`) || !strings.Contains(err.Error(), "connection refused") {
		t.Fatalf("got %v, want an error naming monad_rpc_key and the refused connection", err)
	}
	assertNoValues(t, "log", logs.String())
}

func TestNewSecretsManagerRejectsPathTricks(t *testing.T) {
	for _, tc := range []struct{ name, env, org string }{
		{"dotdot org", "prod", ".."}, {"slash org", "prod", "a/b"}, {"empty env", "", "acme"},
		{"glob", "prod", "*"}, {"upper", "Prod", "acme"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := NewSecretsManager(SecretsManagerConfig{Client: noClient{}, Env: tc.env, Org: tc.org})
			if err == nil {
				t.Fatalf("env %q org %q: got nil error, want a rejection", tc.env, tc.org)
			}
		})
	}
}

type noClient struct{ SecretsManagerAPI }

func assertNoValues(t *testing.T, what, s string) {
	t.Helper()
	for _, v := range []string{valueA, valueB, "sm-value"} {
		if strings.Contains(s, v) {
			t.Fatalf("%s contains a secret value: %s", what, s)
		}
	}
}

func keys(m map[string]string) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	return ks
}
