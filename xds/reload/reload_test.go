package reload

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"
	"go.uber.org/goleak"

	"github.com/cordon-dev/cordon/internal/allowlist"
	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/cordon-dev/cordon/xds/server"
	"github.com/cordon-dev/cordon/xds/translate"
)

func TestMain(m *testing.M) { goleak.VerifyTestMain(m) }

const goodFile = `version: 1
org: acme
endpoint_sets:
  storage:
    entries:
      - host: s3.us-east-1.amazonaws.com
        ports: [443]
jobs:
  block_follower:
    class: platform
    allow: [storage]
  price_alert:
    class: user
    allow: [storage]
`

type publication struct {
	version uint64
	routes  []*routev3.RouteConfiguration
}

type fakePublisher struct {
	mu   sync.Mutex
	pubs []publication
	ch   chan publication
}

func newFakePublisher() *fakePublisher { return &fakePublisher{ch: make(chan publication, 100)} }

func (f *fakePublisher) Publish(_ context.Context, v uint64, routes []*routev3.RouteConfiguration) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.pubs = append(f.pubs, publication{v, routes})
	f.ch <- publication{v, routes}
	return nil
}

func (f *fakePublisher) count() int {
	f.mu.Lock()
	defer f.mu.Unlock()
	return len(f.pubs)
}

type recorder struct {
	mu     sync.Mutex
	events []audit.Event
}

func (r *recorder) Emit(ev audit.Event) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.events = append(r.events, ev)
}

func (r *recorder) last() audit.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.events[len(r.events)-1]
}

func counterValue(c prometheus.Counter) float64 {
	var m dto.Metric
	c.Write(&m)
	return m.GetCounter().GetValue()
}

func write(t *testing.T, dir, name, content string) {
	t.Helper()
	if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}

// policyOf decodes the served route of org/job back into a policy.
func policyOf(t *testing.T, p publication, id string) *allowlist.JobPolicy {
	t.Helper()
	for _, rc := range p.routes {
		if rc.GetName() == "egress/"+id {
			jp, err := translate.FromRouteConfiguration(rc)
			if err != nil {
				t.Fatal(err)
			}
			return jp
		}
	}
	t.Fatalf("version %d has no route for %s", p.version, id)
	return nil
}

func TestBrokenEditKeepsLastGood(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "acme.yaml", goodFile)
	pub, rec, m := newFakePublisher(), &recorder{}, server.NewMetrics(nil)
	r, err := New(Config{Dir: dir, StateDir: t.TempDir(), Audit: rec, Metrics: m}, pub)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := r.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	if got := pub.count(); got != 1 || pub.pubs[0].version != 1 || len(pub.pubs[0].routes) != 2 {
		t.Fatalf("got %d publications (first %+v), want version 1 with 2 routes", got, pub.pubs)
	}
	if ev := rec.last(); ev.EventType != EventApplied || ev.Result != audit.ResultSuccess {
		t.Errorf("got audit %s %s, want %s SUCCESS", ev.EventType, ev.Result, EventApplied)
	}

	// A typo in a key and an undefined set: two errors, nothing published.
	write(t, dir, "acme.yaml", strings.Replace(goodFile, "class: user", "clas: user", 1)+
		"  evil:\n    class: platform\n    allow: [nope]\n")
	err = r.Reload(ctx)
	var list allowlist.ErrorList
	if !errors.As(err, &list) || len(list) < 2 {
		t.Fatalf("got %v, want an ErrorList with at least 2 errors", err)
	}
	if got := pub.count(); got != 1 {
		t.Fatalf("got %d publications after a broken edit, want still 1", got)
	}
	if got := counterValue(m.ConfigErrors); got != float64(len(list)) {
		t.Errorf("got cordon_xds_config_errors_total %v, want %d", got, len(list))
	}
	ev := rec.last()
	if ev.EventType != EventRejected || ev.Result != audit.ResultFailure || ev.Metadata["error_count"] != len(list) {
		t.Errorf("got audit %+v, want %s FAILURE with %d errors", ev, EventRejected, len(list))
	}
	if msgs, _ := ev.Metadata["errors"].([]string); len(msgs) == 0 || !strings.Contains(msgs[0], "acme.yaml:") {
		t.Errorf("got audit errors %v, want FILE:LINE:COL messages", ev.Metadata["errors"])
	}
	if r.Version() != 1 {
		t.Errorf("got version %d after a broken edit, want 1", r.Version())
	}

	// Removing every file is refused too (a wrong mount, not an intent).
	os.Remove(filepath.Join(dir, "acme.yaml"))
	if err := r.Reload(ctx); err == nil {
		t.Fatal("empty directory: got nil error")
	}

	// Fixed: version 2, with the edit.
	write(t, dir, "acme.yaml", strings.Replace(goodFile, "ports: [443]", "ports: [443, 8443]", 1))
	if err := r.Reload(ctx); err != nil {
		t.Fatal(err)
	}
	last := pub.pubs[pub.count()-1]
	if last.version != 2 {
		t.Fatalf("got version %d, want 2", last.version)
	}
	if p := policyOf(t, last, "acme/price_alert"); len(p.Rules) != 1 || len(p.Rules[0].Ports) != 2 {
		t.Errorf("got rules %+v, want one rule with ports 443 and 8443", p.Rules)
	}
}

