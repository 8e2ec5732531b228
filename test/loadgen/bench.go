package loadgen

import (
	"bufio"
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/netip"
	"runtime"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"
)

// Target says where load goes.
type Target struct {
	// Proxy is the proxy's host:port. If empty, the load goes straight to
	// Upstream: that is the "direct" baseline.
	Proxy string
	// Host is the upstream's name as written in request URIs, Host headers
	// and CONNECT lines, e.g. "upstream.bench.test". Required.
	Host string
	// Upstream is the upstream's address. Its port is the port in every URI;
	// the address itself is dialled only when Proxy is empty. Required.
	Upstream netip.AddrPort
}

func (t Target) authority() string {
	return net.JoinHostPort(t.Host, strconv.Itoa(int(t.Upstream.Port())))
}

func (t Target) dialAddr() string {
	if t.Proxy != "" {
		return t.Proxy
	}
	return t.Upstream.String()
}

func (t Target) validate() error {
	if t.Host == "" || !t.Upstream.IsValid() {
		return errors.New("target needs an upstream host name and address")
	}
	if !t.Upstream.Addr().IsLoopback() {
		return fmt.Errorf("upstream %s is not loopback: load traffic stays on loopback", t.Upstream)
	}
	if t.Proxy != "" {
		if err := requireLoopback(t.Proxy); err != nil {
			return fmt.Errorf("proxy: %w", err)
		}
	}
	return nil
}

// Config configures one measurement run against one target.
type Config struct {
	// Name labels the result (a table row), e.g. "squid".
	Name string
	// Target is where the load goes. Required.
	Target Target
	// ProxyPID is the proxy's process ID; the idle-tunnel phase reads the
	// resident memory of it and its descendants. If zero, no memory is read.
	ProxyPID int
	// Clients is the number of concurrent clients. If zero, 16.
	Clients int
	// Warmup runs load that is not measured before each rate phase. If
	// zero, 2s.
	Warmup time.Duration
	// Duration is the measured time of each rate phase. If zero, 10s.
	Duration time.Duration
	// SmallSize is the body size the upstream serves at /small; responses
	// of another size count as errors. If zero, 100.
	SmallSize int
	// BigSize is the body size the upstream serves at /big. If zero, 1 GiB;
	// if negative, the bulk phase is skipped.
	BigSize int64
	// BulkRuns is how many times the bulk phase downloads /big, one after
	// the other; the result is the median. One 1 GiB download lasts about a
	// second here and single runs of the same target differed by up to 2x
	// from one to the next, too noisy for a ratio. If zero, 3.
	BulkRuns int
	// IdleTunnels is how many idle tunnels the memory phase opens. If zero,
	// 10000; if negative, the phase is skipped.
	IdleTunnels int
	// PacedRate is the total request rate (requests per second over all
	// clients) of the paced keep-alive phase, which measures the latency a
	// proxy adds at a fixed load every target can carry. If zero, 5000; if
	// negative, the phase is skipped.
	PacedRate int
	// SettleTime is how long the memory phase waits after opening the
	// tunnels before reading memory. If zero, 1s.
	SettleTime time.Duration
	// Logger receives progress lines. If nil, logs are discarded.
	Logger *slog.Logger
}

func (c *Config) setDefaults() {
	if c.Clients == 0 {
		c.Clients = 16
	}
	if c.Warmup == 0 {
		c.Warmup = 2 * time.Second
	}
	if c.Duration == 0 {
		c.Duration = 10 * time.Second
	}
	if c.SmallSize == 0 {
		c.SmallSize = 100
	}
	if c.BigSize == 0 {
		c.BigSize = 1 << 30
	}
	if c.BulkRuns <= 0 {
		c.BulkRuns = 3
	}
	if c.IdleTunnels == 0 {
		c.IdleTunnels = 10000
	}
	if c.PacedRate == 0 {
		c.PacedRate = 5000
	}
	if c.SettleTime == 0 {
		c.SettleTime = time.Second
	}
	if c.Logger == nil {
		c.Logger = slog.New(slog.DiscardHandler)
	}
}

