// Package reload keeps cordon-xds's served snapshot in step with the
// allowlist directory: it loads every file (allowlist.LoadDir), translates
// every job (xds/translate) and publishes the result as one new version, and
// it watches the directory so an edit is live within the debounce delay.
//
// A broken edit changes nothing: the last good snapshot keeps serving, and
// the failure is reported as one log line per error, the
// cordon_xds_config_errors_total metric and an ALLOWLIST_REJECTED audit
// event. Versions only go up, also across restarts (see Config.StateDir).
//
// It does not serve anything (xds/server) or decide who sees what.
package reload

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"time"

	routev3 "github.com/envoyproxy/go-control-plane/envoy/config/route/v3"
	"github.com/fsnotify/fsnotify"
	"google.golang.org/protobuf/proto"

	"github.com/cordon-dev/cordon/internal/allowlist"
	"github.com/cordon-dev/cordon/internal/audit"
	"github.com/cordon-dev/cordon/xds/server"
	"github.com/cordon-dev/cordon/xds/translate"
)

// Publisher makes a set of RouteConfigurations the served snapshot.
// *server.Server is one.
type Publisher interface {
	Publish(ctx context.Context, version uint64, routes []*routev3.RouteConfiguration) error
}

var _ Publisher = (*server.Server)(nil)

// Audit event types this package emits.
const (
	EventApplied  = "ALLOWLIST_APPLIED"
	EventRejected = "ALLOWLIST_REJECTED"
)

// Config configures a Reloader.
type Config struct {
	// Dir is the allowlist directory. Required.
	Dir string
	// StateDir holds the file "version", the last version published, so a
	// restart continues above it. If empty, versions are the wall clock in
	// milliseconds (and at least one more than the last), which also only
	// goes up across restarts as long as the clock does.
	StateDir string
	// Debounce is how long the watch waits for a burst of file events to
	// settle before reloading. If zero, 50ms.
	Debounce time.Duration
	// Logger, if nil, discards.
	Logger *slog.Logger
	// Metrics, if nil, are kept but registered nowhere.
	Metrics *server.Metrics
	// Audit receives one event per applied or rejected reload. If nil,
	// audit.Discard.
	Audit audit.Emitter
	// Now, if nil, is time.Now (tests pin it).
	Now func() time.Time
}

// Reloader loads, translates and publishes the allowlists.
type Reloader struct {
	cfg     Config
	pub     Publisher
	log     *slog.Logger
	metrics *server.Metrics

	mu sync.Mutex // serializes reloads and guards the following
	// version is the last version published (or persisted).
	version uint64
	// digest identifies the content of the served snapshot.
	digest []byte
	// published reports whether anything was published yet.
	published bool
}

// New returns a Reloader for cfg publishing to pub. It reads the persisted
// version; it does not load the allowlists (call Reload).
func New(cfg Config, pub Publisher) (*Reloader, error) {
	if cfg.Dir == "" {
		return nil, errors.New("reload: allowlist directory is required")
	}
	if cfg.Debounce == 0 {
		cfg.Debounce = 50 * time.Millisecond
	}
	if cfg.Audit == nil {
		cfg.Audit = audit.Discard
	}
	if cfg.Now == nil {
		cfg.Now = time.Now
	}
	r := &Reloader{cfg: cfg, pub: pub, log: cfg.Logger, metrics: cfg.Metrics}
	if r.log == nil {
		r.log = slog.New(slog.DiscardHandler)
	}
	if r.metrics == nil {
		r.metrics = server.NewMetrics(nil)
	}
	if cfg.StateDir != "" {
		v, err := readVersion(cfg.StateDir)
		if err != nil {
			return nil, err
		}
		r.version = v
	}
	return r, nil
}

// Version is the last version published, or the persisted one before the
// first Reload.
func (r *Reloader) Version() uint64 {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.version
}

// Reload loads and translates the directory and, when the result differs
// from what is served, publishes it as a new version. On any error nothing
// changes and the error is reported (log, metric, audit) and returned; for
// file problems it is an allowlist.ErrorList.
func (r *Reloader) Reload(ctx context.Context) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	start := time.Now()
	defer func() { r.metrics.ReloadDuration.Observe(time.Since(start).Seconds()) }()

	routes, err := Build(r.cfg.Dir)
	if err != nil {
		r.rejectLocked(err)
		return err
	}
	digest, err := digestOf(routes)
	if err != nil {
		r.rejectLocked(err)
		return err
	}
	if r.published && bytes.Equal(digest, r.digest) {
		r.log.Debug("allowlists unchanged", "dir", r.cfg.Dir, "version", r.version)
		return nil
	}
	next := r.version + 1
	if r.cfg.StateDir == "" {
		next = max(next, uint64(r.cfg.Now().UnixMilli()))
	} else if err := writeVersion(r.cfg.StateDir, next); err != nil {
		// Publishing a version we could not persist could make versions go
		// backwards after a restart: refuse.
		r.rejectLocked(err)
		return err
	}
	r.version = next
	if err := r.pub.Publish(ctx, next, routes); err != nil {
		r.rejectLocked(err)
		return err
	}
	r.digest, r.published = digest, true
	r.log.Info("allowlists published", "dir", r.cfg.Dir, "version", next, "jobs", len(routes),
		"duration", time.Since(start))
	r.cfg.Audit.Emit(audit.Event{
		Timestamp: r.cfg.Now().UTC(),
		EventType: EventApplied,
		EventID:   audit.NewID(),
		Actor:     audit.Actor{Type: audit.ActorService, ID: "cordon-xds"},
		Resource:  audit.Resource{Type: "ALLOWLIST", ID: r.cfg.Dir},
		Action:    "RELOAD",
		Result:    audit.ResultSuccess,
		Metadata:  map[string]any{"version": next, "jobs": len(routes)},
	})
	return nil
}

