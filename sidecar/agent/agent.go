// Package agent is `cordon-sidecar agent`, the sidecar container of a job's
// task (DESIGN.md "How a task runs", steps 1-4): it gets the task's SVID
// from the SPIFFE Workload API and derives the org and job from it, fetches
// the job's declared secrets (failing closed), copies its own binary into
// the volume shared with the job container, hands the job's env to
// `cordon-sidecar run` once over a peer-checked unix socket, and serves a
// health endpoint that turns healthy only when all of that is done and the
// embedded egress proxy enforces its job's policy (with xDS, once the first
// policy from the control plane is applied).
//
// Seams for what other packages provide: Config.NewProxy (the embedded
// egress proxy of egress-proxy/proxy, given the live SVID source for its
// mTLS), Config.Audit and Config.Usage (delivery to the dispatcher, e.g.
// through sidecar/spool) and Config.ExtraEnv (sidecar/credserver's
// variables). With no proxy configured the agent serves none, so the job's
// HTTP_PROXY points at a closed port and its egress fails closed.
//
// With Config.NewAdmitter the agent asks the dispatcher whether the run may
// start before it fetches anything (dispatcher/admission), heartbeats the
// run's lease while the job runs, passes a termination order in a
// heartbeat's answer on to the wrapper (handoff.Server.Order), and reports
// the job's end (Finish) when the wrapper's final report arrives. With
// Config.NewCredentials it serves the run's scoped AWS credentials on
// loopback (sidecar/credserver), primed before the handoff serves. A run
// refused by either is handed to the wrapper as a refusal (handoff
// Env.Refusal): the job does not start and its stderr says why.
//
// It is not the job wrapper (sidecar/jobrun) and keeps no secret on disk.
package agent

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"runtime/debug"
	"sort"
	"sync/atomic"
	"time"

	"github.com/google/uuid"
	"github.com/spiffe/go-spiffe/v2/spiffeid"
	"github.com/spiffe/go-spiffe/v2/workloadapi"
	"golang.org/x/sync/errgroup"

	"github.com/cordon-dev/cordon/internal/admit"
	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/cordon-dev/cordon/internal/jobid"
	"github.com/cordon-dev/cordon/internal/usage"
	"github.com/cordon-dev/cordon/sidecar/credserver"
	"github.com/cordon-dev/cordon/sidecar/handoff"
	"github.com/cordon-dev/cordon/sidecar/jobrun"
	"github.com/cordon-dev/cordon/sidecar/secrets"
)

// EgressProxy is the embedded egress proxy (sidecar/egress builds it).
// Serve blocks until Shutdown or ctx ends.
type EgressProxy interface {
	Serve(ctx context.Context, ln net.Listener) error
	Shutdown(ctx context.Context) error
	// PolicyReady is closed once the proxy enforces its job's policy: at
	// once for a static one, at the first policy applied for one from
	// xDS (until then it denies everything). The agent is not healthy, so
	// the job does not start, before it is closed.
	PolicyReady() <-chan struct{}
}

// UsageSink takes usage reports for delivery to the dispatcher.
type UsageSink interface {
	Emit(r usage.Report)
}