// RateResult is the outcome of a closed-loop phase: Clients workers each
// issuing one request after another.
type RateResult struct {
	// Requests completed successfully that started inside the measured window.
	Requests uint64 `json:"requests"`
	// Seconds is the length of the measured window.
	Seconds float64 `json:"seconds"`
	// PerSecond is Requests / Seconds.
	PerSecond float64 `json:"per_second"`
	// Latency quantiles of successful requests, including any connection
	// set-up the request needed.
	P50 time.Duration `json:"p50_ns"`
	P90 time.Duration `json:"p90_ns"`
	P99 time.Duration `json:"p99_ns"`
	Max time.Duration `json:"max_ns"`
	// Errors counts failed requests over warm-up and measurement.
	Errors     uint64 `json:"errors"`
	FirstError string `json:"first_error,omitempty"`
	// Connects counts connections opened during the measured window; in the
	// keep-alive phase it shows a proxy that closes client connections.
	Connects uint64 `json:"connects"`
}

// BulkResult is the outcome of the large downloads: the median run's
// figures, and every run's rate.
type BulkResult struct {
	Bytes       int64     `json:"bytes"`
	Seconds     float64   `json:"seconds"`
	GBPerSecond float64   `json:"gb_per_second"` // 10^9 bytes per second
	Runs        []float64 `json:"runs_gb_per_second,omitempty"`
	Error       string    `json:"error,omitempty"`
}

// IdleResult is the outcome of the idle-tunnel memory phase.
type IdleResult struct {
	Want        int     `json:"want"`
	Opened      int     `json:"opened"`
	Failed      int     `json:"failed"`
	OpenSeconds float64 `json:"open_seconds"`
	// BaselineRSS and RSS are resident bytes of the proxy process tree
	// before opening and with all tunnels open; zero when not measured.
	BaselineRSS int64 `json:"baseline_rss_bytes"`
	RSS         int64 `json:"rss_bytes"`
	// Checked tunnels were used once more after the memory reading; Alive
	// of them still worked.
	Checked int    `json:"checked"`
	Alive   int    `json:"alive"`
	Error   string `json:"error,omitempty"`
}

// ProjectedRSS extrapolates the memory to n tunnels from the measured
// per-tunnel cost: BaselineRSS + (RSS-BaselineRSS)*n/Opened. It is for a
// machine whose open-file limit stops just short of n; it returns 0 when
// nothing was measured.
func (r IdleResult) ProjectedRSS(n int) int64 {
	if r.RSS == 0 || r.Opened == 0 {
		return 0
	}
	return r.BaselineRSS + (r.RSS-r.BaselineRSS)*int64(n)/int64(r.Opened)
}

// Result is one target's row of the benchmark.
type Result struct {
	Name string `json:"name"`
	// Skipped says why the target was not measured; empty when it was.
	Skipped    string     `json:"skipped,omitempty"`
	Proxy      string     `json:"proxy,omitempty"`
	Clients    int        `json:"clients"`
	GOMAXPROCS int        `json:"gomaxprocs"`
	NumCPU     int        `json:"num_cpu"`
	KeepAlive  RateResult `json:"keep_alive"`
	// Paced is the keep-alive phase at PacedRate requests/s: latency from
	// each request's scheduled start, so a stall counts for every request
	// it delayed.
	Paced     RateResult `json:"paced"`
	PacedRate int        `json:"paced_rate"`
	Tunnels   RateResult `json:"tunnels"`
	Bulk      BulkResult `json:"bulk"`
	Idle      IdleResult `json:"idle"`
}

