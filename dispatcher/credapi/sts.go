package credapi

import (
	"context"
	"fmt"
	"net"
	"net/url"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sts"
)

// STSConfig configures NewSTSClient.
type STSConfig struct {
	// Endpoint overrides the STS endpoint (--sts-endpoint), e.g. a VPC
	// endpoint or, in tests, test/fakeaws. It must be https, or http on a
	// loopback address only (AssumeRole answers carry credentials). If
	// empty, the SDK's regional endpoint.
	Endpoint string
	// Region is the STS region. If empty, the SDK's default chain
	// (AWS_REGION, the shared config).
	Region string
	// Credentials are the dispatcher's own. If nil, the SDK's default
	// chain (on ECS, the dispatcher's task role).
	Credentials aws.CredentialsProvider
}

// NewSTSClient returns the real aws-sdk-go-v2 STS client the Handler mints
// with. The SDK's standard retryer retries throttling and transient errors
// (three attempts); what still fails is answered 503 with Retry-After.
func NewSTSClient(ctx context.Context, c STSConfig) (*sts.Client, error) {
	if c.Endpoint != "" {
		u, err := url.Parse(c.Endpoint)
		if err != nil || u.Host == "" || u.User != nil {
			return nil, fmt.Errorf("sts endpoint %q: want https://host[:port]", c.Endpoint)
		}
		ip := net.ParseIP(u.Hostname())
		if u.Scheme != "https" && !(u.Scheme == "http" && (u.Hostname() == "localhost" || ip != nil && ip.IsLoopback())) {
			return nil, fmt.Errorf("sts endpoint %q: must be https (plain http only on loopback, for tests): its answers carry credentials", c.Endpoint)
		}
	}
	var opts []func(*config.LoadOptions) error
	if c.Region != "" {
		opts = append(opts, config.WithRegion(c.Region))
	}
	if c.Credentials != nil {
		opts = append(opts, config.WithCredentialsProvider(c.Credentials))
	}
	awsCfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("sts client: load AWS config: %w", err)
	}
	return sts.NewFromConfig(awsCfg, func(o *sts.Options) {
		if c.Endpoint != "" {
			o.BaseEndpoint = aws.String(c.Endpoint)
		}
	}), nil
}