// Config configures the agent.
type Config struct {
	// WorkloadAPIAddr is the Workload API address ("unix:///path"). If
	// empty, SPIFFE_ENDPOINT_SOCKET.
	WorkloadAPIAddr string
	// Secrets are the job's declared secret names. If empty, none.
	Secrets []string
	// Provider fetches the secrets; it is built by the caller from the org
	// the SVID names (see NewProvider). Required.
	Provider func(ctx context.Context, id JobIdentity) (secrets.Provider, error)
	// SharedDir is the volume shared with the job container: the binary is
	// copied to SharedDir/bin/cordon-sidecar and the handoff socket is
	// SharedDir/run/agent.sock. Required.
	SharedDir string
	// JobUID is the uid the job container runs as: the only peer the
	// handoff socket serves. If negative, the agent's own uid.
	JobUID int
	// HealthAddr is where GET /healthz answers 200 once the agent is ready
	// and its egress proxy enforces its policy; before, 503 with "starting"
	// or "waiting for the egress policy". If empty, 127.0.0.1:9902.
	HealthAddr string
	// ProxyAddr is where the egress proxy listens. If empty,
	// 127.0.0.1:3128.
	ProxyAddr string
	// NewProxy builds the embedded egress proxy once the identity is known:
	// the SVID source is what its xDS subscription and gateway mTLS use. If
	// nil, no proxy is served.
	NewProxy func(ctx context.Context, id Identity) (EgressProxy, error)
	// Usage receives the run's usage reports: interim ones every
	// UsageInterval and the final one, built from what the wrapper
	// measured (sidecar/delivery's Usage satisfies it). If nil, the final
	// report is only logged.
	Usage UsageSink
	// Egress returns the embedded proxy's cumulative per-destination
	// egress and denials (sidecar/egress Counter.Snapshot) for the usage
	// reports. If nil, reports carry none.
	Egress func() (map[string]usage.Egress, int64)
	// UsageInterval is the period of the interim usage reports of a long
	// job (cumulative counters, Final false). If zero, only the final
	// report is sent.
	UsageInterval time.Duration
	// Deliver runs for the agent's life once the identity is known, e.g.
	// sidecar/delivery's Run with an mTLS client built from id.Source. The
	// SVID source stays open until it returns. If nil, nothing is
	// delivered (local runs).
	Deliver func(ctx context.Context, id Identity) error
	// RunID labels the usage reports (the dispatcher groups a run's
	// reports by it). If empty, a fresh UUIDv7.
	RunID string
	// ExtraEnv is handed to the job besides its secrets, e.g. the
	// scoped-credentials endpoint's variables (sidecar/credserver Env, as
	// handoff.Var with Secret set for the token). If nil, none.
	ExtraEnv []handoff.Var
	// Audit receives audit events (secret names accessed, handoffs). If
	// nil, audit.Discard.
	Audit audit.Emitter
	// NewAdmitter builds the dispatcher's admission client once the
	// identity is known (admit.Client (internal/admit) with id.Source's
	// mTLS). If nil, runs are not admitted, heartbeated or finished.
	NewAdmitter func(ctx context.Context, id Identity) (Admitter, error)
	// HeartbeatInterval is the period of the run's lease heartbeats. If
	// zero, what the dispatcher's admission answer asks for, or 40s.
	HeartbeatInterval time.Duration
	// AdmitBudget is how long an unreachable dispatcher is retried for
	// admission and credentials before the run is refused. If zero, one
	// minute.
	AdmitBudget time.Duration
	// NewCredentials builds the source of the run's scoped AWS credentials
	// once the identity is known (sidecar/credsource with id.Source's
	// mTLS and runID). If nil, the job gets no credentials endpoint.
	NewCredentials func(ctx context.Context, id Identity, runID string) (credserver.Source, error)
	// CredentialsAddr is where the credentials endpoint listens; it must
	// be loopback. If empty, 127.0.0.1:0.
	CredentialsAddr string
	// Executable is the binary to copy. If empty, os.Executable().
	Executable string
	// Logger. If nil, discarded.
	Logger *slog.Logger
}

// Admitter is the dispatcher's admission API (admit.Client (internal/admit)).
type Admitter interface {
	Admit(ctx context.Context, runID string) (admit.AdmitResponse, error)
	Heartbeat(ctx context.Context, runID string) (admit.HeartbeatResponse, error)
	Finish(ctx context.Context, runID string, req admit.FinishRequest) error
}

var _ Admitter = (*admit.Client)(nil)

// Identity is the task's identity with the live SVID source (it follows
// rotation; use it for every outbound mTLS, with mtls.ClientConfig).
type Identity struct {
	JobIdentity
	Source *workloadapi.X509Source
}

// JobIdentity is who the task is, from its SPIFFE ID.
type JobIdentity struct {
	ID  spiffeid.ID
	Org string
	Job string
}

// ParseJobID reads spiffe://TD/org/ORG/job/JOB (internal/jobid, the rule
// the dispatcher and the control plane apply to the same IDs). Org and job
// must be slugs: they become paths (/{env}/{org}/...) and labels.
func ParseJobID(id spiffeid.ID) (JobIdentity, error) {
	j, err := jobid.FromID(id, id.TrustDomain())
	if err != nil {
		return JobIdentity{}, err
	}
	return JobIdentity{ID: j.ID, Org: j.Org, Job: j.Job}, nil
}

