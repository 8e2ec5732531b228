package secrets

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/test/fakeaws"
)

func envOf(m map[string]string) func(string) string { return func(k string) string { return m[k] } }

// ecsCredentialsEndpoint serves the ECS container credentials API on
// loopback, requiring Authorization to equal *token; it counts requests.
func ecsCredentialsEndpoint(t *testing.T, token *atomic.Value) (*httptest.Server, *atomic.Int64) {
	t.Helper()
	var calls atomic.Int64
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		calls.Add(1)
		if r.Header.Get("Authorization") != token.Load().(string) {
			w.WriteHeader(http.StatusUnauthorized)
			json.NewEncoder(w).Encode(map[string]string{"code": "Unauthorized", "message": "bad token"})
			return
		}
		json.NewEncoder(w).Encode(map[string]string{
			"AccessKeyId": "ASIATASKROLE", "SecretAccessKey": "task-secret", "Token": "task-session",
			"Expiration": time.Now().Add(time.Hour).UTC().Format(time.RFC3339),
		})
	}))
	t.Cleanup(srv.Close)
	return srv, &calls
}

func TestTaskCredentialsFromEnvironmentKeys(t *testing.T) {
	p, err := taskCredentials(envOf(map[string]string{
		"AWS_ACCESS_KEY_ID": "AKIDENV", "AWS_SECRET_ACCESS_KEY": "env-secret", "AWS_SESSION_TOKEN": "env-token",
		// The keys win over the task role, as in the SDK's own chain.
		"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "/v2/credentials/x",
	}))
	if err != nil {
		t.Fatal(err)
	}
	c, err := p.Retrieve(context.Background())
	if err != nil || c.AccessKeyID != "AKIDENV" || c.SecretAccessKey != "env-secret" || c.SessionToken != "env-token" {
		t.Fatalf("got %+v, %v", c, err)
	}
}

