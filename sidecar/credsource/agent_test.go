package credsource_test

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/sidecar/credserver"
	"github.com/cordon-dev/cordon/sidecar/credsource"
)

func TestLoadDeclaration(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.json")
	bad := filepath.Join(dir, "bad.json")
	os.WriteFile(good, []byte(`{"inputs":[{"location":"s3://trace-data/acme/blocks/"}]}`), 0o600)
	os.WriteFile(bad, []byte(`{"inputs":[{"location":"s3://trace-data/acme/*"}]}`), 0o600)
	for _, tc := range []struct {
		name, file, env string
		wantOK          bool
		wantErr         string
	}{
		{name: "neither"},
		{name: "file", file: good, wantOK: true},
		{name: "env", env: `{"outputs":[{"location":"s3://trace-data/acme/out/"}]}`, wantOK: true},
		{name: "both", file: good, env: `{}`, wantErr: "use one"},
		{name: "missing file", file: filepath.Join(dir, "none.json"), wantErr: "no such file"},
		{name: "bad file", file: bad, wantErr: "bad.json"},
		{name: "unknown field in env", env: `{"inputs":[],"role":"admin"}`, wantErr: "CORDON_DATASETS"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d, ok, err := credsource.LoadDeclaration(tc.file, tc.env)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("got %v, want an error mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || ok != tc.wantOK {
				t.Fatalf("got ok=%v err=%v, want ok=%v", ok, err, tc.wantOK)
			}
			if ok && len(d.Inputs)+len(d.Outputs) != 1 {
				t.Fatalf("got %+v, want one dataset", d)
			}
		})
	}
}

func TestExtraEnvMarksTheTokenSecret(t *testing.T) {
	srv, err := credserver.New(credserver.Config{Source: &primer{}})
	if err != nil {
		t.Fatal(err)
	}
	vars, err := credsource.ExtraEnv(srv, &net.TCPAddr{IP: net.IPv4(127, 0, 0, 1), Port: 4567})
	if err != nil {
		t.Fatal(err)
	}
	if len(vars) != 2 || vars[0].Name != credserver.EnvFullURI || vars[0].Value != "http://127.0.0.1:4567/creds" || vars[0].Secret ||
		vars[1].Name != credserver.EnvAuthToken || len(vars[1].Value) < 32 || !vars[1].Secret {
		t.Fatalf("got %+v, want the URI and a secret token", vars)
	}
	if _, err := credsource.ExtraEnv(srv, &net.TCPAddr{IP: net.IPv4(10, 0, 0, 1), Port: 4567}); err == nil {
		t.Fatal("a non-loopback address was accepted")
	}
}

// primer fails with errs in turn, then succeeds.
type primer struct {
	errs  []error
	calls int
}

func (p *primer) Prime(context.Context) error {
	p.calls++
	if len(p.errs) == 0 {
		return nil
	}
	err := p.errs[0]
	p.errs = p.errs[1:]
	return err
}

func (p *primer) Credentials(context.Context) (credserver.Credentials, error) {
	return credserver.Credentials{}, errors.New("unused")
}

func TestPrimeWithRetry(t *testing.T) {
	unavail := &credsource.UnavailableError{Status: 503, RetryAfter: 10 * time.Millisecond, Err: errors.New("audit_unavailable")}
	refused := &credsource.RefusedError{Status: 403, Reason: "pii_grant_missing", Message: "no grant"}
	for _, tc := range []struct {
		name      string
		errs      []error
		budget    time.Duration
		wantCalls int
		wantErr   error
	}{
		{name: "first try", wantCalls: 1},
		{name: "unavailable then issued", errs: []error{unavail, unavail}, budget: 5 * time.Second, wantCalls: 3},
		{name: "refusal fails at once", errs: []error{refused, nil}, budget: 5 * time.Second, wantCalls: 1, wantErr: refused},
		{name: "unavailable then refused", errs: []error{unavail, refused}, budget: 5 * time.Second, wantCalls: 2, wantErr: refused},
		{name: "budget spent", errs: []error{unavail, unavail, unavail, unavail}, budget: 15 * time.Millisecond, wantCalls: 2, wantErr: unavail},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := &primer{errs: tc.errs}
			err := credsource.PrimeWithRetry(context.Background(), p, tc.budget)
			if !errors.Is(err, tc.wantErr) || (tc.wantErr == nil) != (err == nil) {
				t.Fatalf("got %v, want %v", err, tc.wantErr)
			}
			if p.calls != tc.wantCalls {
				t.Fatalf("got %d Prime calls, want %d", p.calls, tc.wantCalls)
			}
		})
	}
}