func (c *Config) withDefaults() (Config, error) {
	d := *c
	if d.Provider == nil {
		return d, errors.New("agent: no secrets provider")
	}
	if d.SharedDir == "" {
		return d, errors.New("agent: no shared directory: pass --shared-dir (the volume the job container mounts)")
	}
	if d.JobUID < 0 {
		d.JobUID = os.Getuid()
	}
	if d.RunID == "" {
		d.RunID = uuid.Must(uuid.NewV7()).String()
	}
	if d.HealthAddr == "" {
		d.HealthAddr = "127.0.0.1:9902"
	}
	if d.ProxyAddr == "" {
		d.ProxyAddr = "127.0.0.1:3128"
	}
	if d.Audit == nil {
		d.Audit = audit.Discard
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	if d.AdmitBudget == 0 {
		d.AdmitBudget = time.Minute
	}
	if d.CredentialsAddr == "" {
		d.CredentialsAddr = "127.0.0.1:0"
	}
	if d.HeartbeatInterval < 0 || d.AdmitBudget < 0 {
		return d, errors.New("agent: heartbeat interval and admission budget must not be negative")
	}
	for _, n := range d.Secrets {
		if _, err := secrets.EnvName(n); err != nil {
			return d, fmt.Errorf("agent: %w", err)
		}
	}
	return d, nil
}

// BinaryPath and SocketPath are where the agent puts the wrapper binary and
// the handoff socket under the shared directory.
func BinaryPath(sharedDir string) string { return filepath.Join(sharedDir, "bin", "cordon-sidecar") }
func SocketPath(sharedDir string) string { return filepath.Join(sharedDir, "run", "agent.sock") }

// Agent is a running agent; see Run.
type Agent struct {
	cfg Config
	log *slog.Logger
	// ready is closed when the set-up is done; policy, set before, is
	// the proxy's PolicyReady (closed already without a proxy). Healthy is
	// both closed.
	ready   chan struct{}
	policy  <-chan struct{}
	started time.Time   // when the agent started: interim reports' StartedAt
	final   atomic.Bool // the final usage report was sent
	// ended receives the wrapper's final result, for the lease loop's
	// Finish (buffered: takeUsage must not block).
	ended chan jobrun.Result
}

// Run runs the agent until ctx is done. It returns an error, and the task
// never turns healthy, if the identity, a secret, the binary copy or the
// socket fails: the job does not start.
func Run(ctx context.Context, cfg Config) error {
	c, err := cfg.withDefaults()
	if err != nil {
		return err
	}
	noPolicy := make(chan struct{})
	close(noPolicy)
	a := &Agent{cfg: c, log: c.Logger, ready: make(chan struct{}), policy: noPolicy,
		started: time.Now().UTC(), ended: make(chan jobrun.Result, 1)}
	return a.run(ctx)
}

func (a *Agent) run(ctx context.Context) error {
	c := a.cfg
	g, gctx := errgroup.WithContext(ctx)

	// Health first, so the platform sees "starting" rather than nothing.
	healthLn, err := net.Listen("tcp", c.HealthAddr)
	if err != nil {
		return fmt.Errorf("agent: health endpoint: %w", err)
	}
	health := &http.Server{Handler: a.healthHandler(), ReadHeaderTimeout: 5 * time.Second}
	g.Go(func() error {
		if err := health.Serve(healthLn); err != nil && !errors.Is(err, http.ErrServerClosed) {
			return fmt.Errorf("agent: health endpoint: %w", err)
		}
		return nil
	})
	g.Go(func() error {
		<-gctx.Done()
		sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		return health.Shutdown(sctx)
	})

	g.Go(func() error { return a.setUp(gctx, g) })
	return g.Wait()
}

// setUp does steps 2-4 in order; any failure ends the agent.
func (a *Agent) setUp(ctx context.Context, g *errgroup.Group) (err error) {
	c := a.cfg
	var opts []workloadapi.X509SourceOption
	if c.WorkloadAPIAddr != "" {
		opts = append(opts, workloadapi.WithClientOptions(workloadapi.WithAddr(c.WorkloadAPIAddr)))
	}
	sctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	src, err := workloadapi.NewX509Source(sctx, opts...)
	cancel()
	if err != nil {
		return fmt.Errorf("agent: get SVID from the Workload API (SPIFFE_ENDPOINT_SOCKET): %w", err)
	}
	// The source follows rotation until the agent stops; the mTLS clients
	// (xDS, dispatcher, gateway) take their certificates from it, so it
	// outlives the delivery's final drain.
	delivered := make(chan struct{})
	g.Go(func() error {
		<-ctx.Done()
		<-delivered
		return src.Close()
	})
	svid, err := src.GetX509SVID()
	if err != nil {
		close(delivered)
		return fmt.Errorf("agent: read SVID: %w", err)
	}
	id, err := ParseJobID(svid.ID)
	if err != nil {
		close(delivered)
		return fmt.Errorf("agent: %w", err)
	}
	log := a.log.With("spiffe_id", id.ID.String(), "org", id.Org, "job", id.Job)
	log.Info("identity")
	if c.Deliver != nil {
		g.Go(func() error {
			defer close(delivered)
			if err := c.Deliver(ctx, Identity{JobIdentity: id, Source: src}); err != nil {
				return fmt.Errorf("agent: delivery to the dispatcher: %w", err)
			}
			return nil
		})
	} else {
		close(delivered)
	}

	ident := Identity{JobIdentity: id, Source: src}
	// Admission first: a refused run fetches no secret and no credential.
	refusal, adm, interval, err := a.admit(ctx, ident, log)
	if err != nil {
		return err
	}
	leased := false // keepLease owns adm from here
	defer func() {
		if adm != nil && !leased {
			if err != nil {
				// Admitted, but the job will not start: give the slot back.
				a.finish(ctx, adm, admit.FinishRequest{}, log)
			}
			closeAdmitter(adm)
		}
	}()
	extra := append([]handoff.Var(nil), c.ExtraEnv...)
	if refusal == "" && c.NewCredentials != nil {
		vars, why, err := a.serveCredentials(ctx, g, ident, log)
		if err != nil {
			return err
		}
		refusal = why
		extra = append(extra, vars...)
	}
	if refusal != "" && adm != nil {
		// Admitted, then refused credentials: free the slot now.
		a.finish(ctx, adm, admit.FinishRequest{}, log)
	}
	if refusal != "" {
		return a.handOutRefusal(ctx, g, id, refusal, log)
	}

	provider, err := c.Provider(ctx, id)
	if err != nil {
		return fmt.Errorf("agent: secrets provider: %w", err)
	}
	names := append([]string(nil), c.Secrets...)
	sort.Strings(names)
	values := map[string]string{}
	if len(names) > 0 {
		values, err = provider.Fetch(ctx, names)
		a.auditSecrets(id, names, err)
		if err != nil {
			return fmt.Errorf("agent: job not started: %w", err)
		}
	}
	// Check now what the wrapper will check, so a bad secret keeps the
	// task unhealthy instead of failing the job container later.
	vars, err := secrets.ToEnv(values)
	if err != nil {
		return fmt.Errorf("agent: job not started: %w", err)
	}
	if _, err := jobrun.ScrubberFor(vars); err != nil {
		return fmt.Errorf("agent: job not started: %w", err)
	}
	vars = nil
	log.Info("secrets fetched", "names", names)

	if err := copyExecutable(c.Executable, BinaryPath(c.SharedDir)); err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	srv, err := handoff.Listen(handoff.ServerConfig{
		Socket: SocketPath(c.SharedDir),
		UID:    c.JobUID,
		Env:    handoff.Env{Secrets: values, ProxyURL: "http://" + c.ProxyAddr, Extra: extra},
		OnHandoff: func(uid, pid int) {
			a.emit(id, "SECRETS_HANDED_OFF", audit.ResultSuccess, map[string]any{"peer_uid": uid, "peer_pid": pid, "names": names})
		},
		OnRefused: func(uid, pid int, reason string) {
			a.emit(id, "SECRETS_HANDOFF_REFUSED", audit.ResultDenied, map[string]any{"peer_uid": uid, "peer_pid": pid, "reason": reason})
		},
		OnReport: func(raw json.RawMessage) error { return a.takeUsage(id, raw) },
		Logger:   log,
	})
	values = nil
	if err != nil {
		return fmt.Errorf("agent: %w", err)
	}
	g.Go(func() error { return srv.Serve(ctx) })

	if c.NewProxy != nil {
		proxy, err := c.NewProxy(ctx, Identity{JobIdentity: id, Source: src})
		if err != nil {
			return fmt.Errorf("agent: egress proxy: %w", err)
		}
		ln, err := net.Listen("tcp", c.ProxyAddr)
		if err != nil {
			return fmt.Errorf("agent: egress proxy: %w", err)
		}
		g.Go(func() error { return proxy.Serve(ctx, ln) })
		a.policy = proxy.PolicyReady()
		g.Go(func() error {
			<-ctx.Done()
			sctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
			defer cancel()
			return proxy.Shutdown(sctx)
		})
	} else {
		log.Warn("no egress proxy embedded: the job's egress through " + c.ProxyAddr + " fails closed")
	}
	// Setup garbage (the scrubber check, the SDK, TLS) is not needed again:
	// give it back so the idle agent stays small.
	debug.FreeOSMemory()
	close(a.ready)
	if a.policyApplied() {
		log.Info("agent ready", "shared_dir", c.SharedDir, "job_uid", c.JobUID)
	} else {
		log.Info("agent set up, waiting for the egress policy before it reports healthy",
			"shared_dir", c.SharedDir, "job_uid", c.JobUID)
		g.Go(func() error {
			select {
			case <-a.policy:
				log.Info("agent ready: egress policy applied")
			case <-ctx.Done():
			}
			return nil
		})
	}
	if c.UsageInterval > 0 && c.Usage != nil {
		g.Go(func() error { a.interimReports(ctx, id); return nil })
	}
	if adm != nil {
		leased = true
		g.Go(func() error {
			defer closeAdmitter(adm)
			a.keepLease(ctx, adm, srv, interval, log)
			return nil
		})
	}
	return nil
}

// interimReports sends a usage report every UsageInterval until the final
// one: cumulative egress and denials so far (the wrapper's measurements
// only arrive at the end).
func (a *Agent) interimReports(ctx context.Context, id JobIdentity) {
	t := time.NewTicker(a.cfg.UsageInterval)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
		if a.final.Load() {
			return
		}
		now := time.Now().UTC()
		r := usage.Report{
			ReportID:    newReportID(),
			Org:         id.Org,
			Job:         id.Job,
			RunID:       a.cfg.RunID,
			StartedAt:   a.started,
			EndedAt:     now,
			WallSeconds: now.Sub(a.started).Seconds(),
			Enforcement: bpfLevelUnknown,
		}
		a.addEgress(&r)
		a.cfg.Usage.Emit(r)
	}
}

