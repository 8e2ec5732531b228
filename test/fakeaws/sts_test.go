package fakeaws_test

import (
	"context"
	"errors"
	"net/http/httptest"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	ststypes "github.com/aws/aws-sdk-go-v2/service/sts/types"
	"github.com/aws/smithy-go"
	"go.uber.org/goleak"

	"github.com/cordon-dev/cordon/test/fakeaws"
)

func stsClient(url string, creds aws.CredentialsProvider) *sts.Client {
	return sts.New(sts.Options{
		Region:           "us-east-1",
		BaseEndpoint:     aws.String(url),
		Credentials:      creds,
		RetryMaxAttempts: 1,
	})
}

func TestSTSAssumeRoleAndCallerIdentity(t *testing.T) {
	defer goleak.VerifyNone(t)
	fake := fakeaws.NewSTS()
	srv := httptest.NewServer(fake)
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()

	client := stsClient(srv.URL, credentials.NewStaticCredentialsProvider("AKIDTEST", "secret", ""))
	out, err := client.AssumeRole(ctx, &sts.AssumeRoleInput{
		RoleArn:         aws.String("arn:aws:iam::123456789012:role/cordon-data-acme"),
		RoleSessionName: aws.String("cordon.acme.job.run1"),
		SourceIdentity:  aws.String("acme.job"),
		Policy:          aws.String(`{"Version":"2012-10-17","Statement":[]}`),
		DurationSeconds: aws.Int32(900),
		Tags:            []ststypes.Tag{{Key: aws.String("cordon-org"), Value: aws.String("acme")}},
	})
	if err != nil {
		t.Fatalf("AssumeRole: %v", err)
	}
	c := out.Credentials
	if got := *c.AccessKeyId; len(got) != 20 || got[:4] != "ASIA" {
		t.Fatalf("got access key %q, want ASIA + 16 characters", got)
	}
	if d := time.Until(*c.Expiration); d < 890*time.Second || d > 900*time.Second {
		t.Fatalf("got expiry in %s, want about 900s", d)
	}
	if got, want := *out.AssumedRoleUser.Arn, "arn:aws:sts::123456789012:assumed-role/cordon-data-acme/cordon.acme.job.run1"; got != want {
		t.Fatalf("got assumed role ARN %q, want %q", got, want)
	}
	req, _ := fake.LastRequest()
	if req.SourceIdentity != "acme.job" || req.Tags["cordon-org"] != "acme" || req.DurationSeconds != 900 || req.SignedBy != "AKIDTEST" {
		t.Fatalf("got recorded request %+v, want source identity, tag, duration and signer as sent", req)
	}

	// The issued credentials sign a GetCallerIdentity that verifies.
	issued := credentials.NewStaticCredentialsProvider(*c.AccessKeyId, *c.SecretAccessKey, *c.SessionToken)
	id, err := stsClient(srv.URL, issued).GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		t.Fatalf("GetCallerIdentity with issued credentials: %v", err)
	}
	if *id.Arn != *out.AssumedRoleUser.Arn {
		t.Fatalf("got caller %q, want %q", *id.Arn, *out.AssumedRoleUser.Arn)
	}
	if calls := fake.CallerIdentityCalls(); len(calls) != 1 || calls[0].AccessKeyID != *c.AccessKeyId {
		t.Fatalf("got caller calls %+v, want one by %s", calls, *c.AccessKeyId)
	}

	// A wrong secret, a wrong token or unknown keys are refused.
	for name, p := range map[string]aws.CredentialsProvider{
		"wrong secret": credentials.NewStaticCredentialsProvider(*c.AccessKeyId, "not-the-secret", *c.SessionToken),
		"wrong token":  credentials.NewStaticCredentialsProvider(*c.AccessKeyId, *c.SecretAccessKey, "forged"),
		"unknown key":  credentials.NewStaticCredentialsProvider("ASIAUNKNOWN", *c.SecretAccessKey, *c.SessionToken),
	} {
		_, err := stsClient(srv.URL, p).GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
		var ae smithy.APIError
		if !errors.As(err, &ae) || (ae.ErrorCode() != "SignatureDoesNotMatch" && ae.ErrorCode() != "InvalidClientTokenId") {
			t.Errorf("%s: got %v, want SignatureDoesNotMatch or InvalidClientTokenId", name, err)
		}
	}
}

