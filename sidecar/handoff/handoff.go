// Package handoff passes the job's secrets from the agent to the job
// wrapper (`cordon-sidecar run`) over a unix socket in the volume the two
// containers share (DESIGN.md step 4).
//
// The socket is mode 0600 and owned by the job's uid; every connection's
// peer uid is checked with SO_PEERCRED against that uid; the secrets are
// handed out once, then every further request is refused (and reported),
// and the server drops its reference to them.
//
// The same socket takes the wrapper's final usage report when the job
// ends. The job runs as the wrapper's uid, so the peer check cannot tell
// them apart: the report must carry the one-time report token handed out
// with the env, which the wrapper keeps out of the job's environment (and,
// being non-dumpable, out of its reach through /proc). One report is
// accepted.
//
// A run the agent refused (admission, or credentials the dispatcher would
// not issue) is handed out as a refusal instead of an env: Fetch returns a
// *RunRefusedError with the reason, and the wrapper prints it and exits
// without starting the job.
//
// While the job runs the wrapper may watch (with the same token) for an
// order from the agent: the agent's Order (a termination the dispatcher
// ordered) is answered to every watcher, which stops the job.
//
// The protocol is one JSON request line from the client, one JSON answer
// from the server, then close (a watch's answer waits for an order). It is not a general secrets API: there is
// no selection and no second chance.
package handoff