func TestUnchangedContentKeepsVersion(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "acme.yaml", goodFile)
	pub := newFakePublisher()
	r, err := New(Config{Dir: dir, StateDir: t.TempDir()}, pub)
	if err != nil {
		t.Fatal(err)
	}
	for range 3 {
		if err := r.Reload(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	// A comment changes the bytes, not the policy.
	write(t, dir, "acme.yaml", "# reviewed\n"+goodFile)
	if err := r.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := pub.count(); got != 1 {
		t.Errorf("got %d publications of the same content, want 1", got)
	}
}

func TestVersionsNeverGoBackwards(t *testing.T) {
	dir, state := t.TempDir(), t.TempDir()
	write(t, dir, "acme.yaml", goodFile)
	var versions []uint64
	for i := range 3 { // three restarts, each with one reload and one edit
		pub := newFakePublisher()
		r, err := New(Config{Dir: dir, StateDir: state}, pub)
		if err != nil {
			t.Fatal(err)
		}
		if err := r.Reload(context.Background()); err != nil {
			t.Fatal(err)
		}
		write(t, dir, "acme.yaml", strings.Replace(goodFile, "[443]", "[443, "+string(rune('1'+i))+"443]", 1))
		if err := r.Reload(context.Background()); err != nil {
			t.Fatal(err)
		}
		for _, p := range pub.pubs {
			versions = append(versions, p.version)
		}
	}
	for i := 1; i < len(versions); i++ {
		if versions[i] <= versions[i-1] {
			t.Fatalf("got versions %v, want strictly increasing", versions)
		}
	}
	if len(versions) != 6 || versions[5] != 6 {
		t.Errorf("got versions %v, want 1..6", versions)
	}

	// Without a state dir, versions come from the clock and still exceed
	// what a persisted counter would have reached.
	now := time.UnixMilli(1_900_000_000_000)
	pub := newFakePublisher()
	r, err := New(Config{Dir: dir, Now: func() time.Time { return now }}, pub)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := pub.pubs[0].version; got != 1_900_000_000_000 {
		t.Errorf("got clock version %d, want 1900000000000", got)
	}
}

func TestCorruptVersionStateIsAnError(t *testing.T) {
	state := t.TempDir()
	write(t, state, "version", "seven\n")
	if _, err := New(Config{Dir: t.TempDir(), StateDir: state}, newFakePublisher()); err == nil {
		t.Fatal("got nil error for a corrupt version file")
	}
}

func TestWatch(t *testing.T) {
	dir := t.TempDir()
	write(t, dir, "acme.yaml", goodFile)
	pub := newFakePublisher()
	r, err := New(Config{Dir: dir, StateDir: t.TempDir(), Debounce: 50 * time.Millisecond}, pub)
	if err != nil {
		t.Fatal(err)
	}
	if err := r.Reload(context.Background()); err != nil {
		t.Fatal(err)
	}
	<-pub.ch
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- r.Watch(ctx) }()
	defer func() {
		cancel()
		if err := <-done; err != nil {
			t.Errorf("Watch: %v", err)
		}
	}()
	time.Sleep(50 * time.Millisecond) // let the watch start

	wait := func(what string) publication {
		t.Helper()
		select {
		case p := <-pub.ch:
			return p
		case <-time.After(5 * time.Second):
			t.Fatalf("timed out waiting for %s", what)
			return publication{}
		}
	}

	tests := []struct {
		name  string
		edit  func()
		ports int
	}{
		{"write in place", func() {
			write(t, dir, "acme.yaml", strings.Replace(goodFile, "[443]", "[443, 1443]", 1))
		}, 2},
		{"rename over (vim, sed -i)", func() {
			write(t, dir, ".acme.yaml.swp", strings.Replace(goodFile, "[443]", "[443, 1443, 2443]", 1))
			if err := os.Rename(filepath.Join(dir, ".acme.yaml.swp"), filepath.Join(dir, "acme.yaml")); err != nil {
				t.Fatal(err)
			}
		}, 3},
		{"burst of writes is one reload", func() {
			for i := range 20 {
				write(t, dir, "acme.yaml", strings.Replace(goodFile, "[443]", "[443, "+string(rune('1'+i%9))+"0]", 1))
			}
			write(t, dir, "acme.yaml", goodFile)
		}, 1},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			before := pub.count()
			tt.edit()
			p := wait(tt.name)
			if got := len(policyOf(t, p, "acme/block_follower").Rules[0].Ports); got != tt.ports {
				t.Errorf("got %d ports, want %d", got, tt.ports)
			}
			time.Sleep(200 * time.Millisecond)
			if got := pub.count() - before; got != 1 {
				t.Errorf("got %d publications, want 1", got)
			}
		})
	}
}