// bpfLevelUnknown is the enforcement of an interim report: only the
// wrapper knows whether it confined the job, and it tells at the end.
// Network enforcement (the proxy, and the gateway on Fargate) always holds.
const bpfLevelUnknown = "network-only"

func newReportID() string { return "usg_" + uuid.Must(uuid.NewV7()).String() }

func (a *Agent) addEgress(r *usage.Report) {
	if a.cfg.Egress == nil {
		return
	}
	eg, denials := a.cfg.Egress()
	if len(eg) > 0 {
		r.Egress = eg
	}
	r.Denials = denials
}

// takeUsage turns the wrapper's measurements into the final usage report,
// with the embedded proxy's egress and denials (Config.Egress).
func (a *Agent) takeUsage(id JobIdentity, raw json.RawMessage) error {
	var res jobrun.Result
	dec := json.NewDecoder(bytes.NewReader(raw))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&res); err != nil {
		return fmt.Errorf("decode usage: %w", err)
	}
	end := time.Now().UTC()
	exit := res.ExitCode
	r := usage.Report{
		ReportID:         newReportID(),
		Org:              id.Org,
		Job:              id.Job,
		RunID:            a.cfg.RunID,
		Final:            true,
		StartedAt:        end.Add(-time.Duration(res.WallSeconds * float64(time.Second))),
		EndedAt:          end,
		ExitCode:         &exit,
		CPUUserSeconds:   res.CPUUserSeconds,
		CPUSystemSeconds: res.CPUSystemSeconds,
		MaxRSSBytes:      res.MaxRSSBytes,
		WallSeconds:      res.WallSeconds,
		Redactions:       res.Redactions,
		StdoutBytes:      res.StdoutBytes,
		StderrBytes:      res.StderrBytes,
		Enforcement:      res.Enforcement,
	}
	if r.Enforcement == "" {
		r.Enforcement = bpfLevelUnknown
	}
	a.addEgress(&r)
	a.log.Info("job finished", "exit_code", exit, "wall_seconds", res.WallSeconds, "redactions", res.Redactions,
		"stdout_bytes", res.StdoutBytes, "stderr_bytes", res.StderrBytes, "timed_out", res.TimedOut,
		"enforcement", r.Enforcement, "denials", r.Denials)
	// The wrapper tells the agent nothing between the handoff and this
	// report, so the job's start (with how it was confined) is recorded
	// now, stamped with when it happened.
	a.jobEvent(id, "JOB_STARTED", r.StartedAt, map[string]any{"enforcement": r.Enforcement, "run_id": a.cfg.RunID})
	a.jobEvent(id, "JOB_FINISHED", r.EndedAt, map[string]any{"enforcement": r.Enforcement, "run_id": a.cfg.RunID,
		"exit_code": exit, "timed_out": res.TimedOut, "denials": r.Denials, "redactions": r.Redactions})
	if a.cfg.Usage != nil && !a.final.Swap(true) {
		a.cfg.Usage.Emit(r)
	}
	select {
	case a.ended <- res:
	default: // the handoff takes one report; nothing else sends
	}
	return nil
}

