package egress

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"go.uber.org/goleak"

	"github.com/cordon-dev/cordon/egress-proxy/proxy"
	"github.com/cordon-dev/cordon/internal/usage"
	"github.com/cordon-dev/cordon/sidecar/agent"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

func TestValidate(t *testing.T) {
	for _, tc := range []struct {
		name string
		cfg  Config
		want string // "" for valid
	}{
		{"static", Config{Allowlists: "d"}, ""},
		{"xds with gateway", Config{XDS: "cp:18000", Gateway: "gw:8443"}, ""},
		{"neither", Config{}, "pass --xds HOST:PORT"},
		{"both", Config{Allowlists: "d", XDS: "cp:1"}, "mutually exclusive"},
		{"gateway without port", Config{XDS: "cp:1", Gateway: "gw"}, "want HOST:PORT"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			err := tc.cfg.Validate()
			if (err == nil) != (tc.want == "") || (err != nil && !strings.Contains(err.Error(), tc.want)) {
				t.Fatalf("got %v, want %q", err, tc.want)
			}
		})
	}
}

func TestCounterCountsPerRuleAndDenials(t *testing.T) {
	var c Counter
	var wg sync.WaitGroup
	for range 4 {
		wg.Go(func() {
			for range 100 {
				c.Observe(proxy.Observation{Key: "api.example.com:443", BytesOut: 10, BytesIn: 3})
				c.Observe(proxy.Observation{Key: DeniedKey})
			}
		})
	}
	wg.Wait()
	got, denials := c.Snapshot()
	want := map[string]usage.Egress{
		"api.example.com:443": {BytesOut: 4000, BytesIn: 1200, Requests: 400},
		DeniedKey:             {Requests: 400, Denials: 400},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) || denials != 400 {
		t.Fatalf("got %v denials %d, want %v denials 400", got, denials, want)
	}
}

func TestCounterIsBounded(t *testing.T) {
	var c Counter
	for i := range MaxKeys + 100 {
		c.Observe(proxy.Observation{Key: fmt.Sprintf("h%d.example:443", i), BytesOut: 1})
	}
	got, _ := c.Snapshot()
	if len(got) != MaxKeys+1 {
		t.Fatalf("got %d keys, want %d (MaxKeys plus %q)", len(got), MaxKeys+1, OverflowKey)
	}
	if o := got[OverflowKey]; o.Requests != 100 || o.BytesOut != 100 {
		t.Fatalf("overflow bucket: got %+v, want 100 requests and bytes", o)
	}
}

// TestStaticPolicyIsReadyAtOnce: a static policy is loaded before the proxy
// exists, so the agent need not wait for it (an xDS one is waited for; see
// TestAgentWithXDSPolicy in cmd/cordon-sidecar).
func TestStaticPolicyIsReadyAtOnce(t *testing.T) {
	dir := t.TempDir()
	yaml := "version: 1\norg: acme\nendpoint_sets:\n  s:\n    entries:\n      - host: a.example.com\n        ports: [443]\njobs:\n  j:\n    class: platform\n    allow: [s]\n"
	if err := os.WriteFile(filepath.Join(dir, "acme.yaml"), []byte(yaml), 0o644); err != nil {
		t.Fatal(err)
	}
	id := agent.Identity{JobIdentity: agent.JobIdentity{ID: spiffeid.RequireFromString("spiffe://cordon.test/org/acme/job/j"), Org: "acme", Job: "j"}}
	p, err := build(Config{Allowlists: dir}, id)
	if err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.PolicyReady():
	default:
		t.Fatal("PolicyReady of a static policy is not closed")
	}
}
