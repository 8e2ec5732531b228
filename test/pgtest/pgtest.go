// Package pgtest starts throwaway PostgreSQL clusters for tests: initdb and
// pg_ctl from the machine's PostgreSQL packages, run as the postgres user
// (initdb refuses root) in a temp dir, listening on a free loopback port,
// with fsync off because the data is thrown away.
//
// A test package shares one cluster (Shared, with WithShared in TestMain) and
// gives each test its own database (NewDatabase). A test that stops and
// restarts Postgres to simulate an outage starts a private cluster (Start) so
// it does not disturb the others.
//
// It is for tests and benchmarks only: the clusters trust every local
// connection and lose their data on a crash.
package pgtest

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"os/user"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"
)

// ErrNoPostgres means no PostgreSQL server binaries were found on PATH or
// under /usr/lib/postgresql/*/bin. Install the postgresql package.
var ErrNoPostgres = errors.New("pgtest: no PostgreSQL binaries (initdb, pg_ctl) on PATH or in /usr/lib/postgresql/*/bin; install the postgresql package")

// Options tune a cluster. The zero value is a test cluster: fsync off.
type Options struct {
	// Durable keeps fsync and synchronous_commit on, for benchmarks that
	// should measure what production pays. If false, both are off.
	Durable bool
	// MaxConnections is postgres' max_connections. If zero, 200.
	MaxConnections int
	// Settings are extra postgres -c settings (name -> value), e.g.
	// shared_preload_libraries. If nil, none.
	Settings map[string]string
	// Log receives the cluster's lifecycle messages. If nil, discarded.
	Log func(format string, args ...any)
}

// Cluster is one running (or stopped) PostgreSQL cluster.
type Cluster struct {
	binDir  string
	baseDir string
	dataDir string
	logFile string
	port    int
	asUser  bool // run commands through runuser -u postgres
	opts    Options

	mu      sync.Mutex // guards the following
	running bool
	closed  bool

	dbSeq atomic.Int64
}

// FindBinDir returns the directory holding initdb and pg_ctl, or
// ErrNoPostgres.
func FindBinDir() (string, error) {
	if p, err := exec.LookPath("pg_ctl"); err == nil {
		if real, err := filepath.EvalSymlinks(p); err == nil {
			p = real
		}
		dir := filepath.Dir(p)
		if _, err := os.Stat(filepath.Join(dir, "initdb")); err == nil {
			return dir, nil
		}
	}
	dirs, _ := filepath.Glob("/usr/lib/postgresql/*/bin")
	sort.Slice(dirs, func(i, j int) bool { return versionOf(dirs[i]) > versionOf(dirs[j]) })
	for _, d := range dirs {
		if _, err := os.Stat(filepath.Join(d, "pg_ctl")); err == nil {
			return d, nil
		}
	}
	return "", ErrNoPostgres
}

func versionOf(binDir string) int {
	n, _ := strconv.Atoi(filepath.Base(filepath.Dir(binDir)))
	return n
}

// Start starts a private cluster that is stopped and removed when tb ends.
// It skips tb when no PostgreSQL binaries exist and fails it when the
// cluster does not start.
func Start(tb testing.TB) *Cluster {
	tb.Helper()
	c, err := New(Options{Log: tb.Logf})
	if errors.Is(err, ErrNoPostgres) {
		tb.Skip(err.Error())
	}
	if err != nil {
		tb.Fatalf("start postgres: %v", err)
	}
	tb.Cleanup(c.Close)
	return c
}

// New initialises and starts a cluster. The caller must Close it.
func New(opts Options) (*Cluster, error) {
	binDir, err := FindBinDir()
	if err != nil {
		return nil, err
	}
	if opts.MaxConnections == 0 {
		opts.MaxConnections = 200
	}
	if opts.Log == nil {
		opts.Log = func(string, ...any) {}
	}
	sweepOrphans(binDir, opts.Log)
	base, err := os.MkdirTemp("", "pgtest-")
	if err != nil {
		return nil, fmt.Errorf("pgtest: make temp dir: %w", err)
	}
	// Record the owner so a later run can stop this cluster if the test
	// binary dies without cleaning up (a timeout panic, a kill).
	if err := os.WriteFile(filepath.Join(base, "owner.pid"), []byte(strconv.Itoa(os.Getpid())), 0o644); err != nil {
		os.RemoveAll(base)
		return nil, fmt.Errorf("pgtest: %w", err)
	}
	c := &Cluster{
		binDir:  binDir,
		baseDir: base,
		dataDir: filepath.Join(base, "data"),
		logFile: filepath.Join(base, "postgres.log"),
		opts:    opts,
	}
	if os.Geteuid() == 0 {
		c.asUser = true
		u, err := user.Lookup("postgres")
		if err != nil {
			os.RemoveAll(base)
			return nil, fmt.Errorf("pgtest: running as root needs the postgres user to run initdb: %w", err)
		}
		uid, _ := strconv.Atoi(u.Uid)
		gid, _ := strconv.Atoi(u.Gid)
		if err := os.Chmod(base, 0o700); err != nil {
			os.RemoveAll(base)
			return nil, err
		}
		if err := os.Chown(base, uid, gid); err != nil {
			os.RemoveAll(base)
			return nil, fmt.Errorf("pgtest: chown %s to postgres: %w", base, err)
		}
	}
	port, err := freePort()
	if err != nil {
		os.RemoveAll(base)
		return nil, err
	}
	c.port = port
	if out, err := c.run("initdb", "-D", c.dataDir, "-U", "postgres", "-A", "trust", "-E", "UTF8", "--locale=C", "--no-sync"); err != nil {
		os.RemoveAll(base)
		return nil, fmt.Errorf("pgtest: initdb: %w\n%s", err, out)
	}
	if err := c.Start(); err != nil {
		c.Close()
		return nil, err
	}
	return c, nil
}