func (a *Agent) jobEvent(id JobIdentity, typ string, at time.Time, md map[string]any) {
	action := "START"
	if typ == "JOB_FINISHED" {
		action = "FINISH"
	}
	a.cfg.Audit.Emit(audit.Event{
		Timestamp: at,
		EventType: typ,
		EventID:   audit.NewID(),
		Actor:     audit.Actor{Type: audit.ActorJob, ID: id.ID.String()},
		Resource:  audit.Resource{Type: "JOB", ID: id.Job, TenantID: id.Org},
		Action:    action,
		Result:    audit.ResultSuccess,
		Metadata:  md,
	})
}

func (a *Agent) auditSecrets(id JobIdentity, names []string, err error) {
	result := audit.ResultSuccess
	md := map[string]any{"names": names}
	if err != nil {
		result = audit.ResultFailure
		md["error"] = err.Error() // names the secret and cause, never a value
	}
	a.emit(id, "SECRETS_ACCESSED", result, md)
}

func (a *Agent) emit(id JobIdentity, typ, result string, md map[string]any) {
	a.cfg.Audit.Emit(audit.Event{
		Timestamp: time.Now().UTC(),
		EventType: typ,
		EventID:   audit.NewID(),
		Actor:     audit.Actor{Type: audit.ActorJob, ID: id.ID.String()},
		Resource:  audit.Resource{Type: "SECRET", ID: id.Job, TenantID: id.Org},
		Action:    "READ",
		Result:    result,
		Metadata:  md,
	})
}

