package agent

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/cordon-dev/cordon/internal/admit"
	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/cordon-dev/cordon/sidecar/credserver"
	"github.com/cordon-dev/cordon/sidecar/credsource"
	"github.com/cordon-dev/cordon/sidecar/handoff"
)

// defaultHeartbeat is a third of dispatcher/admission's 2-minute lease,
// for a dispatcher whose answer does not say.
const defaultHeartbeat = 40 * time.Second

// admit asks the dispatcher whether the run may start. It returns the
// refusal to hand the wrapper ("" when admitted), and the admitter and
// heartbeat interval of an admitted run (nil without admission). An
// unreachable dispatcher is retried for AdmitBudget, then the run is
// refused: a run is never started unadmitted.
func (a *Agent) admit(ctx context.Context, id Identity, log *slog.Logger) (string, Admitter, time.Duration, error) {
	c := a.cfg
	if c.NewAdmitter == nil {
		return "", nil, 0, nil
	}
	adm, err := c.NewAdmitter(ctx, id)
	if err != nil {
		return "", nil, 0, fmt.Errorf("agent: admission client: %w", err)
	}
	admitted := false
	defer func() {
		if !admitted {
			closeAdmitter(adm)
		}
	}()
	deadline := time.Now().Add(c.AdmitBudget)
	wait := 250 * time.Millisecond
	for {
		resp, err := adm.Admit(ctx, c.RunID)
		if err == nil {
			if !resp.Admitted {
				log.Warn("run refused by admission", "run_id", c.RunID, "reason", resp.Reason)
				return resp.Reason, nil, 0, nil
			}
			interval := c.HeartbeatInterval
			if interval == 0 {
				interval = time.Duration(resp.HeartbeatSeconds * float64(time.Second))
			}
			if interval <= 0 {
				interval = defaultHeartbeat
			}
			log.Info("run admitted", "run_id", c.RunID, "heartbeat", interval)
			admitted = true
			return "", adm, interval, nil
		}
		var se *admit.StatusError
		if errors.As(err, &se) && !se.Temporary() {
			log.Warn("admission failed", "run_id", c.RunID, "err", err.Error())
			return "admission failed: " + err.Error(), nil, 0, nil
		}
		if time.Now().Add(wait).After(deadline) {
			log.Warn("admission unavailable", "run_id", c.RunID, "err", err.Error())
			return fmt.Sprintf("the dispatcher's admission was unavailable for %s: %v", c.AdmitBudget, err), nil, 0, nil
		}
		select {
		case <-ctx.Done():
			return "", nil, 0, fmt.Errorf("agent: admission: %w", ctx.Err())
		case <-time.After(wait):
		}
		wait = min(wait*2, 5*time.Second)
	}
}

// closeAdmitter releases the admission client's connections when it has
// any to release (admit.Client does).
func closeAdmitter(adm Admitter) {
	if c, ok := adm.(interface{ Close() }); ok {
		c.Close()
	}
}

// serveCredentials starts the run's scoped-credentials endpoint, primed
// before the job can start. It returns the job's variables, or the
// refusal to hand the wrapper when the dispatcher refuses (or cannot give)
// the credentials.
func (a *Agent) serveCredentials(ctx context.Context, g *errgroup.Group, id Identity, log *slog.Logger) ([]handoff.Var, string, error) {
	c := a.cfg
	source, err := c.NewCredentials(ctx, id, c.RunID)
	if err != nil {
		return nil, "", fmt.Errorf("agent: credentials source: %w", err)
	}
	closeSource := func() {
		if cl, ok := source.(interface{ Close() }); ok {
			cl.Close()
		}
	}
	srv, err := credserver.New(credserver.Config{Source: source, Logger: log})
	if err != nil {
		closeSource()
		return nil, "", fmt.Errorf("agent: %w", err)
	}
	if err := credsource.PrimeWithRetry(ctx, srv, c.AdmitBudget); err != nil {
		closeSource()
		if ctx.Err() != nil {
			return nil, "", fmt.Errorf("agent: credentials: %w", ctx.Err())
		}
		// The error names the dispatcher's reason, never a credential.
		log.Warn("run refused: no scoped credentials", "run_id", c.RunID, "err", err.Error())
		return nil, "no scoped credentials for this run: " + err.Error(), nil
	}
	ln, err := net.Listen("tcp", c.CredentialsAddr)
	if err != nil {
		closeSource()
		return nil, "", fmt.Errorf("agent: credentials endpoint: %w", err)
	}
	vars, err := credsource.ExtraEnv(srv, ln.Addr())
	if err != nil {
		ln.Close()
		closeSource()
		return nil, "", fmt.Errorf("agent: credentials endpoint: %w", err)
	}
	g.Go(func() error {
		defer closeSource()
		if err := srv.Serve(ctx, ln); err != nil {
			return fmt.Errorf("agent: %w", err)
		}
		return nil
	})
	log.Info("credentials endpoint ready", "addr", ln.Addr().String())
	return vars, "", nil
}