func TestSTSErrors(t *testing.T) {
	defer goleak.VerifyNone(t)
	fake := fakeaws.NewSTS()
	fake.AllowRoles("arn:aws:iam::123456789012:role/cordon-data-acme")
	srv := httptest.NewServer(fake)
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	client := stsClient(srv.URL, credentials.NewStaticCredentialsProvider("AKIDTEST", "secret", ""))
	good := func() *sts.AssumeRoleInput {
		return &sts.AssumeRoleInput{
			RoleArn:         aws.String("arn:aws:iam::123456789012:role/cordon-data-acme"),
			RoleSessionName: aws.String("cordon.acme.job.run1"),
		}
	}
	tests := []struct {
		name   string
		inject string // FailNextAssumeRole code, if any
		mutate func(*sts.AssumeRoleInput)
		want   string
	}{
		{name: "injected packed policy too large", inject: "PackedPolicyTooLarge", want: "PackedPolicyTooLarge"},
		{name: "injected access denied", inject: "AccessDenied", want: "AccessDenied"},
		{name: "role not allowed", mutate: func(in *sts.AssumeRoleInput) { in.RoleArn = aws.String("arn:aws:iam::123456789012:role/admin") }, want: "AccessDenied"},
		{name: "bad session name", mutate: func(in *sts.AssumeRoleInput) { in.RoleSessionName = aws.String("acme/job run") }, want: "ValidationError"},
		{name: "long session name", mutate: func(in *sts.AssumeRoleInput) { in.RoleSessionName = aws.String(string(make([]byte, 65))) }, want: "ValidationError"},
		{name: "duration over max", mutate: func(in *sts.AssumeRoleInput) { in.DurationSeconds = aws.Int32(43201) }, want: "ValidationError"},
		{name: "malformed policy", mutate: func(in *sts.AssumeRoleInput) { in.Policy = aws.String(`{"Version":`) }, want: "MalformedPolicyDocument"},
		{name: "policy too long", mutate: func(in *sts.AssumeRoleInput) { in.Policy = aws.String(`"` + string(make([]byte, 2048)) + `"`) }, want: "ValidationError"},
		{name: "aws tag", mutate: func(in *sts.AssumeRoleInput) {
			in.Tags = []ststypes.Tag{{Key: aws.String("aws:org"), Value: aws.String("x")}}
		}, want: "ValidationError"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.inject != "" {
				fake.FailNextAssumeRole(tt.inject, "injected")
			}
			in := good()
			if tt.mutate != nil {
				tt.mutate(in)
			}
			_, err := client.AssumeRole(ctx, in)
			var ae smithy.APIError
			if !errors.As(err, &ae) || ae.ErrorCode() != tt.want {
				t.Fatalf("AssumeRole: got %v, want API error %s", err, tt.want)
			}
		})
	}
	// After the injected failures, a good request succeeds.
	if _, err := client.AssumeRole(ctx, good()); err != nil {
		t.Fatalf("AssumeRole after errors: got %v, want success", err)
	}
}

func TestSTSExpiredToken(t *testing.T) {
	defer goleak.VerifyNone(t)
	fake := fakeaws.NewSTS()
	fake.SetLifetime(time.Second)
	srv := httptest.NewServer(fake)
	defer srv.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	out, err := stsClient(srv.URL, credentials.NewStaticCredentialsProvider("AKIDTEST", "secret", "")).AssumeRole(ctx, &sts.AssumeRoleInput{
		RoleArn: aws.String("arn:aws:iam::123456789012:role/r"), RoleSessionName: aws.String("s1"),
	})
	if err != nil {
		t.Fatal(err)
	}
	c := out.Credentials
	time.Sleep(time.Until(*c.Expiration) + 10*time.Millisecond)
	_, err = stsClient(srv.URL, credentials.NewStaticCredentialsProvider(*c.AccessKeyId, *c.SecretAccessKey, *c.SessionToken)).
		GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	var ae smithy.APIError
	if !errors.As(err, &ae) || ae.ErrorCode() != "ExpiredToken" {
		t.Fatalf("GetCallerIdentity after expiry: got %v, want ExpiredToken", err)
	}
}