// sweepOrphans stops and removes clusters left behind by test processes
// that no longer exist.
func sweepOrphans(binDir string, log func(string, ...any)) {
	dirs, _ := filepath.Glob(filepath.Join(os.TempDir(), "pgtest-*"))
	for _, dir := range dirs {
		b, err := os.ReadFile(filepath.Join(dir, "owner.pid"))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
		if err != nil || pid <= 0 || syscall.Kill(pid, 0) != syscall.ESRCH {
			continue // owner alive (or unknown): not ours to touch
		}
		c := &Cluster{binDir: binDir, baseDir: dir, dataDir: filepath.Join(dir, "data"), asUser: os.Geteuid() == 0}
		if _, err := os.Stat(filepath.Join(c.dataDir, "postmaster.pid")); err == nil {
			c.run("pg_ctl", "-D", c.dataDir, "-m", "immediate", "-w", "-t", "30", "stop")
		}
		os.RemoveAll(dir)
		log("pgtest: removed cluster %s left by dead process %d", dir, pid)
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("pgtest: find a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (c *Cluster) run(tool string, args ...string) ([]byte, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	bin := filepath.Join(c.binDir, tool)
	var cmd *exec.Cmd
	if c.asUser {
		cmd = exec.CommandContext(ctx, "runuser", append([]string{"-u", "postgres", "--", bin}, args...)...)
	} else {
		cmd = exec.CommandContext(ctx, bin, args...)
	}
	cmd.Dir = c.baseDir
	var out bytes.Buffer
	cmd.Stdout = &out
	cmd.Stderr = &out
	err := cmd.Run()
	return out.Bytes(), err
}

// Start starts a stopped cluster on the same port (for outage tests).
func (c *Cluster) Start() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return errors.New("pgtest: start: cluster is closed")
	}
	if c.running {
		return nil
	}
	sync := "off"
	if c.opts.Durable {
		sync = "on"
	}
	args := []string{
		"-p", strconv.Itoa(c.port),
		"-k", c.baseDir,
		"-c", "listen_addresses=127.0.0.1",
		"-c", "fsync=" + sync,
		"-c", "synchronous_commit=" + sync,
		"-c", "full_page_writes=" + sync,
		"-c", "max_connections=" + strconv.Itoa(c.opts.MaxConnections),
		"-c", "shared_buffers=128MB",
	}
	names := make([]string, 0, len(c.opts.Settings))
	for k := range c.opts.Settings {
		names = append(names, k)
	}
	sort.Strings(names)
	for _, k := range names {
		args = append(args, "-c", k+"="+c.opts.Settings[k])
	}
	o := strings.Join(args, " ")
	if out, err := c.run("pg_ctl", "-D", c.dataDir, "-l", c.logFile, "-o", o, "-w", "-t", "30", "start"); err != nil {
		return fmt.Errorf("pgtest: pg_ctl start: %w\n%s\n%s", err, out, c.tailLog())
	}
	c.running = true
	c.opts.Log("pgtest: postgres running on 127.0.0.1:%d (data %s)", c.port, c.dataDir)
	return nil
}

// Stop stops the cluster (fast shutdown: connections are cut, as in an
// outage). Start brings it back.
func (c *Cluster) Stop() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.stopLocked("fast")
}

func (c *Cluster) stopLocked(mode string) error {
	if !c.running {
		return nil
	}
	if out, err := c.run("pg_ctl", "-D", c.dataDir, "-m", mode, "-w", "-t", "30", "stop"); err != nil {
		return fmt.Errorf("pgtest: pg_ctl stop: %w\n%s", err, out)
	}
	c.running = false
	return nil
}

