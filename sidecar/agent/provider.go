package agent

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/cordon-dev/cordon/sidecar/secrets"
)

// ProviderConfig selects and configures the secrets backend.
type ProviderConfig struct {
	// Kind is "aws" (Secrets Manager) or "file". Required.
	Kind string
	// Env is the deployment environment of the Secrets Manager path
	// /{env}/{org}/{name}. Required for "aws".
	Env string
	// File is the JSON secrets file. Required for "file".
	File string
	// Region and Endpoint configure the Secrets Manager client. If empty,
	// the SDK's defaults.
	Region, Endpoint string
	// Logger for the provider. If nil, discarded.
	Logger *slog.Logger
}

// Validate checks the combination of fields.
func (pc ProviderConfig) Validate() error {
	switch pc.Kind {
	case "aws":
		if pc.Env == "" {
			return fmt.Errorf("secrets provider aws: no env: pass --env prod|staging")
		}
		if pc.File != "" {
			return fmt.Errorf("secrets provider aws: --secrets-file is for provider file")
		}
	case "file":
		if pc.File == "" {
			return fmt.Errorf("secrets provider file: no --secrets-file")
		}
		if pc.Endpoint != "" || pc.Region != "" {
			return fmt.Errorf("secrets provider file: --aws-region and --aws-endpoint are for provider aws")
		}
	default:
		return fmt.Errorf("secrets provider %q: want aws or file", pc.Kind)
	}
	return nil
}

// NewProvider returns the Config.Provider for pc: the org comes from the
// SVID, never from a flag, so a task can only read its own org's secrets
// path.
func NewProvider(pc ProviderConfig) (func(ctx context.Context, id JobIdentity) (secrets.Provider, error), error) {
	if err := pc.Validate(); err != nil {
		return nil, err
	}
	return func(ctx context.Context, id JobIdentity) (secrets.Provider, error) {
		if pc.Kind == "file" {
			return &secrets.File{Path: pc.File}, nil
		}
		client, err := secrets.NewSecretsManagerClient(secrets.ClientConfig{Region: pc.Region, Endpoint: pc.Endpoint})
		if err != nil {
			return nil, err
		}
		return secrets.NewSecretsManager(secrets.SecretsManagerConfig{Client: client, Env: pc.Env, Org: id.Org, Logger: pc.Logger})
	}, nil
}