// Run measures one target: keep-alive requests, new tunnels per request, one
// bulk download through a tunnel, and memory with idle tunnels open. Phase
// failures are recorded in the result; the error is for bad configuration
// and cancellation only.
func Run(ctx context.Context, cfg Config) (Result, error) {
	cfg.setDefaults()
	if err := cfg.Target.validate(); err != nil {
		return Result{}, fmt.Errorf("run %s: %w", cfg.Name, err)
	}
	if cfg.Clients < 1 || cfg.Duration < 0 || cfg.Warmup < 0 {
		return Result{}, fmt.Errorf("run %s: need at least one client and non-negative durations", cfg.Name)
	}
	res := Result{
		Name:       cfg.Name,
		Proxy:      cfg.Target.Proxy,
		Clients:    cfg.Clients,
		GOMAXPROCS: runtime.GOMAXPROCS(0),
		NumCPU:     runtime.NumCPU(),
	}
	p := newPlan(cfg)
	log := cfg.Logger.With("target", cfg.Name)

	log.Info("phase start", "phase", "keep-alive")
	res.KeepAlive = runRate(ctx, cfg, p, 0, (*client).keepAliveOnce)
	if err := ctx.Err(); err != nil {
		return res, err
	}
	if cfg.PacedRate > 0 {
		log.Info("phase start", "phase", "paced keep-alive", "rate", cfg.PacedRate)
		res.Paced = runRate(ctx, cfg, p, cfg.PacedRate, (*client).keepAliveOnce)
		res.PacedRate = cfg.PacedRate
		if err := ctx.Err(); err != nil {
			return res, err
		}
	}
	log.Info("phase start", "phase", "tunnels")
	res.Tunnels = runRate(ctx, cfg, p, 0, (*client).tunnelOnce)
	if err := ctx.Err(); err != nil {
		return res, err
	}
	if cfg.BigSize > 0 {
		log.Info("phase start", "phase", "bulk")
		res.Bulk = runBulks(ctx, p, cfg.BulkRuns)
		if err := ctx.Err(); err != nil {
			return res, err
		}
	}
	if cfg.IdleTunnels > 0 {
		log.Info("phase start", "phase", "idle")
		res.Idle = runIdle(ctx, cfg, p)
	}
	return res, ctx.Err()
}

// plan holds the pre-built request bytes for a target.
type plan struct {
	target    Target
	smallSize int
	bigSize   int64
	keepAlive []byte // the keep-alive request, absolute-form through a proxy
	connect   []byte // CONNECT line and headers; nil when direct
	inner     []byte // GET /small inside a tunnel (or on a fresh direct connection)
	big       []byte // GET /big inside a tunnel
}

func newPlan(cfg Config) *plan {
	t := cfg.Target
	auth := t.authority()
	p := &plan{target: t, smallSize: cfg.SmallSize, bigSize: cfg.BigSize}
	hdr := " HTTP/1.1\r\nHost: " + auth + "\r\nUser-Agent: cordon-loadgen\r\n\r\n"
	p.inner = []byte("GET /small" + hdr)
	p.big = []byte("GET /big" + hdr)
	if t.Proxy == "" {
		p.keepAlive = p.inner
	} else {
		p.keepAlive = []byte("GET http://" + auth + "/small" + hdr)
		p.connect = []byte("CONNECT " + auth + " HTTP/1.1\r\nHost: " + auth + "\r\n\r\n")
	}
	return p
}

// client is one worker's connection state. Its buffers are reused across
// requests so the keep-alive path allocates nothing.
type client struct {
	p        *plan
	dialer   net.Dialer
	conn     net.Conn
	br       *bufio.Reader
	deadline time.Time // applied to every connection this client dials
	connects uint64
}

func newClient(p *plan) *client {
	return &client{p: p, dialer: net.Dialer{Timeout: 5 * time.Second}, br: bufio.NewReaderSize(nil, 16<<10)}
}

func (c *client) dial(ctx context.Context) error {
	conn, err := c.dialer.DialContext(ctx, "tcp", c.p.target.dialAddr())
	if err != nil {
		return fmt.Errorf("dial %s: %w", c.p.target.dialAddr(), err)
	}
	if !c.deadline.IsZero() {
		conn.SetDeadline(c.deadline)
	}
	c.conn = conn
	c.br.Reset(conn)
	c.connects++
	return nil
}

