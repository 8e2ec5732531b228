package jobrun

import (
	"context"
	"errors"
	"strings"
	"testing"

	"github.com/cordon-dev/cordon/sidecar/secrets"
)

func TestMainWithAgentEnv(t *testing.T) {
	const token = "cred-token-Zk29vQ81mX"
	var out, errb syncBuffer
	code := Main(context.Background(), Options{
		AgentSocket: "/unused.sock",
		FetchEnv: func(ctx context.Context, socket string) (AgentEnv, error) {
			return AgentEnv{
				Secrets:  map[string]string{"monad_rpc_key": "rpc-value-123456"},
				ProxyURL: "http://127.0.0.1:4555",
				Extra: []ExtraVar{
					{Name: "AWS_CONTAINER_CREDENTIALS_FULL_URI", Value: "http://127.0.0.1:4556/creds"},
					{Name: "AWS_CONTAINER_AUTHORIZATION_TOKEN", Value: token, Secret: true},
				},
			}, nil
		},
		Run: Config{
			Command: []string{"/bin/sh", "-c", `echo "$MONAD_RPC_KEY $AWS_CONTAINER_CREDENTIALS_FULL_URI $AWS_CONTAINER_AUTHORIZATION_TOKEN $HTTP_PROXY"; exit 2`},
			BaseEnv: []string{"PATH=/usr/bin:/bin", "AWS_CONTAINER_CREDENTIALS_FULL_URI=http://169.254.170.23/task-role"},
			Stdin:   strings.NewReader(""), Stdout: &out, Stderr: &errb,
		},
	})
	if code != 2 {
		t.Fatalf("got exit %d, want 2 (stderr %q)", code, errb.String())
	}
	got := strings.TrimSpace(out.String())
	want := "[REDACTED:MONAD_RPC_KEY] http://127.0.0.1:4556/creds [REDACTED:AWS_CONTAINER_AUTHORIZATION_TOKEN] http://127.0.0.1:4555"
	if got != want {
		t.Fatalf("got %q, want %q", got, want)
	}
}

func TestMainAgentFailureIsFailClosed(t *testing.T) {
	var errb syncBuffer
	code := Main(context.Background(), Options{
		FetchEnv: func(ctx context.Context, socket string) (AgentEnv, error) {
			if socket != DefaultAgentSocket {
				t.Errorf("socket %q, want the default %q", socket, DefaultAgentSocket)
			}
			return AgentEnv{}, errors.New("agent refused the handoff: already handed out")
		},
		Run: Config{Command: []string{"/bin/sh", "-c", "echo ran"}, Stdout: &errb, Stderr: &errb},
	})
	if code != ExitShimFailed || strings.Contains(errb.String(), "ran") || !strings.Contains(errb.String(), "job not started") {
		t.Fatalf("got exit %d output %q, want %d and the job not started", code, errb.String(), ExitShimFailed)
	}
}

func TestCheckExtra(t *testing.T) {
	tests := []struct {
		name    string
		extra   []ExtraVar
		wantErr string
	}{
		{name: "ok", extra: []ExtraVar{{Name: "AWS_CONTAINER_CREDENTIALS_FULL_URI", Value: "x"}}},
		{name: "bad name", extra: []ExtraVar{{Name: "A=B"}}, wantErr: "not a valid name"},
		{name: "proxy", extra: []ExtraVar{{Name: "https_proxy"}}, wantErr: "reserved"},
		{name: "loader", extra: []ExtraVar{{Name: "LD_PRELOAD"}}, wantErr: "reserved"},
		{name: "secret collision", extra: []ExtraVar{{Name: "MONAD_RPC_KEY"}}, wantErr: "set twice"},
		{name: "twice", extra: []ExtraVar{{Name: "X"}, {Name: "X"}}, wantErr: "set twice"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := checkExtra(nil, tt.extra)
			if tt.name == "secret collision" {
				err = checkExtra([]secrets.Var{{Secret: "monad_rpc_key", Env: "MONAD_RPC_KEY"}}, tt.extra)
			}
			if tt.wantErr == "" && err != nil || tt.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tt.wantErr)) {
				t.Fatalf("got %v, want error containing %q", err, tt.wantErr)
			}
		})
	}
}
