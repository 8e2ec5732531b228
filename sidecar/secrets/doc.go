// Package secrets fetches a job's declared secrets and turns them into the
// job's environment variables (seeds/000 "Secrets Injection" and "Secrets
// Naming Convention").
//
// Providers sit behind the small Provider interface: File reads a local JSON
// file {"name": "value"} (local runs, the acceptance test), SecretsManager
// reads AWS Secrets Manager at /{env}/{org_slug}/{secret_name}. Every
// provider fails closed: a secret that is missing, unauthorised or
// unreachable is an error naming the secret and the cause, never its value.
//
// It is not the scrubber (sidecar/scrub) and does not decide which secrets a
// job may have (that is the job's declaration, passed in by the caller).
// Values stay in memory: nothing here writes them anywhere.
package secrets

import (
	"context"
	"errors"
)

// Provider fetches secret values by name. The returned map holds exactly the
// names asked for; a name that cannot be fetched is an error (never a
// partial map). Errors name the secret and the cause and never contain a
// value.
type Provider interface {
	Fetch(ctx context.Context, names []string) (map[string]string, error)
}

// ErrNotFound is wrapped by a provider's error when a secret does not exist.
var ErrNotFound = errors.New("secret not found")

// ErrAccessDenied is wrapped by a provider's error when the caller may not
// read a secret.
var ErrAccessDenied = errors.New("access to secret denied")