func (a *Agent) healthHandler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-a.ready:
		default:
			http.Error(w, "starting", http.StatusServiceUnavailable)
			return
		}
		if !a.policyApplied() {
			http.Error(w, "waiting for the egress policy", http.StatusServiceUnavailable)
			return
		}
		io.WriteString(w, "ok\n")
	})
	return mux
}

// policyApplied reports whether the egress proxy enforces its policy (true
// without a proxy: there is nothing to wait for). Call it only after ready
// is closed, which publishes a.policy.
func (a *Agent) policyApplied() bool {
	select {
	case <-a.policy:
		return true
	default:
		return false
	}
}

// CheckHealth asks the agent's health endpoint at addr; it is what the
// container health check runs (`cordon-sidecar health`), since the image
// has no curl.
func CheckHealth(ctx context.Context, addr string) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+addr+"/healthz", nil)
	if err != nil {
		return err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("health check %s: %w", addr, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("health check %s: %s", addr, resp.Status)
	}
	return nil
}

// copyExecutable copies src (or this binary) to dst with mode 0755,
// atomically (temp file and rename), so the job never sees half a binary.
func copyExecutable(src, dst string) error {
	if src == "" {
		exe, err := os.Executable()
		if err != nil {
			return fmt.Errorf("find own binary: %w", err)
		}
		src = exe
	}
	in, err := os.Open(src)
	if err != nil {
		return fmt.Errorf("copy binary: %w", err)
	}
	defer in.Close()
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return fmt.Errorf("copy binary: %w", err)
	}
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".cordon-sidecar-")
	if err != nil {
		return fmt.Errorf("copy binary: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, in); err != nil {
		tmp.Close()
		return fmt.Errorf("copy binary to %s: %w", dst, err)
	}
	if err := tmp.Chmod(0o755); err != nil {
		tmp.Close()
		return fmt.Errorf("copy binary: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("copy binary: %w", err)
	}
	if err := os.Rename(tmp.Name(), dst); err != nil {
		return fmt.Errorf("copy binary to %s: %w", dst, err)
	}
	return nil
}
