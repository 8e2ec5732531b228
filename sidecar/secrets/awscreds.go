package secrets

import (
	"errors"
	"fmt"
	"net"
	"net/url"
	"os"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/credentials/endpointcreds"
)

// The sidecar's AWS credentials come from exactly two places, not from the
// SDK's default chain (config.LoadDefaultConfig):
//
//  1. AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN)
//     in its environment: local runs and tests;
//  2. the ECS container credentials endpoint, AWS_CONTAINER_CREDENTIALS_
//     RELATIVE_URI (or _FULL_URI with AWS_CONTAINER_AUTHORIZATION_TOKEN or
//     _TOKEN_FILE): the task role, which is how a Fargate task is meant to
//     authenticate.
//
// Shared config and credential files, SSO, web identity, credential
// processes and the EC2 instance role are never consulted. A sidecar in a
// task has none of them, and falling back to one (an instance role on ECS
// on EC2, a file someone mounted) would read secrets as the wrong principal.
// Leaving the default chain out also keeps the SSO, SSO-OIDC, STS and
// sign-in clients out of the binary: about 1.5 MiB of the agent's resident
// memory (issue 4's budget is 20 MB).

// ecsCredentialsHost is where AWS_CONTAINER_CREDENTIALS_RELATIVE_URI is
// served on ECS.
const ecsCredentialsHost = "http://169.254.170.2"

// errNoCredentials says where the sidecar looks, so the fix is obvious.
var errNoCredentials = errors.New("no AWS credentials: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or run as an ECS task with a task role " +
	"(AWS_CONTAINER_CREDENTIALS_RELATIVE_URI); shared config files, SSO and instance roles are deliberately not used")

// taskCredentials returns the credentials provider described above, from
// getenv (os.Getenv outside tests).
func taskCredentials(getenv func(string) string) (aws.CredentialsProvider, error) {
	id, secret := getenv("AWS_ACCESS_KEY_ID"), getenv("AWS_SECRET_ACCESS_KEY")
	switch {
	case id != "" && secret != "":
		return credentials.NewStaticCredentialsProvider(id, secret, getenv("AWS_SESSION_TOKEN")), nil
	case id != "" || secret != "":
		return nil, errors.New("AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY must be set together")
	}
	endpoint := ""
	if rel := getenv("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"); rel != "" {
		if !strings.HasPrefix(rel, "/") {
			return nil, fmt.Errorf("AWS_CONTAINER_CREDENTIALS_RELATIVE_URI %q must start with /", rel)
		}
		endpoint = ecsCredentialsHost + rel
	} else if full := getenv("AWS_CONTAINER_CREDENTIALS_FULL_URI"); full != "" {
		if err := checkFullURI(full); err != nil {
			return nil, err
		}
		endpoint = full
	}
	if endpoint == "" {
		return nil, errNoCredentials
	}
	tokenFile, token := getenv("AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE"), getenv("AWS_CONTAINER_AUTHORIZATION_TOKEN")
	return aws.NewCredentialsCache(endpointcreds.New(endpoint, func(o *endpointcreds.Options) {
		switch {
		case tokenFile != "":
			// Read on every refresh: the agent rotates the file.
			o.AuthorizationTokenProvider = endpointcreds.TokenProviderFunc(func() (string, error) {
				b, err := os.ReadFile(tokenFile)
				if err != nil {
					return "", fmt.Errorf("read AWS_CONTAINER_AUTHORIZATION_TOKEN_FILE: %w", err)
				}
				return strings.TrimSpace(string(b)), nil
			})
		case token != "":
			o.AuthorizationToken = token
		}
	})), nil
}

// checkFullURI allows what the SDK's own chain allows for a full
// credentials URI: https anywhere, http only to loopback or to the ECS and
// EKS credential agents' link-local addresses.
func checkFullURI(full string) error {
	u, err := url.Parse(full)
	if err != nil || u.Host == "" {
		return fmt.Errorf("AWS_CONTAINER_CREDENTIALS_FULL_URI %q is not an absolute URL", full)
	}
	switch u.Scheme {
	case "https":
		return nil
	case "http":
		host := u.Hostname()
		if host == "localhost" || host == "169.254.170.2" || host == "169.254.170.23" || host == "fd00:ec2::23" {
			return nil
		}
		if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
			return nil
		}
		return fmt.Errorf("AWS_CONTAINER_CREDENTIALS_FULL_URI %q: plain http is allowed only to loopback or the ECS/EKS credential agents; use https", full)
	}
	return fmt.Errorf("AWS_CONTAINER_CREDENTIALS_FULL_URI %q: want an http or https URL", full)
}

// region is the configured region, or AWS_REGION, or AWS_DEFAULT_REGION.
func region(configured string, getenv func(string) string) (string, error) {
	for _, r := range []string{configured, getenv("AWS_REGION"), getenv("AWS_DEFAULT_REGION")} {
		if r != "" {
			return r, nil
		}
	}
	return "", errors.New("no AWS region: pass --aws-region or set AWS_REGION")
}
