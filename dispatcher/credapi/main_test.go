package credapi_test

import (
	"context"
	"fmt"
	"os"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/sts"
	"go.uber.org/goleak"

	"github.com/cordon-dev/cordon/test/pgtest"
)

// jobEnv makes this test binary act as a job (see runJob).
const jobEnv = "CREDAPI_TEST_JOB"

func TestMain(m *testing.M) {
	if os.Getenv(jobEnv) != "" {
		os.Exit(runJob())
	}
	goleak.VerifyTestMain(pgtest.WithShared(m))
}

// runJob is an ordinary AWS SDK program with no Cordon code: the default
// credential chain, an STS client, one signed GetCallerIdentity. It prints
// the caller ARN.
func runJob() int {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	cfg, err := config.LoadDefaultConfig(ctx)
	if err != nil {
		fmt.Fprintln(os.Stderr, "job: load config:", err)
		return 2
	}
	out, err := sts.NewFromConfig(cfg).GetCallerIdentity(ctx, &sts.GetCallerIdentityInput{})
	if err != nil {
		fmt.Fprintln(os.Stderr, "job:", err)
		return 1
	}
	fmt.Println(*out.Arn)
	return 0
}
