package credsource

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"strings"
	"time"

	"github.com/cordon-dev/cordon/internal/datasets"
	"github.com/cordon-dev/cordon/sidecar/credserver"
	"github.com/cordon-dev/cordon/sidecar/handoff"
)

// EnvDatasets is the environment variable that may carry the job's dataset
// declaration (JSON) in the task definition, instead of a file.
const EnvDatasets = "CORDON_DATASETS"

// LoadDeclaration reads the job's dataset declaration from file when it is
// not empty, otherwise from the value of $CORDON_DATASETS (env, as
// os.Getenv gives it). Both set is an error (which one wins would be a
// surprise); neither set is no declaration (ok=false): the job gets no
// data credentials. Decoding is datasets.Decode's: strict, 64 KB at most.
func LoadDeclaration(file, env string) (decl datasets.Declaration, ok bool, err error) {
	switch {
	case file != "" && env != "":
		return datasets.Declaration{}, false, fmt.Errorf("dataset declaration: both --datasets-file %s and $%s are set; use one", file, EnvDatasets)
	case file != "":
		f, err := os.Open(file)
		if err != nil {
			return datasets.Declaration{}, false, fmt.Errorf("dataset declaration: %w", err)
		}
		defer f.Close()
		d, err := datasets.Decode(f)
		if err != nil {
			return datasets.Declaration{}, false, fmt.Errorf("dataset declaration %s: %w", file, err)
		}
		return d, true, nil
	case env != "":
		d, err := datasets.Decode(strings.NewReader(env))
		if err != nil {
			return datasets.Declaration{}, false, fmt.Errorf("dataset declaration in $%s: %w", EnvDatasets, err)
		}
		return d, true, nil
	}
	return datasets.Declaration{}, false, nil
}

// ExtraEnv turns a credserver's Env for addr into the job's extra
// variables (agent.Config.ExtraEnv), with the authorization token marked
// secret so it is scrubbed from the job's output.
func ExtraEnv(srv *credserver.Server, addr net.Addr) ([]handoff.Var, error) {
	env, err := srv.Env(addr)
	if err != nil {
		return nil, err
	}
	vars := make([]handoff.Var, 0, len(env))
	for _, kv := range env {
		name, value, _ := strings.Cut(kv, "=")
		vars = append(vars, handoff.Var{Name: name, Value: value, Secret: name == credserver.EnvAuthToken})
	}
	return vars, nil
}

// Primer is what PrimeWithRetry primes; *credserver.Server is one.
type Primer interface {
	Prime(ctx context.Context) error
}

var _ Primer = (*credserver.Server)(nil)

// PrimeWithRetry primes p before the job starts. A refusal (*RefusedError)
// fails at once, so a PII dataset without a grant never starts the job; an
// unavailable dispatcher (*UnavailableError) is retried, after its
// Retry-After or else after a doubling wait from 500ms, until budget has
// passed or ctx ends. It returns the last error.
func PrimeWithRetry(ctx context.Context, p Primer, budget time.Duration) error {
	deadline := time.Now().Add(budget)
	wait := 500 * time.Millisecond
	for {
		err := p.Prime(ctx)
		var unavail *UnavailableError
		if err == nil || !errors.As(err, &unavail) {
			return err
		}
		next := wait
		if unavail.RetryAfter > 0 {
			next = unavail.RetryAfter
		}
		wait = min(wait*2, 10*time.Second)
		if time.Now().Add(next).After(deadline) {
			return fmt.Errorf("credentials not available within %s: %w", budget, err)
		}
		t := time.NewTimer(next)
		select {
		case <-ctx.Done():
			t.Stop()
			return fmt.Errorf("credentials: %w (last error: %w)", ctx.Err(), err)
		case <-t.C:
		}
	}
}
