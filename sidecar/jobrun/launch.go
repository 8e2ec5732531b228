package jobrun

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"sync"
	"time"

	"github.com/cordon-dev/cordon/sidecar/secrets"
)

// DefaultAgentSocket is where the agent hands out the job's env, in the
// volume it shares with the job container.
const DefaultAgentSocket = "/cordon/run/agent.sock"

// Options is `cordon-sidecar run` as its flags describe it.
type Options struct {
	// SecretsFile is a JSON file {"name": "value"} (local runs, no agent).
	// Exclusive with AgentSocket.
	SecretsFile string
	// AgentSocket is the agent's unix socket. If both it and SecretsFile
	// are empty, DefaultAgentSocket.
	AgentSocket string
	// UsageFile receives the usage summary as JSON (mode 0600). If empty,
	// the summary is one JSON line on stderr.
	UsageFile string
	// Run is the run itself; its Secrets and Scrubber are filled in here.
	Run Config
	// NewScrubber builds the scrubber for the job's secrets. If nil,
	// ScrubberFor.
	NewScrubber func(vars []secrets.Var) (Scrubber, error)
	// FetchEnv fetches the job's env from the agent at socket. If nil,
	// only SecretsFile works.
	FetchEnv func(ctx context.Context, socket string) (AgentEnv, error)
	// SendReport gives the agent the run's usage when the job got its env
	// from the agent. If nil, the usage goes only to stderr or UsageFile.
	SendReport func(ctx context.Context, socket, token string, res Result) error
	// Watch waits (until ctx ends) for the agent's order to stop the job,
	// with the report token; Main watches while the job runs and stops the
	// job on an order. If nil, or when the env did not come from the
	// agent, nothing is watched.
	Watch func(ctx context.Context, socket, token string) (Termination, error)
	// Confiner confines the job beyond its env (sidecar/confine: a cgroup
	// with eBPF hooks, no CAP_NET_RAW). If nil, none, and the result's
	// Enforcement stays empty.
	Confiner Confiner
}

// AgentEnv is what the agent hands the wrapper.
type AgentEnv struct {
	Secrets  map[string]string // by declared name
	ProxyURL string            // if empty, the wrapper's default
	Extra    []ExtraVar
	// ReportToken authenticates the final usage report (SendReport). It
	// never reaches the job.
	ReportToken string
}

// ExitRefused is the wrapper's exit code when the run was refused before
// the job started (EX_TEMPFAIL, as dispatcher/admission asks).
const ExitRefused = 75

// RefusedError is FetchEnv's error for a run the agent refused (admission,
// scoped credentials): Main prints "cordon: run refused: <Reason>" on
// stderr and exits ExitRefused without starting the job.
type RefusedError struct {
	Reason string
}

func (e *RefusedError) Error() string { return "run refused: " + e.Reason }

// Validate rejects contradictory options. The scrubber is built from the
// secrets later, so Run.Scrubber may be nil here.
func (o *Options) Validate() error {
	if o.SecretsFile != "" && o.AgentSocket != "" {
		return errors.New("--secrets-file and --agent-socket are mutually exclusive: pass one")
	}
	return o.Run.Validate()
}

// Confiner confines a job: Setup once its proxy is known (an error means
// the job must not start), Apply to its command just before it starts (an
// error means the same), Finish after it exited, recording the
// enforcement level and counters in the result and releasing everything.
type Confiner interface {
	Setup(proxyURL string) error
	Apply(cmd *exec.Cmd) error
	Finish(res *Result)
}

