package credapi_test

import (
	"net/http/httptest"
	"testing"

	"github.com/aws/aws-sdk-go-v2/aws"
	awscreds "github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/sts"

	"github.com/cordon-dev/cordon/dispatcher/credapi"
	"github.com/cordon-dev/cordon/test/fakeaws"
)

func TestNewSTSClient(t *testing.T) {
	fake := fakeaws.NewSTS()
	srv := httptest.NewServer(fake)
	defer srv.Close()
	creds := awscreds.NewStaticCredentialsProvider("AKIDDISPATCHER", "dispatcher-secret", "")
	c, err := credapi.NewSTSClient(ctxT(t), credapi.STSConfig{Endpoint: srv.URL, Region: "us-east-1", Credentials: creds})
	if err != nil {
		t.Fatal(err)
	}
	out, err := c.AssumeRole(ctxT(t), &sts.AssumeRoleInput{
		RoleArn: aws.String("arn:aws:iam::123456789012:role/cordon-data-acme"), RoleSessionName: aws.String("session"),
	})
	if err != nil || out.Credentials == nil {
		t.Fatalf("AssumeRole through the configured endpoint: %v", err)
	}
	if last, _ := fake.LastRequest(); last.SignedBy != "AKIDDISPATCHER" {
		t.Fatalf("signed by %q, want the configured credentials", last.SignedBy)
	}

	for _, bad := range []string{"http://sts.example.com", "ftp://127.0.0.1", "https://u:p@sts.example.com", "not a url"} {
		if _, err := credapi.NewSTSClient(ctxT(t), credapi.STSConfig{Endpoint: bad, Region: "us-east-1", Credentials: creds}); err == nil {
			t.Errorf("endpoint %q: got nil error, want a refusal", bad)
		}
	}
}