import (
	"bufio"
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"path/filepath"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// request is what the client sends: Op "env", Op "report" with the token
// and the usage report, or Op "watch" with the token.
type request struct {
	Op     string          `json:"op"`
	Token  string          `json:"token,omitempty"`
	Report json.RawMessage `json:"report,omitempty"`
}

// maxRequest bounds a request line (a usage report is a few hundred bytes).
const maxRequest = 64 << 10

// message is the server's answer: the env, an error, or (for a report) an
// empty acknowledgement.
type message struct {
	Version     int               `json:"version"`
	ReportToken string            `json:"report_token,omitempty"`
	Secrets     map[string]string `json:"secrets,omitempty"`
	ProxyURL    string            `json:"proxy_url,omitempty"`
	Extra       []Var             `json:"extra,omitempty"`
	Error       string            `json:"error,omitempty"`
	Refused     string            `json:"refused,omitempty"`
	Order       *Order            `json:"order,omitempty"`
}

// Order is what the agent orders the wrapper to do while the job runs:
// stop it (SIGTERM to its process group, Grace, SIGKILL).
type Order struct {
	// Reason is why, as the dispatcher said it; shown on the job's stderr.
	Reason string `json:"reason"`
	// Grace is the time between SIGTERM and SIGKILL. If zero, the
	// wrapper's own grace.
	Grace time.Duration `json:"grace"`
}

// Var is an environment variable Cordon sets for the job besides its
// secrets (e.g. the scoped-credentials endpoint); Secret ones are also
// scrubbed from the job's output.
type Var struct {
	Name   string `json:"name"`
	Value  string `json:"value"`
	Secret bool   `json:"secret,omitempty"`
}

const protocolVersion = 1

// maxMessage bounds what the client reads.
const maxMessage = 8 << 20

// Env is what the job gets.
type Env struct {
	Secrets  map[string]string
	ProxyURL string // if empty, the wrapper's default
	Extra    []Var
	// ReportToken authenticates the wrapper's usage report and its watch
	// (set by Fetch; ignored in ServerConfig, where the server makes its
	// own).
	ReportToken string
	// Refusal, when not empty, is why the run may not start: the env op
	// answers with it instead of the env (Fetch returns *RunRefusedError)
	// and takes no report. If empty, the run starts.
	Refusal string
}

// ServerConfig configures a Server.
type ServerConfig struct {
	// Socket is the path to listen on. Required.
	Socket string
	// UID is the only peer uid served; the socket file is chowned to it.
	// Required (use os.Getuid() when the job runs as the agent's uid).
	UID int
	// Env is handed out once. Required.
	Env Env
	// OnHandoff, if set, is called after the env was handed out (peer uid
	// and pid), and OnRefused after a refused request (with the reason), for
	// audit. They must not block.
	OnHandoff func(uid, pid int)
	OnRefused func(uid, pid int, reason string)
	// OnReport, if set, receives the wrapper's usage report (JSON, as the
	// wrapper encoded it); a report is refused when it is nil. It must not
	// block; an error it returns is passed back to the wrapper.
	OnReport func(report json.RawMessage) error
	// Logger. If nil, discarded.
	Logger *slog.Logger
}

// Server serves the env once.
type Server struct {
	cfg ServerConfig
	log *slog.Logger
	ln  *net.UnixListener

	token string // the one-time report token (hex)

	mu       sync.Mutex // guards the following
	env      *Env
	served   bool
	reported bool
	order    *Order
	ordered  chan struct{} // closed by the first Order

	closing chan struct{} // closed by Close: watchers give up

	wg        sync.WaitGroup
	closeOnce sync.Once
}

// Listen creates the socket (removing a stale one), sets its mode to 0600
// and its owner to cfg.UID.
func Listen(cfg ServerConfig) (*Server, error) {
	if cfg.Socket == "" {
		return nil, errors.New("handoff: no socket path")
	}
	if cfg.UID < 0 {
		return nil, errors.New("handoff: no job uid")
	}
	if err := os.MkdirAll(filepath.Dir(cfg.Socket), 0o755); err != nil {
		return nil, fmt.Errorf("handoff: create socket directory: %w", err)
	}
	if err := os.Remove(cfg.Socket); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("handoff: remove stale socket %s: %w", cfg.Socket, err)
	}
	// Bind in a private (0700) directory beside the final path, set mode and
	// owner, then rename into place: there is no moment when another uid
	// could connect, and no process-wide umask change.
	tmpDir, err := os.MkdirTemp(filepath.Dir(cfg.Socket), ".handoff-")
	if err != nil {
		return nil, fmt.Errorf("handoff: create private directory: %w", err)
	}
	defer os.RemoveAll(tmpDir)
	tmp := filepath.Join(tmpDir, "s")
	ln, err := net.ListenUnix("unix", &net.UnixAddr{Name: tmp, Net: "unix"})
	if err != nil {
		return nil, fmt.Errorf("handoff: listen on %s: %w", cfg.Socket, err)
	}
	ln.SetUnlinkOnClose(false) // the path changes below; Close removes it
	fail := func(err error) (*Server, error) {
		ln.Close()
		return nil, err
	}
	if err := os.Chmod(tmp, 0o600); err != nil {
		return fail(fmt.Errorf("handoff: chmod socket: %w", err))
	}
	if cfg.UID != os.Getuid() {
		if err := os.Lchown(tmp, cfg.UID, -1); err != nil {
			return fail(fmt.Errorf("handoff: give socket %s to uid %d: %w", cfg.Socket, cfg.UID, err))
		}
	}
	if err := os.Rename(tmp, cfg.Socket); err != nil {
		return fail(fmt.Errorf("handoff: move socket to %s: %w", cfg.Socket, err))
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	env := cfg.Env
	cfg.Env = Env{}
	var tok [32]byte
	if _, err := rand.Read(tok[:]); err != nil {
		return fail(fmt.Errorf("handoff: report token: %w", err))
	}
	return &Server{cfg: cfg, log: log, ln: ln, env: &env, token: hex.EncodeToString(tok[:]),
		ordered: make(chan struct{}), closing: make(chan struct{})}, nil
}

// Served reports whether the env was handed out.
func (s *Server) Served() bool {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.served
}

// Serve answers connections until ctx is done or Close is called. It
// returns nil then.
func (s *Server) Serve(ctx context.Context) error {
	stop := context.AfterFunc(ctx, func() { s.Close() })
	defer stop()
	for {
		conn, err := s.ln.AcceptUnix()
		if err != nil {
			if errors.Is(err, net.ErrClosed) {
				// Close may still be running in the AfterFunc goroutine;
				// closeOnce makes this call wait for it, so the socket is
				// gone when Serve returns.
				s.Close()
				s.wg.Wait()
				return nil
			}
			s.log.Warn("handoff accept", "err", err)
			time.Sleep(10 * time.Millisecond)
			continue
		}
		s.wg.Add(1)
		go func() {
			defer s.wg.Done()
			s.handle(conn)
		}()
	}
}

// Close stops listening and removes the socket. It is idempotent.
func (s *Server) Close() error {
	var err error
	s.closeOnce.Do(func() {
		close(s.closing)
		err = s.ln.Close()
		if rerr := os.Remove(s.cfg.Socket); rerr != nil && !errors.Is(rerr, os.ErrNotExist) && err == nil {
			err = rerr
		}
	})
	return err
}

func (s *Server) handle(conn *net.UnixConn) {
	defer conn.Close()
	_ = conn.SetDeadline(time.Now().Add(5 * time.Second))
	// Read the request before answering, whoever the peer is (bounded in
	// size and time, parsed only after the peer check): answering and
	// closing on unread data would reset the connection under the answer.
	line, rerr := bufio.NewReader(io.LimitReader(conn, maxRequest)).ReadBytes('\n')
	uid, pid, err := peerCred(conn)
	if err != nil {
		s.refuse(conn, -1, -1, "peer credentials unavailable")
		return
	}
	if uid != s.cfg.UID {
		s.refuse(conn, uid, pid, fmt.Sprintf("peer uid %d is not the job's uid %d", uid, s.cfg.UID))
		return
	}
	var req request
	if rerr != nil || json.Unmarshal(line, &req) != nil {
		s.refuse(conn, uid, pid, "malformed request")
		return
	}
	switch req.Op {
	case "env":
		s.handOut(conn, uid, pid)
	case "report":
		s.takeReport(conn, uid, pid, req)
	case "watch":
		s.watch(conn, uid, pid, req)
	default:
		s.refuse(conn, uid, pid, fmt.Sprintf("unknown op %.32q", req.Op))
	}
}

func (s *Server) handOut(conn *net.UnixConn, uid, pid int) {
	s.mu.Lock()
	env := s.env
	if s.served {
		s.mu.Unlock()
		s.refuse(conn, uid, pid, "the env was already handed out")
		return
	}
	s.served = true
	s.env = nil // drop the server's reference: the secrets live on only in the job
	if env.Refusal != "" {
		s.reported = true // no job, no report
	}
	s.mu.Unlock()

	if env.Refusal != "" {
		if err := json.NewEncoder(conn).Encode(message{Version: protocolVersion, Refused: env.Refusal}); err != nil {
			s.log.Error("handoff write failed", "peer_uid", uid, "peer_pid", pid, "err", err)
			return
		}
		s.log.Info("run refusal handed out", "peer_uid", uid, "peer_pid", pid)
		return
	}

	err := json.NewEncoder(conn).Encode(message{Version: protocolVersion, Secrets: env.Secrets, ProxyURL: env.ProxyURL, Extra: env.Extra, ReportToken: s.token})
	if err != nil {
		// Handed out or not, it is not handed out again: a peer that
		// hangs up mid-way does not get a second try.
		s.log.Error("handoff write failed", "peer_uid", uid, "peer_pid", pid, "err", err)
		return
	}
	s.log.Info("env handed out", "peer_uid", uid, "peer_pid", pid, "secrets", len(env.Secrets))
	if s.cfg.OnHandoff != nil {
		s.cfg.OnHandoff(uid, pid)
	}
}

func (s *Server) takeReport(conn *net.UnixConn, uid, pid int, req request) {
	if s.cfg.OnReport == nil {
		s.refuse(conn, uid, pid, "this agent takes no usage reports")
		return
	}
	if subtle.ConstantTimeCompare([]byte(req.Token), []byte(s.token)) != 1 {
		s.refuse(conn, uid, pid, "usage report with a wrong token")
		return
	}
	s.mu.Lock()
	if s.reported {
		s.mu.Unlock()
		s.refuse(conn, uid, pid, "the usage report was already taken")
		return
	}
	s.reported = true
	s.mu.Unlock()
	if err := s.cfg.OnReport(req.Report); err != nil {
		s.refuse(conn, uid, pid, "usage report not accepted: "+err.Error())
		return
	}
	_ = json.NewEncoder(conn).Encode(message{Version: protocolVersion})
	s.log.Info("usage report taken", "peer_uid", uid, "peer_pid", pid)
}

// Order orders the wrapper's watches (now or when they come) to stop the
// job. The first order stands; later ones are ignored. It does not block.
func (s *Server) Order(o Order) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.order != nil {
		return
	}
	s.order = &o
	close(s.ordered)
}