func (c *client) close() {
	if c.conn != nil {
		c.conn.Close()
		c.conn = nil
	}
}

// openTunnel sends CONNECT on the current connection and reads the answer.
// Direct targets have no tunnel to open.
func (c *client) openTunnel() error {
	if c.p.connect == nil {
		return nil
	}
	if _, err := c.conn.Write(c.p.connect); err != nil {
		return fmt.Errorf("write CONNECT: %w", err)
	}
	h, err := readResponseHead(c.br, true)
	if err != nil {
		return fmt.Errorf("read CONNECT answer: %w", err)
	}
	if h.status/100 != 2 {
		return fmt.Errorf("CONNECT answered %d, want 200", h.status)
	}
	return nil
}

// errNoResponse marks a connection that was closed before any byte of the
// response: on a reused keep-alive connection that is the server (or proxy)
// having closed it while idle, and the request is retried on a new one, as
// every HTTP client does.
var errNoResponse = errors.New("connection closed before the response")

// small sends req and reads a /small response, checking status and size.
// It reports whether the connection can be reused.
func (c *client) small(req []byte) (reusable bool, err error) {
	if _, err := c.conn.Write(req); err != nil {
		if errors.Is(err, syscall.EPIPE) || errors.Is(err, syscall.ECONNRESET) {
			err = fmt.Errorf("%w: %w", errNoResponse, err)
		}
		return false, fmt.Errorf("write request: %w", err)
	}
	h, err := readResponseHead(c.br, false)
	if err != nil {
		if errors.Is(err, io.EOF) || errors.Is(err, syscall.ECONNRESET) {
			err = fmt.Errorf("%w: %w", errNoResponse, err)
		}
		return false, fmt.Errorf("read response: %w", err)
	}
	n, err := discardBody(c.br, h)
	if err != nil {
		return false, fmt.Errorf("read body: %w", err)
	}
	if h.status != 200 {
		return false, fmt.Errorf("got status %d, want 200", h.status)
	}
	if n != int64(c.p.smallSize) {
		return false, fmt.Errorf("got %d body bytes, want %d", n, c.p.smallSize)
	}
	return !h.close, nil
}

// keepAliveOnce is one keep-alive request, dialling first if the previous
// response closed the connection.
func (c *client) keepAliveOnce(ctx context.Context) error {
	reused := c.conn != nil
	if !reused {
		if err := c.dial(ctx); err != nil {
			return err
		}
	}
	reusable, err := c.small(c.p.keepAlive)
	if reused && errors.Is(err, errNoResponse) {
		c.close()
		if err := c.dial(ctx); err != nil {
			return err
		}
		reusable, err = c.small(c.p.keepAlive)
	}
	if err != nil || !reusable {
		c.close()
	}
	return err
}

// tunnelOnce opens a new connection, a tunnel through it, makes one small
// request inside, and closes.
func (c *client) tunnelOnce(ctx context.Context) error {
	defer c.close()
	if err := c.dial(ctx); err != nil {
		return err
	}
	if err := c.openTunnel(); err != nil {
		return err
	}
	_, err := c.small(c.p.inner)
	return err
}

