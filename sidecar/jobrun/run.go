// Package jobrun is the job container's entrypoint shim, `cordon-sidecar
// run` (DESIGN.md "How a task runs", step 4): it starts the job with its
// secrets and proxy settings in its environment and the task's AWS
// credentials removed, in its own process group; streams stdout and stderr
// through the scrubber with a byte cap per stream; forwards signals;
// enforces the timeout; collects rusage; and exits with the job's code.
//
// It is not the scrubber (sidecar/scrub), does not fetch secrets (the caller
// passes them in, from sidecar/secrets or the agent), and does not report
// usage anywhere but its own stderr or a file (the agent reports).
package jobrun

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"log/slog"
	"os"
	"os/exec"
	"os/signal"
	"sync"
	"syscall"
	"time"

	"github.com/cordon-dev/cordon/sidecar/secrets"
)

// DefaultMaxOutputBytes is the per-stream cap: seeds/002 "Resource Limits",
// max_log_size_mb 50.
const DefaultMaxOutputBytes = 50 << 20

// Exit codes of the shim itself, chosen like docker run and env(1).
const (
	ExitShimFailed    = 125 // cordon could not set the job up (secrets, flags)
	ExitNotExecutable = 126 // the command exists but cannot be executed
	ExitNotFound      = 127 // the command was not found
)

// ForwardedSignals are passed on to the job's process group.
var ForwardedSignals = []os.Signal{
	syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGQUIT,
	syscall.SIGUSR1, syscall.SIGUSR2,
}

// Config is one job run.
type Config struct {
	// Command is the job's argv. Required. Command[0] is looked up in the
	// shim's PATH.
	Command []string
	// Secrets become the job's environment variables.
	Secrets []secrets.Var
	// Extra are further variables Cordon sets (see ExtraVar). The Scrubber
	// must already cover the secret ones (Main does this).
	Extra []ExtraVar
	// Scrubber redacts the job's output. Required: a job never runs
	// unscrubbed.
	Scrubber Scrubber
	// BaseEnv is the environment the job inherits before Cordon's changes.
	// If nil, the shim's own environment.
	BaseEnv []string
	// ProxyURL is the egress proxy. If empty, DefaultProxyURL.
	ProxyURL string
	// NoProxy is NO_PROXY. If empty, DefaultNoProxy.
	NoProxy string
	// Timeout bounds the job's wall time. If zero, no timeout.
	Timeout time.Duration
	// Grace is how long the job has between SIGTERM and SIGKILL after a
	// timeout. If zero, 10s.
	Grace time.Duration
	// DrainTimeout is how long output is still read after the job exited
	// (a straggler outside the process group may hold the pipes). If zero,
	// 2s.
	DrainTimeout time.Duration
	// MaxStdoutBytes and MaxStderrBytes cap each stream after scrubbing.
	// If zero, DefaultMaxOutputBytes; if negative, unlimited.
	MaxStdoutBytes, MaxStderrBytes int64
	// Stdin, Stdout and Stderr are the shim's streams. If nil, os.Stdin,
	// os.Stdout and os.Stderr. A Stdin that is not an *os.File is copied
	// until it ends or DrainTimeout after the job exits.
	Stdin          io.Reader
	Stdout, Stderr io.Writer
	// Begin is when the shim started, to measure the delay it adds before
	// the job starts. If zero, when Run is called.
	Begin time.Time
	// Logger receives the shim's own messages (timeouts, cut output). If
	// nil, they are discarded.
	Logger *slog.Logger
	// ReapOrphans makes Run wait for every child of the process, not just
	// the job: processes the job orphaned are re-parented to PID 1, and a
	// PID 1 that does not wait for them fills the process table with
	// zombies. Set it only when the shim is PID 1 (a container entrypoint
	// without an init): it reaps children it did not start. If false, only
	// the job is waited for.
	ReapOrphans bool
	// Orders, if set, delivers an order to stop the job (the dispatcher's
	// termination, through the agent): SIGTERM to its group, the order's
	// Grace (or Grace), SIGKILL. If nil, none.
	Orders <-chan Termination
	// Prepare is called with the job's command just before it starts
	// (Confiner.Apply); an error means it does not start. If nil, none.
	Prepare func(cmd *exec.Cmd) error
}

