package spiffedev

import (
	"context"
	"encoding/pem"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"go.uber.org/goleak"
)

func TestParseEndpoint(t *testing.T) {
	tests := []struct {
		name, in string
		wantErr  bool
	}{
		{name: "ok", in: "/run/a.sock=spiffe://cordon.test/org/acme/job/x"},
		{name: "no equals", in: "/run/a.sock", wantErr: true},
		{name: "empty socket", in: "=spiffe://cordon.test/x", wantErr: true},
		{name: "bad id", in: "/run/a.sock=https://cordon.test/x", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := ParseEndpoint(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseEndpoint(%q) error = %v, want error %v", tt.in, err, tt.wantErr)
			}
		})
	}
}

func TestRunDevServesEveryEndpoint(t *testing.T) {
	defer goleak.VerifyNone(t)
	dir := t.TempDir()
	var eps []Endpoint
	for _, s := range []string{"job.sock=spiffe://cordon.test/org/acme/job/x", "xds.sock=spiffe://cordon.test/service/xds"} {
		ep, err := ParseEndpoint(dir + "/" + s)
		if err != nil {
			t.Fatal(err)
		}
		eps = append(eps, ep)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	bundle := filepath.Join(dir, "bundle.pem")
	go func() { done <- RunDev(ctx, DevConfig{TrustDomain: "cordon.test", Endpoints: eps, BundleOut: bundle}) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("RunDev: %v", err)
		}
	}()
	for _, ep := range eps {
		fctx, fcancel := context.WithTimeout(context.Background(), 5*time.Second)
		var svid interface{ String() string }
		var err error
		for fctx.Err() == nil { // the socket appears once RunDev listens
			s, ferr := workloadapi.FetchX509SVID(fctx, workloadapi.WithAddr("unix://"+ep.Socket))
			if ferr == nil {
				svid, err = s.ID, nil
				break
			}
			err = ferr
			time.Sleep(20 * time.Millisecond)
		}
		fcancel()
		if err != nil || svid.String() != ep.ID.String() {
			t.Fatalf("socket %s: got %v, %v; want %s", ep.Socket, svid, err, ep.ID)
		}
	}
	b, err := os.ReadFile(bundle)
	if err != nil {
		t.Fatal(err)
	}
	if blk, _ := pem.Decode(b); blk == nil || blk.Type != "CERTIFICATE" {
		t.Fatalf("bundle file is not a PEM certificate: %q", b)
	}
}