// handOutRefusal makes the wrapper's handoff a refusal: the binary is
// copied and the socket served as usual (so the job container starts and
// learns why), but the job gets no env and does not start.
func (a *Agent) handOutRefusal(ctx context.Context, g *errgroup.Group, id JobIdentity, reason string, log *slog.Logger) error {
	c := a.cfg
	if err := copyExecutable(c.Executable, BinaryPath(c.SharedDir)); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	srv, err := handoff.Listen(handoff.ServerConfig{
		Socket: SocketPath(c.SharedDir),
		UID:    c.JobUID,
		Env:    handoff.Env{Refusal: reason},
		OnRefused: func(uid, pid int, why string) {
			a.emit(id, "SECRETS_HANDOFF_REFUSED", audit.ResultDenied, map[string]any{"peer_uid": uid, "peer_pid": pid, "reason": why})
		},
		Logger: log,
	})
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	g.Go(func() error { return srv.Serve(ctx) })
	close(a.ready)
	log.Warn("agent ready: the run is refused and its job will not start", "reason", reason)
	return nil
}

// keepLease heartbeats the admitted run until the wrapper's final report,
// passes a termination order on to the wrapper, and then reports the end.
// A failing heartbeat is logged, never a reason to stop the job: the
// dispatcher may be down.
func (a *Agent) keepLease(ctx context.Context, adm Admitter, srv *handoff.Server, interval time.Duration, log *slog.Logger) {
	t := time.NewTicker(interval)
	defer t.Stop()
	ordered := false
	for {
		select {
		case <-ctx.Done():
			return
		case res := <-a.ended:
			req := admit.FinishRequest{ExitCode: &res.ExitCode}
			if res.Terminated {
				req.Terminated = true
				req.Signal = res.SignalSent
			}
			a.finish(ctx, adm, req, log)
			return
		case <-t.C:
		}
		resp, err := adm.Heartbeat(ctx, a.cfg.RunID)
		if err != nil {
			log.Warn("heartbeat failed", "run_id", a.cfg.RunID, "err", err.Error())
			continue
		}
		if o := resp.Terminate; o != nil && !ordered {
			ordered = true
			grace := time.Duration(o.GraceSeconds * float64(time.Second))
			log.Warn("termination ordered", "run_id", a.cfg.RunID, "reason", o.Reason, "grace", grace)
			srv.Order(handoff.Order{Reason: o.Reason, Grace: grace})
		}
	}
}

// finish reports the run's end, retrying a dispatcher that is briefly
// away; after that the lease expiring frees the slot anyway.
func (a *Agent) finish(ctx context.Context, adm Admitter, req admit.FinishRequest, log *slog.Logger) {
	// The end is worth reporting even while the agent stops.
	fctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
	defer cancel()
	wait := 250 * time.Millisecond
	for {
		err := adm.Finish(fctx, a.cfg.RunID, req)
		if err == nil {
			log.Info("run finished", "run_id", a.cfg.RunID, "terminated", req.Terminated, "signal", req.Signal)
			return
		}
		var se *admit.StatusError
		if errors.As(err, &se) && !se.Temporary() || fctx.Err() != nil {
			log.Warn("finish failed: the lease will expire", "run_id", a.cfg.RunID, "err", err.Error())
			return
		}
		select {
		case <-fctx.Done():
			log.Warn("finish failed: the lease will expire", "run_id", a.cfg.RunID, "err", err.Error())
			return
		case <-time.After(wait):
		}
		wait = min(wait*2, 5*time.Second)
	}
}