// Termination is an order to stop the job.
type Termination struct {
	Reason string        // shown on the job's stderr
	Grace  time.Duration // if zero, Config.Grace
}

// Result is what Run measured. Field names follow usage.Report.
type Result struct {
	ExitCode  int  `json:"exit_code"`
	Signal    int  `json:"signal,omitempty"` // the signal that killed the job, if any
	TimedOut  bool `json:"timed_out"`
	Forwarded int  `json:"signals_forwarded"`
	// Terminated is true when an order (Config.Orders) stopped the job, and
	// SignalSent the last signal Cordon sent its group then or on a timeout
	// ("SIGTERM", "SIGKILL").
	Terminated bool          `json:"terminated,omitempty"`
	SignalSent string        `json:"signal_sent,omitempty"`
	StartDelay time.Duration `json:"-"`

	CPUUserSeconds   float64 `json:"cpu_user_seconds"`
	CPUSystemSeconds float64 `json:"cpu_system_seconds"`
	MaxRSSBytes      int64   `json:"max_rss_bytes"`
	WallSeconds      float64 `json:"wall_seconds"`
	StartSeconds     float64 `json:"start_overhead_seconds"`

	StdoutBytes     int64 `json:"stdout_bytes"`
	StderrBytes     int64 `json:"stderr_bytes"`
	StdoutTruncated bool  `json:"stdout_truncated"`
	StderrTruncated bool  `json:"stderr_truncated"`
	Redactions      int64 `json:"redactions"`

	// Enforcement is how the job was confined: "cgroup-ebpf" or
	// "network-only" (bpf.Level*). Empty from a wrapper that does not
	// know (read as network-only).
	Enforcement string `json:"enforcement,omitempty"`
	// KernelEgressBytes and DeniedConnects are the job cgroup's eBPF
	// counters (all bytes the job sent, and connects the hooks refused);
	// zero without cgroup-ebpf.
	KernelEgressBytes uint64 `json:"kernel_egress_bytes,omitempty"`
	DeniedConnects    uint64 `json:"denied_connects,omitempty"`
}

// StartError is returned when the job could not be started; ExitCode is
// what the shim should exit with (126 or 127).
type StartError struct {
	ExitCode int
	Err      error
}

func (e *StartError) Error() string { return "start job: " + e.Err.Error() }
func (e *StartError) Unwrap() error { return e.Err }

func (c *Config) withDefaults() Config {
	d := *c
	if d.BaseEnv == nil {
		d.BaseEnv = os.Environ()
	}
	if d.ProxyURL == "" {
		d.ProxyURL = DefaultProxyURL
	}
	if d.NoProxy == "" {
		d.NoProxy = DefaultNoProxy
	}
	if d.Grace == 0 {
		d.Grace = 10 * time.Second
	}
	if d.DrainTimeout == 0 {
		d.DrainTimeout = 2 * time.Second
	}
	if d.MaxStdoutBytes == 0 {
		d.MaxStdoutBytes = DefaultMaxOutputBytes
	}
	if d.MaxStderrBytes == 0 {
		d.MaxStderrBytes = DefaultMaxOutputBytes
	}
	if d.Stdin == nil {
		d.Stdin = os.Stdin
	}
	if d.Stdout == nil {
		d.Stdout = os.Stdout
	}
	if d.Stderr == nil {
		d.Stderr = os.Stderr
	}
	if d.Logger == nil {
		d.Logger = slog.New(slog.DiscardHandler)
	}
	return d
}

// Validate checks the config without running anything. Scrubber is
// checked by Run (it is built from the secrets, after they are fetched).
func (c *Config) Validate() error {
	if len(c.Command) == 0 || c.Command[0] == "" {
		return errors.New("no job command: pass it after --, e.g. cordon-sidecar run -- ./job --flag")
	}
	if err := checkExtra(c.Secrets, c.Extra); err != nil {
		return err
	}
	if c.Timeout < 0 || c.Grace < 0 || c.DrainTimeout < 0 {
		return errors.New("timeout, grace and drain timeout must not be negative")
	}
	return nil
}

