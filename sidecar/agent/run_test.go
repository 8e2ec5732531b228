package agent

import (
	"context"
	"errors"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cordon-dev/cordon/internal/admit"
	"github.com/cordon-dev/cordon/sidecar/handoff"
	"github.com/cordon-dev/cordon/sidecar/jobrun"
)

// fakeAdmitter answers as a dispatcher would, and records what it was told.
type fakeAdmitter struct {
	admit     func() (admit.AdmitResponse, error)
	terminate bool // heartbeats order termination

	mu         sync.Mutex // guards the following
	admits     int
	heartbeats int
	finished   []admit.FinishRequest
}

func (f *fakeAdmitter) Admit(ctx context.Context, runID string) (admit.AdmitResponse, error) {
	f.mu.Lock()
	f.admits++
	f.mu.Unlock()
	return f.admit()
}

func (f *fakeAdmitter) Heartbeat(ctx context.Context, runID string) (admit.HeartbeatResponse, error) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.heartbeats++
	if f.terminate {
		return admit.HeartbeatResponse{Terminate: &admit.TerminateOrder{Reason: "anomaly: egress", GraceSeconds: 2}}, nil
	}
	return admit.HeartbeatResponse{}, nil
}

func (f *fakeAdmitter) Finish(ctx context.Context, runID string, req admit.FinishRequest) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.finished = append(f.finished, req)
	return nil
}

func (f *fakeAdmitter) state() (admits, heartbeats int, finished []admit.FinishRequest) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.admits, f.heartbeats, append([]admit.FinishRequest(nil), f.finished...)
}

func waitHealthy(t *testing.T, f *fixture) {
	t.Helper()
	for deadline := time.Now().Add(10 * time.Second); healthStatus(f.health) != http.StatusOK; {
		if time.Now().After(deadline) {
			t.Fatal("agent not healthy in 10s")
		}
		select {
		case err := <-f.done:
			t.Fatalf("agent stopped: %v", err)
		case <-time.After(20 * time.Millisecond):
		}
	}
}

func stopAgent(t *testing.T, f *fixture) {
	t.Helper()
	f.cancel()
	if err := <-f.done; err != nil {
		t.Fatalf("agent: %v", err)
	}
}

// TestAgentRefusedRuns: a run the dispatcher refuses, or cannot admit
// (a permanent error, or unavailable past the budget), is handed to the
// wrapper as a refusal with the reason; no secret is fetched for it.
func TestAgentRefusedRuns(t *testing.T) {
	leakCheck(t)
	for _, tc := range []struct {
		name       string
		admit      func() (admit.AdmitResponse, error)
		wantReason string
		minAdmits  int
	}{
		{"refused", func() (admit.AdmitResponse, error) {
			return admit.AdmitResponse{Reason: "org acme has 3 runs running, the limit is 3; retry later"}, nil
		}, "org acme has 3 runs running, the limit is 3; retry later", 1},
		{"permanent error", func() (admit.AdmitResponse, error) {
			return admit.AdmitResponse{}, &admit.StatusError{Code: http.StatusNotFound, Message: "not found"}
		}, "admission failed: dispatcher answered 404: not found", 1},
		{"unavailable", func() (admit.AdmitResponse, error) {
			return admit.AdmitResponse{}, &admit.StatusError{Code: http.StatusServiceUnavailable, Message: "admit failed on the dispatcher; retry"}
		}, "admission was unavailable", 2},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fa := &fakeAdmitter{admit: tc.admit}
			f := startAgent(t, "spiffe://cordon.test/org/acme/job/block_follower", `{"monad_rpc_key": "v-1"}`, []string{"monad_rpc_key"},
				func(c *Config) {
					c.NewAdmitter = func(context.Context, Identity) (Admitter, error) { return fa, nil }
					c.AdmitBudget = 600 * time.Millisecond
				})
			waitHealthy(t, f)
			ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			env, err := handoff.Fetch(ctx, SocketPath(f.shared))
			var rr *handoff.RunRefusedError
			if !errors.As(err, &rr) || !strings.Contains(rr.Reason, tc.wantReason) {
				t.Fatalf("Fetch: got %+v, %v; want a refusal saying %q", env, err, tc.wantReason)
			}
			stopAgent(t, f)
			admits, _, finished := fa.state()
			if admits < tc.minAdmits || len(finished) != 0 {
				t.Errorf("got %d admits, finishes %+v; want >= %d admits and no finish", admits, finished, tc.minAdmits)
			}
			for _, ev := range f.audit.all() {
				if ev.EventType == "SECRETS_ACCESSED" {
					t.Errorf("secrets fetched for a refused run: %+v", ev)
				}
			}
		})
	}
}

// TestAgentCarriesOutTermination: an admitted run is heartbeated; the
// dispatcher's order reaches the wrapper's watch with its grace; the
// wrapper's final report becomes Finish with terminated and the signal.
func TestAgentCarriesOutTermination(t *testing.T) {
	leakCheck(t)
	fa := &fakeAdmitter{admit: func() (admit.AdmitResponse, error) {
		return admit.AdmitResponse{Admitted: true, HeartbeatSeconds: 40}, nil
	}, terminate: true}
	f := startAgent(t, "spiffe://cordon.test/org/acme/job/block_follower", `{}`, nil, func(c *Config) {
		c.NewAdmitter = func(context.Context, Identity) (Admitter, error) { return fa, nil }
		c.HeartbeatInterval = 50 * time.Millisecond
	})
	waitHealthy(t, f)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	env, err := handoff.Fetch(ctx, SocketPath(f.shared))
	if err != nil {
		t.Fatal(err)
	}
	order, err := handoff.Watch(ctx, SocketPath(f.shared), env.ReportToken)
	if err != nil {
		t.Fatal(err)
	}
	if order.Reason != "anomaly: egress" || order.Grace != 2*time.Second {
		t.Fatalf("order: got %+v, want the dispatcher's reason and 2s grace", order)
	}
	res := jobrun.Result{ExitCode: 137, Signal: 9, Terminated: true, SignalSent: "SIGKILL"}
	if err := handoff.Report(ctx, SocketPath(f.shared), env.ReportToken, res); err != nil {
		t.Fatal(err)
	}
	var finished []admit.FinishRequest
	for deadline := time.Now().Add(5 * time.Second); len(finished) == 0 && time.Now().Before(deadline); time.Sleep(20 * time.Millisecond) {
		_, _, finished = fa.state()
	}
	// Heartbeats stop with the finish (the agent itself runs on).
	_, hb, _ := fa.state()
	time.Sleep(200 * time.Millisecond)
	if _, after, _ := fa.state(); after != hb {
		t.Errorf("heartbeats went on after the finish: %d, then %d", hb, after)
	}
	stopAgent(t, f)
	if len(finished) != 1 {
		t.Fatalf("got %d finishes, want 1", len(finished))
	}
	got := finished[0]
	if got.ExitCode == nil || *got.ExitCode != 137 || !got.Terminated || got.Signal != "SIGKILL" {
		t.Errorf("finish: got %+v (exit %v), want exit 137, terminated, SIGKILL", got, got.ExitCode)
	}
}