func TestTaskCredentialsFromContainerEndpoint(t *testing.T) {
	var token atomic.Value
	token.Store("tok-1")
	srv, calls := ecsCredentialsEndpoint(t, &token)

	p, err := taskCredentials(envOf(map[string]string{
		"AWS_CONTAINER_CREDENTIALS_FULL_URI": srv.URL + "/creds", "AWS_CONTAINER_AUTHORIZATION_TOKEN": "tok-1",
	}))
	if err != nil {
		t.Fatal(err)
	}
	c, err := p.Retrieve(context.Background())
	if err != nil || c.AccessKeyID != "ASIATASKROLE" || c.SessionToken != "task-session" {
		t.Fatalf("got %+v, %v", c, err)
	}
	if _, err := p.Retrieve(context.Background()); err != nil || calls.Load() != 1 {
		t.Fatalf("second Retrieve: %v after %d calls, want the cached credentials", err, calls.Load())
	}

	// A token file is read at each refresh: the agent rotates it.
	file := filepath.Join(t.TempDir(), "token")
	if err := os.WriteFile(file, []byte("tok-2\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	token.Store("tok-2")
	p, err = taskCredentials(envOf(map[string]string{
		"AWS_CONTAINER_CREDENTIALS_FULL_URI": srv.URL + "/creds", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE": file,
		"AWS_CONTAINER_AUTHORIZATION_TOKEN": "tok-1", // the file wins
	}))
	if err != nil {
		t.Fatal(err)
	}
	if c, err := p.Retrieve(context.Background()); err != nil || c.AccessKeyID != "ASIATASKROLE" {
		t.Fatalf("with a token file: %+v, %v", c, err)
	}

	p, _ = taskCredentials(envOf(map[string]string{
		"AWS_CONTAINER_CREDENTIALS_FULL_URI": srv.URL + "/creds", "AWS_CONTAINER_AUTHORIZATION_TOKEN": "wrong",
	}))
	if _, err := p.Retrieve(context.Background()); err == nil {
		t.Fatal("a wrong token got credentials")
	}
}

func TestTaskCredentialsRefuses(t *testing.T) {
	for name, tt := range map[string]struct {
		env  map[string]string
		want string
	}{
		"nothing":               {map[string]string{}, errNoCredentials.Error()},
		"only the key id":       {map[string]string{"AWS_ACCESS_KEY_ID": "AKID"}, "must be set together"},
		"only the secret":       {map[string]string{"AWS_SECRET_ACCESS_KEY": "s"}, "must be set together"},
		"relative URI no slash": {map[string]string{"AWS_CONTAINER_CREDENTIALS_RELATIVE_URI": "v2/x"}, "must start with /"},
		"full URI http remote":  {map[string]string{"AWS_CONTAINER_CREDENTIALS_FULL_URI": "http://203.0.113.9/creds"}, "use https"},
		"full URI ftp":          {map[string]string{"AWS_CONTAINER_CREDENTIALS_FULL_URI": "ftp://127.0.0.1/creds"}, "want an http or https URL"},
		"full URI relative":     {map[string]string{"AWS_CONTAINER_CREDENTIALS_FULL_URI": "/creds"}, "not an absolute URL"},
		// Files, SSO and profiles are not consulted, whatever is set.
		"profile only": {map[string]string{"AWS_PROFILE": "admin", "AWS_SHARED_CREDENTIALS_FILE": "/root/.aws/credentials"}, errNoCredentials.Error()},
	} {
		t.Run(name, func(t *testing.T) {
			_, err := taskCredentials(envOf(tt.env))
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("got %v, want an error containing %q", err, tt.want)
			}
		})
	}
	for _, ok := range []string{"https://creds.example/x", "http://127.0.0.1:9/x", "http://[::1]:9/x", "http://localhost:9/x", "http://169.254.170.23/v1/credentials"} {
		if err := checkFullURI(ok); err != nil {
			t.Errorf("%s: %v", ok, err)
		}
	}
}

func TestRegion(t *testing.T) {
	env := map[string]string{"AWS_REGION": "eu-west-1", "AWS_DEFAULT_REGION": "us-west-2"}
	if r, _ := region("ap-south-1", envOf(env)); r != "ap-south-1" {
		t.Errorf("configured region lost to the environment: %s", r)
	}
	if r, _ := region("", envOf(env)); r != "eu-west-1" {
		t.Errorf("AWS_REGION: got %s", r)
	}
	if r, _ := region("", envOf(map[string]string{"AWS_DEFAULT_REGION": "us-west-2"})); r != "us-west-2" {
		t.Errorf("AWS_DEFAULT_REGION: got %s", r)
	}
	if _, err := region("", envOf(nil)); err == nil || !strings.Contains(err.Error(), "--aws-region") {
		t.Errorf("no region: %v", err)
	}
}

// TestSecretsManagerWithTaskRole runs the whole path a Fargate sidecar
// takes: no keys in the environment, the task role's credentials from the
// container endpoint, then the real SDK client against the local
// Secrets Manager.
func TestSecretsManagerWithTaskRole(t *testing.T) {
	var token atomic.Value
	token.Store("task-token")
	creds, calls := ecsCredentialsEndpoint(t, &token)
	fake := fakeaws.NewSecretsManager()
	fake.Put("/prod/acme/monad_rpc_key", valueA)
	sm := httptest.NewServer(fake)
	defer sm.Close()

	for _, k := range []string{"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI", "AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"} {
		t.Setenv(k, "")
	}
	t.Setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", creds.URL+"/v2/credentials")
	t.Setenv("AWS_CONTAINER_AUTHORIZATION_TOKEN", "task-token")
	t.Setenv("AWS_REGION", "us-east-1")
	client, err := NewSecretsManagerClient(ClientConfig{Endpoint: sm.URL, MaxAttempts: 2, MaxBackoff: 10 * time.Millisecond})
	if err != nil {
		t.Fatal(err)
	}
	p, err := NewSecretsManager(SecretsManagerConfig{Client: client, Env: "prod", Org: "acme"})
	if err != nil {
		t.Fatal(err)
	}
	got, err := p.Fetch(context.Background(), []string{"monad_rpc_key"})
	if err != nil || got["monad_rpc_key"] != valueA {
		t.Fatalf("fetch with the task role: %v", err)
	}
	if calls.Load() == 0 {
		t.Fatal("the credentials endpoint was never asked")
	}

	t.Setenv("AWS_CONTAINER_CREDENTIALS_FULL_URI", "")
	if _, err := NewSecretsManagerClient(ClientConfig{Endpoint: sm.URL}); !errors.Is(err, errNoCredentials) {
		t.Fatalf("without credentials: %v, want errNoCredentials", err)
	}
}