// Run runs the job to completion and returns what it measured. The error is
// nil whenever the job ran, whatever its exit code; a *StartError means it
// never started. Cancelling ctx stops the job like a timeout does (SIGTERM
// to its group, Grace, SIGKILL).
//
// Run installs handlers for ForwardedSignals (and SIGPIPE, so that a closed
// stdout cannot kill the shim and orphan the job) for as long as it runs.
func Run(ctx context.Context, cfg Config) (Result, error) {
	if err := cfg.Validate(); err != nil {
		return Result{ExitCode: ExitShimFailed}, err
	}
	if cfg.Scrubber == nil {
		return Result{ExitCode: ExitShimFailed}, errors.New("no scrubber configured: a job's output is never passed on unscrubbed")
	}
	c := cfg.withDefaults()
	if c.Begin.IsZero() {
		c.Begin = time.Now()
	}
	stderr := &lockedWriter{w: c.Stderr}

	// Handle signals before the job exists, so none is lost in between.
	sigs := make(chan os.Signal, 16)
	signal.Notify(sigs, append([]os.Signal{syscall.SIGPIPE}, ForwardedSignals...)...)
	defer signal.Stop(sigs)

	outR, outW, err := os.Pipe()
	if err != nil {
		return Result{ExitCode: ExitShimFailed}, fmt.Errorf("create stdout pipe: %w", err)
	}
	errR, errW, err := os.Pipe()
	if err != nil {
		outR.Close()
		outW.Close()
		return Result{ExitCode: ExitShimFailed}, fmt.Errorf("create stderr pipe: %w", err)
	}
	defer outR.Close()
	defer errR.Close()

	cmd := exec.Command(c.Command[0], c.Command[1:]...)
	cmd.Env = ChildEnv(c.BaseEnv, c.Secrets, c.Extra, c.ProxyURL, c.NoProxy)
	cmd.Stdin = c.Stdin
	cmd.Stdout = outW
	cmd.Stderr = errW
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.WaitDelay = c.DrainTimeout // bounds copying a Stdin that is not a file
	if c.Prepare != nil {
		if err := c.Prepare(cmd); err != nil {
			outW.Close()
			errW.Close()
			return Result{ExitCode: ExitShimFailed}, &StartError{ExitCode: ExitShimFailed, Err: err}
		}
	}
	startErr := cmd.Start()
	started := time.Now()
	outW.Close()
	errW.Close()
	if startErr != nil {
		code := ExitNotExecutable
		if errors.Is(startErr, exec.ErrNotFound) || errors.Is(startErr, fs.ErrNotExist) {
			code = ExitNotFound
		}
		return Result{ExitCode: code}, &StartError{ExitCode: code, Err: startErr}
	}
	pgid := cmd.Process.Pid // Setpgid with Pgid 0: the group is the job's pid
	res := Result{StartDelay: started.Sub(c.Begin)}
	res.StartSeconds = res.StartDelay.Seconds()

	outCap := &capWriter{dst: c.Stdout, limit: c.MaxStdoutBytes,
		marker: fmt.Sprintf("\n[cordon: stdout cut after %d bytes (limit); the rest was discarded]\n", c.MaxStdoutBytes)}
	errCap := &capWriter{dst: stderr, limit: c.MaxStderrBytes,
		marker: fmt.Sprintf("\n[cordon: stderr cut after %d bytes (limit); the rest was discarded]\n", c.MaxStderrBytes)}
	outScrub := c.Scrubber.NewStream(outCap)
	errScrub := c.Scrubber.NewStream(errCap)

	var wg sync.WaitGroup
	var outErr, errErr error
	wg.Add(2)
	go func() { defer wg.Done(); res.StdoutBytes, outErr = pump(outR, outScrub, outCap) }()
	go func() { defer wg.Done(); res.StderrBytes, errErr = pump(errR, errScrub, errCap) }()

	waited := make(chan exitInfo, 1)
	if c.ReapOrphans {
		go reapAll(cmd.Process.Pid, waited)
	} else {
		go func() {
			err := cmd.Wait()
			ps := cmd.ProcessState
			if ps == nil {
				waited <- exitInfo{err: err}
				return
			}
			// A non-nil err with a ProcessState is the job's own exit
			// status (*exec.ExitError) or a stdin copy cut short: both are
			// in ps.
			ru, _ := ps.SysUsage().(*syscall.Rusage)
			ws, _ := ps.Sys().(syscall.WaitStatus)
			waited <- exitInfo{status: ws, rusage: ru}
		}()
	}

	var deadline <-chan time.Time
	if c.Timeout > 0 {
		t := time.NewTimer(c.Timeout)
		defer t.Stop()
		deadline = t.C
	}
	var killTimer <-chan time.Time
	terminate := func(why string, grace time.Duration) {
		if killTimer != nil {
			return
		}
		fmt.Fprintf(stderr, "cordon-sidecar: %s: sending SIGTERM to the job's process group, SIGKILL in %s\n", why, grace)
		c.Logger.Warn("terminating job", "reason", why, "grace", grace)
		_ = syscall.Kill(-pgid, syscall.SIGTERM)
		res.SignalSent = "SIGTERM"
		killTimer = time.After(grace)
	}
	ctxDone := ctx.Done()
	orders := c.Orders

	var ps exitInfo
loop:
	for {
		select {
		case ps = <-waited:
			break loop
		case s := <-sigs:
			if s == syscall.SIGPIPE {
				continue
			}
			res.Forwarded++
			_ = syscall.Kill(-pgid, s.(syscall.Signal))
		case <-deadline:
			deadline = nil
			res.TimedOut = true
			terminate(fmt.Sprintf("job exceeded its timeout of %s", c.Timeout), c.Grace)
		case <-ctxDone:
			ctxDone = nil
			terminate("run cancelled", c.Grace)
		case o := <-orders:
			orders = nil
			res.Terminated = true
			grace := o.Grace
			if grace <= 0 {
				grace = c.Grace
			}
			terminate(fmt.Sprintf("the dispatcher ordered this run stopped (%.200q)", o.Reason), grace)
		case <-killTimer:
			fmt.Fprintf(stderr, "cordon-sidecar: job still running %s after SIGTERM: sending SIGKILL to its process group\n", c.Grace)
			c.Logger.Warn("killing job", "grace", c.Grace)
			_ = syscall.Kill(-pgid, syscall.SIGKILL)
			res.SignalSent = "SIGKILL"
			killTimer = nil
		}
	}
	ended := time.Now()
	// The job is its main process: whatever it left running in its group is
	// stopped, as the container's end would stop it.
	_ = syscall.Kill(-pgid, syscall.SIGKILL)

	drainDeadline([]*os.File{outR, errR}, c.DrainTimeout)
	wg.Wait()
	// Close flushes what the scrubbers held back (a secret in the last
	// bytes is still redacted, a non-secret tail still printed).
	if err := outScrub.Close(); err != nil && outErr == nil {
		outErr = err
	}
	if err := errScrub.Close(); err != nil && errErr == nil {
		errErr = err
	}
	for _, e := range []error{outErr, errErr} {
		if e != nil {
			c.Logger.Warn("job output", "err", e)
			fmt.Fprintf(stderr, "cordon-sidecar: %v\n", e)
		}
	}
	res.StdoutTruncated = outCap.cut
	res.StderrTruncated = errCap.cut
	res.Redactions = outScrub.Redactions() + errScrub.Redactions()
	res.WallSeconds = ended.Sub(started).Seconds()

	if ps.err != nil {
		return res, fmt.Errorf("wait for job: %w", ps.err)
	}
	if ru := ps.rusage; ru != nil {
		res.CPUUserSeconds = time.Duration(ru.Utime.Nano()).Seconds()
		res.CPUSystemSeconds = time.Duration(ru.Stime.Nano()).Seconds()
		res.MaxRSSBytes = ru.Maxrss * 1024 // Linux reports kilobytes
	}
	res.ExitCode = ps.status.ExitStatus()
	if ps.status.Signaled() {
		res.Signal = int(ps.status.Signal())
		res.ExitCode = 128 + int(ps.status.Signal())
	}
	return res, nil
}

// exitInfo is how the job ended.
type exitInfo struct {
	status syscall.WaitStatus
	rusage *syscall.Rusage
	err    error
}

// reapAll waits for every child of the process until the job (pid) is
// among them, and reports the job's status. Orphans it reaps on the way are
// dropped: they were the job's descendants, already counted nowhere else.
func reapAll(pid int, out chan<- exitInfo) {
	for {
		var ws syscall.WaitStatus
		var ru syscall.Rusage
		got, err := syscall.Wait4(-1, &ws, 0, &ru)
		if err == syscall.EINTR {
			continue
		}
		if err != nil {
			out <- exitInfo{err: err}
			return
		}
		if got == pid {
			out <- exitInfo{status: ws, rusage: &ru}
			return
		}
	}
}