// runRate runs a closed-loop phase: every client repeats op until the end
// of warm-up plus duration; only requests started after warm-up count.
//
// With rate > 0 the phase is paced instead (open loop): each client sends
// on its own fixed schedule (rate/Clients requests per second, the clients
// staggered). A client that falls behind sends at once, and the latency
// of a request sent late counts from when it was due, so a stall is
// charged to every request it held back (no coordinated omission).
func runRate(ctx context.Context, cfg Config, p *plan, rate int, op func(*client, context.Context) error) RateResult {
	start := time.Now()
	from := start.Add(cfg.Warmup)
	end := from.Add(cfg.Duration)
	type workerOut struct {
		hist               Histogram
		ok, errs, connects uint64
		firstErr           error
	}
	outs := make([]workerOut, cfg.Clients)
	var wg sync.WaitGroup
	for i := range outs {
		wg.Add(1)
		go func(out *workerOut) {
			defer wg.Done()
			c := newClient(p)
			c.deadline = end.Add(10 * time.Second)
			defer c.close()
			var connectsAtFrom uint64
			measuring := false
			var interval time.Duration
			var due time.Time
			if rate > 0 {
				interval = time.Duration(float64(time.Second) * float64(cfg.Clients) / float64(rate))
				due = start.Add(interval * time.Duration(i) / time.Duration(cfg.Clients))
			}
			for ctx.Err() == nil {
				t0 := time.Now()
				if rate > 0 {
					// On schedule: sleep, and count from the actual send
					// (Go's timers may wake up to a millisecond late; that
					// is the load tool's delay, not the target's). Behind
					// schedule, because the last answer came late: count
					// from when this request was due.
					if wait := due.Sub(t0); wait > 0 {
						time.Sleep(wait)
						t0 = time.Now()
					} else {
						t0 = due
					}
					due = due.Add(interval)
				}
				if !t0.Before(end) {
					break
				}
				if !measuring && !t0.Before(from) {
					measuring, connectsAtFrom = true, c.connects
				}
				err := op(c, ctx)
				if err != nil {
					out.errs++
					if out.firstErr == nil {
						out.firstErr = err
					}
					c.close()
					// A proxy that refuses at once must not turn this loop
					// into a spin that starves the proxy of CPU.
					time.Sleep(time.Millisecond)
					continue
				}
				if measuring {
					out.hist.Record(time.Since(t0))
					out.ok++
				}
			}
			if measuring {
				out.connects = c.connects - connectsAtFrom
			}
		}(&outs[i])
	}
	wg.Wait()

	var r RateResult
	var hist Histogram
	for i := range outs {
		hist.Merge(&outs[i].hist)
		r.Requests += outs[i].ok
		r.Errors += outs[i].errs
		r.Connects += outs[i].connects
		if r.FirstError == "" && outs[i].firstErr != nil {
			r.FirstError = outs[i].firstErr.Error()
		}
	}
	r.Seconds = cfg.Duration.Seconds()
	if r.Seconds > 0 {
		r.PerSecond = float64(r.Requests) / r.Seconds
	}
	r.P50, r.P90, r.P99, r.Max = hist.Quantile(0.50), hist.Quantile(0.90), hist.Quantile(0.99), hist.Max()
	return r
}

// runBulks runs runBulk n times and keeps the median run (by rate), with
// every run's rate in Runs. The first failure ends it.
func runBulks(ctx context.Context, p *plan, n int) BulkResult {
	var runs []BulkResult
	var rates []float64
	for range n {
		r := runBulk(ctx, p)
		if r.Error != "" || ctx.Err() != nil {
			r.Runs = rates
			return r
		}
		runs = append(runs, r)
		rates = append(rates, r.GBPerSecond)
	}
	slices.SortFunc(runs, func(a, b BulkResult) int { return cmp.Compare(a.GBPerSecond, b.GBPerSecond) })
	med := runs[len(runs)/2]
	med.Runs = rates
	return med
}

// runBulk downloads /big once through a tunnel (or directly) and times it
// from sending the request to the last byte. The client reads into a
// user-space buffer and drops it, as a real downloader would.
func runBulk(ctx context.Context, p *plan) BulkResult {
	var r BulkResult
	c := newClient(p)
	c.deadline = time.Now().Add(5 * time.Minute)
	defer c.close()
	if err := c.dial(ctx); err != nil {
		r.Error = err.Error()
		return r
	}
	stop := context.AfterFunc(ctx, c.close)
	defer stop()
	if err := c.openTunnel(); err != nil {
		r.Error = err.Error()
		return r
	}
	t0 := time.Now()
	n, err := c.download(p.big, p.bigSize)
	r.Seconds = time.Since(t0).Seconds()
	r.Bytes = n
	if err != nil {
		r.Error = err.Error()
		return r
	}
	r.GBPerSecond = float64(n) / r.Seconds / 1e9
	return r
}

