package secrets

import (
	"strings"
	"testing"
)

func TestEnvName(t *testing.T) {
	tests := []struct {
		name    string
		in      string
		want    string
		wantErr string
	}{
		{name: "seed example", in: "monad_rpc_key", want: "MONAD_RPC_KEY"},
		{name: "already upper", in: "DB_URL", want: "DB_URL"},
		{name: "dash and dot", in: "db-pass.v2", want: "DB_PASS_V2"},
		{name: "leading underscore", in: "_x", want: "_X"},
		{name: "empty", in: "", wantErr: "empty"},
		{name: "leading digit", in: "1key", wantErr: "starts with a digit"},
		{name: "space", in: "my key", wantErr: "cannot be part"},
		{name: "equals", in: "a=b", wantErr: "cannot be part"},
		{name: "slash", in: "prod/acme/x", wantErr: "cannot be part"},
		{name: "nul", in: "a\x00b", wantErr: "cannot be part"},
		{name: "non-ascii", in: "clé", wantErr: "cannot be part"},
		{name: "PATH", in: "path", wantErr: "reserved"},
		{name: "LD_PRELOAD", in: "ld_preload", wantErr: "reserved"},
		{name: "http proxy", in: "http_proxy", wantErr: "reserved"},
		{name: "https proxy dashed", in: "https-proxy", wantErr: "reserved"},
		{name: "aws key", in: "aws_secret_access_key", wantErr: "reserved"},
		{name: "container creds", in: "aws_container_credentials_full_uri", wantErr: "reserved"},
		{name: "cordon prefix", in: "cordon_anything", wantErr: "reserved"},
		{name: "too long", in: strings.Repeat("a", maxNameLen+1), wantErr: "longer than"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := EnvName(tt.in)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("EnvName(%q) error = %v, want one containing %q", tt.in, err, tt.wantErr)
				}
				return
			}
			if err != nil || got != tt.want {
				t.Fatalf("EnvName(%q) = %q, %v; want %q, nil", tt.in, got, err, tt.want)
			}
		})
	}
}

func TestToEnvCollisionNamesBothAndNoValue(t *testing.T) {
	_, err := ToEnv(map[string]string{"db-pass": "s3cr3t-one", "db_pass": "s3cr3t-two"})
	if err == nil {
		t.Fatal("got nil error, want a collision error")
	}
	msg := err.Error()
	for _, want := range []string{`"db-pass"`, `"db_pass"`, "DB_PASS"} {
		if !strings.Contains(msg, want) {
			t.Errorf("error %q does not name %s", msg, want)
		}
	}
	if strings.Contains(msg, "s3cr3t") {
		t.Errorf("error %q contains a secret value", msg)
	}
}

func TestToEnvSorted(t *testing.T) {
	vars, err := ToEnv(map[string]string{"b_key": "2", "a_key": "1"})
	if err != nil {
		t.Fatal(err)
	}
	if len(vars) != 2 || vars[0].Env != "A_KEY" || vars[1].Env != "B_KEY" || vars[0].Value != "1" || vars[1].Secret != "b_key" {
		t.Fatalf("got %+v, want A_KEY=1 then B_KEY=2", vars)
	}
}

func TestToEnvRejectsNUL(t *testing.T) {
	_, err := ToEnv(map[string]string{"k": "abc\x00def"})
	if err == nil || !strings.Contains(err.Error(), "NUL") || strings.Contains(err.Error(), "abc") {
		t.Fatalf("got %v, want a NUL error without the value", err)
	}
}

// FuzzEnvName checks that whatever a name is, EnvName either refuses it or
// returns a portable, unreserved variable name.
func FuzzEnvName(f *testing.F) {
	for _, s := range []string{"monad_rpc_key", "a-b.c", "ld_preload", "1x", "", "é", "HTTP_PROXY"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, name string) {
		env, err := EnvName(name)
		if err != nil {
			return
		}
		if env == "" || len(env) != len(name) {
			t.Fatalf("EnvName(%q) = %q: want a same-length name", name, env)
		}
		for i := 0; i < len(env); i++ {
			c := env[i]
			if !(c >= 'A' && c <= 'Z' || c == '_' || i > 0 && c >= '0' && c <= '9') {
				t.Fatalf("EnvName(%q) = %q: byte %q is not portable", name, env, c)
			}
		}
		if Reserved(env) != "" {
			t.Fatalf("EnvName(%q) = %q: reserved", name, env)
		}
	})
}