// watch answers when the agent orders something, or with an error when the
// server closes.
func (s *Server) watch(conn *net.UnixConn, uid, pid int, req request) {
	if subtle.ConstantTimeCompare([]byte(req.Token), []byte(s.token)) != 1 {
		s.refuse(conn, uid, pid, "watch with a wrong token")
		return
	}
	_ = conn.SetDeadline(time.Time{}) // the answer comes when there is an order
	select {
	case <-s.ordered:
		s.mu.Lock()
		o := *s.order
		s.mu.Unlock()
		_ = conn.SetWriteDeadline(time.Now().Add(5 * time.Second))
		if err := json.NewEncoder(conn).Encode(message{Version: protocolVersion, Order: &o}); err != nil {
			s.log.Error("handoff order write failed", "peer_uid", uid, "peer_pid", pid, "err", err)
			return
		}
		s.log.Info("order handed out", "peer_uid", uid, "peer_pid", pid)
	case <-s.closing:
		_ = conn.SetWriteDeadline(time.Now().Add(time.Second))
		_ = json.NewEncoder(conn).Encode(message{Version: protocolVersion, Error: "the agent is stopping"})
	}
}

func (s *Server) refuse(conn *net.UnixConn, uid, pid int, reason string) {
	s.log.Warn("handoff refused", "peer_uid", uid, "peer_pid", pid, "reason", reason)
	_ = json.NewEncoder(conn).Encode(message{Version: protocolVersion, Error: reason})
	if s.cfg.OnRefused != nil {
		s.cfg.OnRefused(uid, pid, reason)
	}
}