// Close stops the cluster and removes its files. It is idempotent.
func (c *Cluster) Close() {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.closed {
		return
	}
	if err := c.stopLocked("fast"); err != nil {
		c.opts.Log("%v", err)
		_ = c.stopLocked("immediate")
	}
	c.closed = true
	os.RemoveAll(c.baseDir)
}

func (c *Cluster) tailLog() string {
	b, _ := os.ReadFile(c.logFile)
	if len(b) > 4096 {
		b = b[len(b)-4096:]
	}
	return string(b)
}

// PID is the postmaster's process ID (from postmaster.pid), for tools that
// account the cluster's CPU time.
func (c *Cluster) PID() (int, error) {
	b, err := os.ReadFile(filepath.Join(c.dataDir, "postmaster.pid"))
	if err != nil {
		return 0, fmt.Errorf("pgtest: read postmaster.pid: %w", err)
	}
	first, _, _ := strings.Cut(string(b), "\n")
	return strconv.Atoi(strings.TrimSpace(first))
}

// Dir is the cluster's base directory (data, socket, log).
func (c *Cluster) Dir() string { return c.baseDir }

// Port is the loopback TCP port the cluster listens on.
func (c *Cluster) Port() int { return c.port }

// URL is a superuser connection URL for database db.
func (c *Cluster) URL(db string) string {
	return fmt.Sprintf("postgres://postgres@127.0.0.1:%d/%s?sslmode=disable", c.port, db)
}

// CreateDatabase creates a fresh database and returns its superuser URL.
// The caller drops it (or Close removes the whole cluster).
func (c *Cluster) CreateDatabase(ctx context.Context) (string, error) {
	name := fmt.Sprintf("pgtest_%d_%d", os.Getpid(), c.dbSeq.Add(1))
	conn, err := pgx.Connect(ctx, c.URL("postgres"))
	if err != nil {
		return "", fmt.Errorf("pgtest: connect: %w", err)
	}
	defer conn.Close(ctx)
	if _, err := conn.Exec(ctx, "CREATE DATABASE "+name); err != nil {
		return "", fmt.Errorf("pgtest: create database %s: %w", name, err)
	}
	return c.URL(name), nil
}

// NewDatabase creates a database for one test and drops it when tb ends.
func (c *Cluster) NewDatabase(tb testing.TB) string {
	tb.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	url, err := c.CreateDatabase(ctx)
	if err != nil {
		tb.Fatal(err)
	}
	name := url[strings.LastIndex(url, "/")+1 : strings.Index(url, "?")]
	tb.Cleanup(func() {
		c.mu.Lock()
		running := c.running && !c.closed
		c.mu.Unlock()
		if !running {
			return
		}
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		conn, err := pgx.Connect(ctx, c.URL("postgres"))
		if err != nil {
			tb.Logf("pgtest: drop %s: %v", name, err)
			return
		}
		defer conn.Close(ctx)
		if _, err := conn.Exec(ctx, "DROP DATABASE IF EXISTS "+name+" WITH (FORCE)"); err != nil {
			tb.Logf("pgtest: drop %s: %v", name, err)
		}
	})
	return url
}

var shared struct {
	mu      sync.Mutex // guards the following
	cluster *Cluster
	err     error
}

// Shared returns the package's shared cluster, starting it on first use.
// It skips tb when no PostgreSQL binaries exist. Stop it from TestMain with
// WithShared.
func Shared(tb testing.TB) *Cluster {
	tb.Helper()
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.cluster == nil && shared.err == nil {
		shared.cluster, shared.err = New(Options{})
	}
	if errors.Is(shared.err, ErrNoPostgres) {
		tb.Skip(shared.err.Error())
	}
	if shared.err != nil {
		tb.Fatalf("start shared postgres: %v", shared.err)
	}
	return shared.cluster
}

// StopShared stops and removes the shared cluster, if one was started.
func StopShared() {
	shared.mu.Lock()
	defer shared.mu.Unlock()
	if shared.cluster != nil {
		shared.cluster.Close()
		shared.cluster = nil
	}
}

// Runner is what testing.M and goleak.VerifyTestMain agree on.
type Runner interface{ Run() int }

// WithShared wraps m so the shared cluster is stopped after the tests:
//
//	func TestMain(m *testing.M) { goleak.VerifyTestMain(pgtest.WithShared(m)) }
func WithShared(m Runner) Runner { return sharedRunner{m} }

type sharedRunner struct{ m Runner }

func (r sharedRunner) Run() int {
	code := r.m.Run()
	StopShared()
	return code
}