// Main runs `cordon-sidecar run` and returns the process exit code: the
// job's, or ExitShimFailed / ExitNotExecutable / ExitNotFound when the job
// could not be set up or started. Failing to get any secret means the job
// does not start (fail closed).
func Main(ctx context.Context, o Options) int {
	stderr := o.Run.Stderr
	if stderr == nil {
		stderr = os.Stderr
	}
	fail := func(err error) int {
		fmt.Fprintf(stderr, "cordon-sidecar run: %v\n", err)
		return ExitShimFailed
	}
	if err := o.Validate(); err != nil {
		return fail(err)
	}
	var values map[string]string
	var proxyURL, socket, token string
	var extra []ExtraVar
	var err error
	switch {
	case o.SecretsFile != "":
		values, err = (&secrets.File{Path: o.SecretsFile}).Fetch(ctx, nil)
	default:
		socket = o.AgentSocket
		if socket == "" {
			socket = DefaultAgentSocket
		}
		if o.FetchEnv == nil {
			return fail(errors.New("no secrets source: pass --secrets-file FILE (this build cannot ask an agent)"))
		}
		var env AgentEnv
		env, err = o.FetchEnv(ctx, socket)
		values, proxyURL, extra, token = env.Secrets, env.ProxyURL, env.Extra, env.ReportToken
		var refused *RefusedError
		if errors.As(err, &refused) {
			fmt.Fprintf(stderr, "cordon: run refused: %s\n", refused.Reason)
			return ExitRefused
		}
	}
	if err != nil {
		return fail(fmt.Errorf("job not started: %w", err))
	}
	vars, err := secrets.ToEnv(values)
	if err != nil {
		return fail(fmt.Errorf("job not started: %w", err))
	}
	newScrubber := o.NewScrubber
	if newScrubber == nil {
		newScrubber = ScrubberFor
	}
	if err := checkExtra(vars, extra); err != nil {
		return fail(fmt.Errorf("job not started: %w", err))
	}
	toScrub := vars
	for _, e := range extra {
		if e.Secret {
			toScrub = append(toScrub[:len(toScrub):len(toScrub)], secrets.Var{Secret: e.Name, Env: e.Name, Value: e.Value})
		}
	}
	scr, err := newScrubber(toScrub)
	if err != nil {
		return fail(fmt.Errorf("job not started: build scrubber: %w", err))
	}
	cfg := o.Run
	tail := &tailWriter{w: stderr, last: '\n'}
	cfg.Stderr = tail
	if cfg.ProxyURL == "" {
		cfg.ProxyURL = proxyURL
	}
	cfg.Secrets = vars
	cfg.Extra = extra
	cfg.Scrubber = scr
	if o.Confiner != nil {
		if err := allowEndpoints(o.Confiner, extra); err != nil {
			return fail(fmt.Errorf("job not started: %w", err))
		}
		proxy := cfg.ProxyURL
		if proxy == "" {
			proxy = DefaultProxyURL
		}
		if err := o.Confiner.Setup(proxy); err != nil {
			o.Confiner.Finish(&Result{})
			return fail(fmt.Errorf("job not started: %w", err))
		}
		cfg.Prepare = o.Confiner.Apply
	}
	var watching sync.WaitGroup
	stopWatch := func() {}
	if socket != "" && o.Watch != nil {
		orders := make(chan Termination, 1)
		cfg.Orders = orders
		wctx, cancel := context.WithCancel(ctx)
		stopWatch = func() { cancel(); watching.Wait() }
		watching.Add(1)
		go func() {
			defer watching.Done()
			watchOrders(wctx, o.Watch, socket, token, orders)
		}()
	}
	res, err := Run(ctx, cfg)
	stopWatch()
	if o.Confiner != nil {
		o.Confiner.Finish(&res)
	}
	if err != nil {
		fmt.Fprintf(stderr, "cordon-sidecar run: %v\n", err)
		var se *StartError
		if errors.As(err, &se) {
			return se.ExitCode
		}
		if res.ExitCode == 0 {
			return ExitShimFailed
		}
	}
	if tail.last != '\n' {
		// The job's stderr ended mid-line: start the summary on its own.
		_, _ = io.WriteString(stderr, "\n")
	}
	if err := writeUsage(o.UsageFile, stderr, res); err != nil {
		fmt.Fprintf(stderr, "cordon-sidecar run: %v\n", err)
	}
	if socket != "" && o.SendReport != nil {
		// The job's exit code is what matters to the caller; a failed
		// report is said on stderr and the agent notices its absence.
		rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		if err := o.SendReport(rctx, socket, token, res); err != nil {
			fmt.Fprintf(stderr, "cordon-sidecar run: %v\n", err)
		}
		cancel()
	}
	return res.ExitCode
}

