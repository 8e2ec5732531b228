package spiffedev

import (
	"context"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/proto/spiffe/workload"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"go.uber.org/goleak"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"
)

func startWorkload(t *testing.T, ttl time.Duration) (*WorkloadServer, string, func()) {
	t.Helper()
	ca, err := NewCA("cordon.test")
	if err != nil {
		t.Fatal(err)
	}
	id, err := ca.JobID("acme", "block_follower")
	if err != nil {
		t.Fatal(err)
	}
	srv, err := NewWorkloadServer(WorkloadConfig{CA: ca, ID: id, TTL: ttl})
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(t.TempDir(), "workload.sock")
	ln, err := ListenUnix(sock)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- srv.Serve(ctx, ln) }()
	return srv, "unix://" + sock, func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Serve: %v", err)
		}
	}
}

func TestWorkloadAPIRotationObservedByX509Source(t *testing.T) {
	defer goleak.VerifyNone(t)
	srv, addr, stop := startWorkload(t, 2*time.Second)
	defer stop()

	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	src, err := workloadapi.NewX509Source(ctx, workloadapi.WithClientOptions(workloadapi.WithAddr(addr)))
	if err != nil {
		t.Fatal(err)
	}
	defer src.Close()

	first, err := src.GetX509SVID()
	if err != nil {
		t.Fatal(err)
	}
	if got, want := first.ID.String(), "spiffe://cordon.test/org/acme/job/block_follower"; got != want {
		t.Fatalf("got SPIFFE ID %s, want %s", got, want)
	}
	if life := first.Certificates[0].NotAfter.Sub(time.Now()); life > 3*time.Second {
		t.Fatalf("got an SVID valid for %s more, want a short one (<= TTL 2s)", life)
	}
	bundle, err := src.GetX509BundleForTrustDomain(first.ID.TrustDomain())
	if err != nil || len(bundle.X509Authorities()) != 1 {
		t.Fatalf("got bundle %v, %v; want the CA", bundle, err)
	}

	// TTL 2s rotates every second; the source must see a new certificate.
	deadline := time.Now().Add(5 * time.Second)
	for {
		cur, err := src.GetX509SVID()
		if err != nil {
			t.Fatal(err)
		}
		if cur.Certificates[0].SerialNumber.Cmp(first.Certificates[0].SerialNumber) != 0 {
			if !cur.Certificates[0].NotAfter.After(first.Certificates[0].NotAfter) {
				t.Fatalf("rotated SVID expires %s, want after the first (%s)", cur.Certificates[0].NotAfter, first.Certificates[0].NotAfter)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no rotation observed in 5s (server rotated %d times)", srv.Rotations())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func TestWorkloadAPIRequiresSecurityHeader(t *testing.T) {
	defer goleak.VerifyNone(t)
	_, addr, stop := startWorkload(t, time.Minute)
	defer stop()

	conn, err := grpc.NewClient(addr, grpc.WithTransportCredentials(insecure.NewCredentials()))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	stream, err := workload.NewSpiffeWorkloadAPIClient(conn).FetchX509SVID(ctx, &workload.X509SVIDRequest{})
	if err != nil {
		t.Fatal(err)
	}
	_, err = stream.Recv()
	if status.Code(err) != codes.InvalidArgument {
		t.Fatalf("got %v, want InvalidArgument for a request without the workload.spiffe.io header", err)
	}
}