// maxAuditErrors bounds the errors copied into one audit event.
const maxAuditErrors = 100

func (r *Reloader) rejectLocked(err error) {
	var list allowlist.ErrorList
	var msgs []string
	if errors.As(err, &list) {
		for _, e := range list {
			msgs = append(msgs, e.Error())
		}
	} else {
		msgs = []string{err.Error()}
	}
	for _, m := range msgs {
		r.log.Error("allowlist edit rejected, last good snapshot keeps serving",
			"dir", r.cfg.Dir, "serving_version", r.version, "error", m)
	}
	r.metrics.ConfigErrors.Add(float64(len(msgs)))
	r.cfg.Audit.Emit(audit.Event{
		Timestamp: r.cfg.Now().UTC(),
		EventType: EventRejected,
		EventID:   audit.NewID(),
		Actor:     audit.Actor{Type: audit.ActorService, ID: "cordon-xds"},
		Resource:  audit.Resource{Type: "ALLOWLIST", ID: r.cfg.Dir},
		Action:    "RELOAD",
		Result:    audit.ResultFailure,
		Metadata: map[string]any{
			"errors":          msgs[:min(len(msgs), maxAuditErrors)],
			"error_count":     len(msgs),
			"serving_version": r.version,
		},
	})
}

// Build loads dir and translates every job, sorted by job ID. It is what
// Reload publishes and what `cordon-xds dump` prints.
func Build(dir string) ([]*routev3.RouteConfiguration, error) {
	set, err := allowlist.LoadDir(dir)
	if err != nil {
		return nil, err
	}
	ps := set.Policies()
	routes := make([]*routev3.RouteConfiguration, 0, len(ps))
	for _, p := range ps {
		rc, err := translate.ToRouteConfiguration(p)
		if err != nil {
			return nil, err
		}
		routes = append(routes, rc)
	}
	return routes, nil
}

func digestOf(routes []*routev3.RouteConfiguration) ([]byte, error) {
	h := sha256.New()
	opts := proto.MarshalOptions{Deterministic: true}
	for _, rc := range routes {
		b, err := opts.Marshal(rc)
		if err != nil {
			return nil, fmt.Errorf("digest %s: %w", rc.GetName(), err)
		}
		fmt.Fprintf(h, "%d:", len(b))
		h.Write(b)
	}
	return h.Sum(nil), nil
}

const versionFile = "version"

func readVersion(dir string) (uint64, error) {
	b, err := os.ReadFile(filepath.Join(dir, versionFile))
	if errors.Is(err, os.ErrNotExist) {
		return 0, nil
	}
	if err != nil {
		return 0, fmt.Errorf("read version state: %w", err)
	}
	v, err := strconv.ParseUint(strings.TrimSpace(string(b)), 10, 64)
	if err != nil {
		return 0, fmt.Errorf("read version state %s: %w (fix or remove the file; versions restart above what proxies hold only if it is right)", filepath.Join(dir, versionFile), err)
	}
	return v, nil
}

// writeVersion persists v durably: temp file, fsync, rename, fsync dir.
func writeVersion(dir string, v uint64) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("persist version: %w", err)
	}
	f, err := os.CreateTemp(dir, ".version-*")
	if err != nil {
		return fmt.Errorf("persist version: %w", err)
	}
	tmp := f.Name()
	defer os.Remove(tmp) // no-op after the rename
	if _, err := fmt.Fprintf(f, "%d\n", v); err != nil {
		f.Close()
		return fmt.Errorf("persist version: %w", err)
	}
	if err := f.Sync(); err != nil {
		f.Close()
		return fmt.Errorf("persist version: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("persist version: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, versionFile)); err != nil {
		return fmt.Errorf("persist version: %w", err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("persist version: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("persist version: %w", err)
	}
	return nil
}

// Watch reloads whenever the directory changes, until ctx is done. Bursts of
// events (an editor's write-temp-then-rename, a git checkout) are debounced
// into one reload. The directory itself is watched, not the files, so
// renames over a file and new files are seen. Reload errors are reported by
// Reload; Watch returns only when ctx is done or the watch itself fails.
func (r *Reloader) Watch(ctx context.Context) error {
	w, err := fsnotify.NewWatcher()
	if err != nil {
		return fmt.Errorf("watch %s: %w", r.cfg.Dir, err)
	}
	defer w.Close()
	if err := w.Add(r.cfg.Dir); err != nil {
		return fmt.Errorf("watch %s: %w", r.cfg.Dir, err)
	}
	timer := time.NewTimer(time.Hour)
	timer.Stop()
	defer timer.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case ev, ok := <-w.Events:
			if !ok {
				return fmt.Errorf("watch %s: event channel closed", r.cfg.Dir)
			}
			if ev.Op == fsnotify.Chmod {
				continue
			}
			r.log.Debug("allowlist directory changed", "name", ev.Name, "op", ev.Op.String())
			timer.Reset(r.cfg.Debounce)
		case err, ok := <-w.Errors:
			if !ok {
				return fmt.Errorf("watch %s: error channel closed", r.cfg.Dir)
			}
			// An overflow means events were lost: reload to be sure.
			r.log.Warn("allowlist watch error, reloading", "dir", r.cfg.Dir, "error", err)
			timer.Reset(r.cfg.Debounce)
		case <-timer.C:
			_ = r.Reload(ctx) // reported inside
		}
	}
}