// credentialsURIVar is sidecar/credserver's EnvFullURI: the job's SDKs
// call it directly, not through the proxy.
const credentialsURIVar = "AWS_CONTAINER_CREDENTIALS_FULL_URI"

// allowEndpoints lets a confined job reach the agent's credentials
// endpoint (a loopback URL), when the Confiner can allow it.
func allowEndpoints(c Confiner, extra []ExtraVar) error {
	al, ok := c.(interface {
		AllowLoopbackEndpoint(netip.AddrPort) error
	})
	if !ok {
		return nil
	}
	for _, e := range extra {
		if e.Name != credentialsURIVar {
			continue
		}
		u, err := url.Parse(e.Value)
		if err != nil {
			return fmt.Errorf("%s: not a URL", credentialsURIVar)
		}
		ap, err := netip.ParseAddrPort(u.Host)
		if err != nil {
			return fmt.Errorf("%s: want http://IP:PORT/...: %w", credentialsURIVar, err)
		}
		if err := al.AllowLoopbackEndpoint(ap); err != nil {
			return err
		}
	}
	return nil
}

// watchOrders waits for the agent's order and passes the first one on. A
// failed watch (the agent restarting) is tried again after a pause until
// ctx ends: losing the order would leave a job running that the
// dispatcher ordered stopped.
func watchOrders(ctx context.Context, watch func(ctx context.Context, socket, token string) (Termination, error),
	socket, token string, orders chan<- Termination) {
	for {
		o, err := watch(ctx, socket, token)
		if err == nil {
			orders <- o
			return
		}
		select {
		case <-ctx.Done():
			return
		case <-time.After(time.Second):
		}
	}
}

// usageLine is the summary's shape: one JSON object, tagged so a log
// pipeline can pick it out.
type usageLine struct {
	Msg string `json:"msg"`
	Result
}

func writeUsage(path string, stderr io.Writer, res Result) error {
	b, err := json.Marshal(usageLine{Msg: "cordon-sidecar run: usage", Result: res})
	if err != nil {
		return fmt.Errorf("encode usage: %w", err)
	}
	b = append(b, '\n')
	if path == "" {
		_, err = stderr.Write(b)
		return err
	}
	if err := os.WriteFile(path, b, 0o600); err != nil {
		return fmt.Errorf("write usage file: %w", err)
	}
	return nil
}

// tailWriter remembers the last byte written (Run serialises its writes).
type tailWriter struct {
	w    io.Writer
	last byte
}

func (t *tailWriter) Write(p []byte) (int, error) {
	n, err := t.w.Write(p)
	if n > 0 {
		t.last = p[n-1]
	}
	return n, err
}

// CheckSecretsFile loads a secrets file and checks it the way run does
// (valid, unreserved, non-colliding names; values the scrubber can redact)
// without running anything. It writes the env var names, never a value.
func CheckSecretsFile(ctx context.Context, path string, w io.Writer) error {
	values, err := (&secrets.File{Path: path}).Fetch(ctx, nil)
	if err != nil {
		return err
	}
	vars, err := secrets.ToEnv(values)
	if err != nil {
		return err
	}
	if _, err := ScrubberFor(vars); err != nil {
		return err
	}
	fmt.Fprintf(w, "%s: ok, %d secrets\n", path, len(vars))
	for _, v := range vars {
		fmt.Fprintf(w, "  %s -> %s\n", v.Secret, v.Env)
	}
	return nil
}
