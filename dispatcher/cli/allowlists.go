package cli

import (
	"context"
	"log/slog"
	"os"
	"os/signal"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/cordon-dev/cordon/internal/allowlist"
)

// allowlists holds the allowlist set in force and reloads it from a
// directory. A reload that fails keeps the last good set: a typo in one
// file must not turn every webhook check and allowlist view off.
type allowlists struct {
	dir string
	log *slog.Logger
	cur atomic.Pointer[allowlist.Set]
}

func loadAllowlists(dir string, log *slog.Logger) (*allowlists, error) {
	a := &allowlists{dir: dir, log: log}
	if dir == "" {
		a.cur.Store(&allowlist.Set{})
		return a, nil
	}
	set, err := allowlist.LoadDir(dir)
	if err != nil {
		return nil, err
	}
	a.cur.Store(set)
	log.Info("allowlists loaded", "dir", dir, "orgs", len(set.Files))
	return a, nil
}

// Set is the set in force (never nil).
func (a *allowlists) Set() *allowlist.Set { return a.cur.Load() }

// File is the org's file, or nil.
func (a *allowlists) File(org string) *allowlist.File { return a.cur.Load().Files[org] }

// reload re-reads the directory; on error it keeps the last good set.
func (a *allowlists) reload() {
	set, err := allowlist.LoadDir(a.dir)
	if err != nil {
		a.log.Error("allowlists not reloaded; keeping the last good set", "dir", a.dir, "error", err.Error())
		return
	}
	a.cur.Store(set)
	a.log.Info("allowlists reloaded", "dir", a.dir, "orgs", len(set.Files))
}

// run reloads every interval and on SIGHUP until ctx ends. With no
// directory it only waits.
func (a *allowlists) run(ctx context.Context, every time.Duration) error {
	if a.dir == "" {
		<-ctx.Done()
		return nil
	}
	hup := make(chan os.Signal, 1)
	signal.Notify(hup, syscall.SIGHUP)
	defer signal.Stop(hup)
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-t.C:
			a.reload()
		case <-hup:
			a.reload()
		}
	}
}