func peerCred(conn *net.UnixConn) (uid, pid int, err error) {
	raw, err := conn.SyscallConn()
	if err != nil {
		return 0, 0, err
	}
	var cred *unix.Ucred
	var cerr error
	if err := raw.Control(func(fd uintptr) {
		cred, cerr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, 0, err
	}
	if cerr != nil {
		return 0, 0, cerr
	}
	return int(cred.Uid), int(cred.Pid), nil
}

// ErrRefused is wrapped by Fetch's error when the agent refused.
var ErrRefused = errors.New("agent refused the handoff")

// RunRefusedError is Fetch's error for a run the agent refused to start
// (Env.Refusal): the job must not start, and Reason says why.
type RunRefusedError struct {
	Reason string
}

func (e *RunRefusedError) Error() string { return "run refused: " + e.Reason }

// Fetch asks the agent at socket for the env. It fails when the agent is
// not there, refuses, or answers with anything but one valid message. The
// returned Env's ReportToken is for Report and must not reach the job.
func Fetch(ctx context.Context, socket string) (Env, error) {
	m, err := call(ctx, socket, request{Op: "env"})
	if err != nil {
		return Env{}, fmt.Errorf("ask the agent for the job's env: %w", err)
	}
	if m.Refused != "" {
		return Env{}, &RunRefusedError{Reason: m.Refused}
	}
	if m.Secrets == nil {
		m.Secrets = map[string]string{}
	}
	return Env{Secrets: m.Secrets, ProxyURL: m.ProxyURL, Extra: m.Extra, ReportToken: m.ReportToken}, nil
}

// Report sends the wrapper's final usage report (any JSON value) with the
// token Fetch returned.
func Report(ctx context.Context, socket, token string, report any) error {
	b, err := json.Marshal(report)
	if err != nil {
		return fmt.Errorf("report usage to the agent: encode: %w", err)
	}
	if _, err := call(ctx, socket, request{Op: "report", Token: token, Report: b}); err != nil {
		return fmt.Errorf("report usage to the agent: %w", err)
	}
	return nil
}

// Watch waits, until ctx ends, for an order from the agent, with the token
// Fetch returned. It returns an error when the agent closes or is not
// there; the caller decides whether to watch again.
func Watch(ctx context.Context, socket, token string) (Order, error) {
	m, err := call(ctx, socket, request{Op: "watch", Token: token})
	if err != nil {
		return Order{}, fmt.Errorf("watch for the agent's orders: %w", err)
	}
	if m.Order == nil {
		return Order{}, fmt.Errorf("watch for the agent's orders: agent at %s answered without an order", socket)
	}
	return *m.Order, nil
}

func call(ctx context.Context, socket string, req request) (message, error) {
	var d net.Dialer
	conn, err := d.DialContext(ctx, "unix", socket)
	if err != nil {
		return message{}, fmt.Errorf("%w (is cordon-sidecar agent running and healthy?)", err)
	}
	defer conn.Close()
	if dl, ok := ctx.Deadline(); ok {
		_ = conn.SetDeadline(dl)
	} else if req.Op != "watch" {
		_ = conn.SetDeadline(time.Now().Add(10 * time.Second))
	}
	// A watch without a deadline ends with ctx.
	stop := context.AfterFunc(ctx, func() { _ = conn.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	b, err := json.Marshal(req)
	if err != nil {
		return message{}, err
	}
	_, werr := conn.Write(append(b, '\n'))
	// Read the answer even if sending failed: a refusal may be waiting.
	var m message
	dec := json.NewDecoder(io.LimitReader(conn, maxMessage))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&m); err != nil {
		if werr != nil {
			return message{}, fmt.Errorf("agent at %s: send: %w", socket, werr)
		}
		return message{}, fmt.Errorf("agent at %s: bad answer: %w", socket, err)
	}
	if m.Version != protocolVersion {
		return message{}, fmt.Errorf("agent at %s: protocol version %d, want %d", socket, m.Version, protocolVersion)
	}
	if m.Error != "" {
		return message{}, fmt.Errorf("agent at %s: %w: %s", socket, ErrRefused, m.Error)
	}
	return m, nil
}