// download sends req and reads a response of want body bytes, bypassing
// the small bufio buffer for the body.
func (c *client) download(req []byte, want int64) (int64, error) {
	if _, err := c.conn.Write(req); err != nil {
		return 0, fmt.Errorf("write request: %w", err)
	}
	h, err := readResponseHead(c.br, false)
	if err != nil {
		return 0, fmt.Errorf("read response: %w", err)
	}
	if h.status != 200 || h.chunked || h.contentLength != want {
		return 0, fmt.Errorf("got status %d with length %d (chunked %v), want 200 with length %d", h.status, h.contentLength, h.chunked, want)
	}
	n, _ := c.br.Discard(c.br.Buffered())
	got := int64(n)
	buf := make([]byte, 256<<10)
	for got < want {
		m, err := c.conn.Read(buf[:min(int64(len(buf)), want-got)])
		got += int64(m)
		if err != nil {
			if errors.Is(err, io.EOF) {
				err = io.ErrUnexpectedEOF
			}
			return got, fmt.Errorf("read body at byte %d: %w", got, err)
		}
	}
	return got, nil
}

// runIdle opens cfg.IdleTunnels tunnels, uses each once so both legs exist,
// leaves them idle, reads the proxy's memory, checks a sample still works,
// and closes them all.
func runIdle(ctx context.Context, cfg Config, p *plan) IdleResult {
	r := IdleResult{Want: cfg.IdleTunnels}
	if cfg.ProxyPID > 0 {
		rss, err := TreeRSS(cfg.ProxyPID)
		if err != nil {
			r.Error = err.Error()
			return r
		}
		r.BaselineRSS = rss
	}
	const openers = 32
	const maxFailures = 100
	var (
		next, failures atomic.Int64
		mu             sync.Mutex // guards the following
		conns          = make([]net.Conn, 0, cfg.IdleTunnels)
		firstErr       error
	)
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	t0 := time.Now()
	var wg sync.WaitGroup
	for range openers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			c := newClient(p)
			for ctx.Err() == nil && failures.Load() < maxFailures && next.Add(1) <= int64(cfg.IdleTunnels) {
				c.deadline = time.Now().Add(15 * time.Second)
				err := c.dial(ctx)
				if err == nil {
					err = c.openTunnel()
				}
				if err == nil {
					_, err = c.small(p.inner)
				}
				if err == nil && c.br.Buffered() != 0 {
					err = errors.New("unexpected bytes after the response")
				}
				if err != nil {
					c.close()
					failures.Add(1)
					mu.Lock()
					if firstErr == nil {
						firstErr = err
					}
					mu.Unlock()
					continue
				}
				c.conn.SetDeadline(time.Time{})
				mu.Lock()
				conns = append(conns, c.conn)
				mu.Unlock()
				c.conn = nil
			}
		}()
	}
	wg.Wait()
	r.OpenSeconds = time.Since(t0).Seconds()
	r.Opened, r.Failed = len(conns), int(failures.Load())
	if firstErr != nil {
		r.Error = firstErr.Error()
	}
	select {
	case <-ctx.Done():
		return r
	case <-time.After(cfg.SettleTime):
	}
	if cfg.ProxyPID > 0 {
		rss, err := TreeRSS(cfg.ProxyPID)
		if err != nil && r.Error == "" {
			r.Error = err.Error()
		}
		r.RSS = rss
	}
	// Use about 100 of the tunnels again: memory of tunnels a proxy had
	// silently dropped would not count.
	step := max(1, len(conns)/100)
	c := newClient(p)
	for i := 0; i < len(conns); i += step {
		r.Checked++
		c.conn = conns[i]
		c.conn.SetDeadline(time.Now().Add(5 * time.Second))
		c.br.Reset(c.conn)
		if _, err := c.small(p.inner); err == nil {
			r.Alive++
		}
		c.conn = nil
	}
	return r
}
