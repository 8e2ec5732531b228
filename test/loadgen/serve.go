package loadgen

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"syscall"
)

// ServeConfig configures Serve: the upstream and its DNS server as one
// long-running process that the proxies under test point at.
type ServeConfig struct {
	// HTTPListen is the upstream's address. If empty, "127.0.0.1:0".
	HTTPListen string
	// DNSListen is the DNS server's address. If empty, the upstream's IP
	// with a random port.
	DNSListen string
	// Name is the host name that resolves to the upstream. Required.
	Name string
	// SmallSize and BigSize are as in UpstreamConfig.
	SmallSize int
	BigSize   int64
	// EnvFile, if set, receives shell assignments once both servers are up:
	// UPSTREAM_IP, UPSTREAM_PORT, UPSTREAM_ADDR and DNS_ADDR. It is written
	// to a temporary name and renamed, so a reader that sees it sees all.
	EnvFile string
	// Logger receives lifecycle lines. If nil, logs are discarded.
	Logger *slog.Logger
}

// Serve runs the upstream and the DNS server until ctx is done.
func Serve(ctx context.Context, cfg ServeConfig) error {
	if cfg.Logger == nil {
		cfg.Logger = slog.New(slog.DiscardHandler)
	}
	up, err := StartUpstream(UpstreamConfig{Listen: cfg.HTTPListen, SmallSize: cfg.SmallSize, BigSize: cfg.BigSize, Logger: cfg.Logger})
	if err != nil {
		return err
	}
	defer up.Close()
	if cfg.DNSListen == "" {
		cfg.DNSListen = up.Addr().Addr().String() + ":0"
	}
	dnsSrv, err := StartDNS(DNSConfig{Listen: cfg.DNSListen, Name: cfg.Name, Addr: up.Addr().Addr(), Logger: cfg.Logger})
	if err != nil {
		return err
	}
	defer dnsSrv.Close()
	if cfg.EnvFile != "" {
		env := fmt.Sprintf("UPSTREAM_IP=%s\nUPSTREAM_PORT=%d\nUPSTREAM_ADDR=%s\nDNS_ADDR=%s\n",
			up.Addr().Addr(), up.Addr().Port(), up.Addr(), dnsSrv.Addr())
		if err := writeEnvFile(cfg.EnvFile, env); err != nil {
			return err
		}
	}
	cfg.Logger.Info("upstream serving", "http", up.Addr().String(), "dns", dnsSrv.Addr().String(), "name", cfg.Name)
	<-ctx.Done()
	return nil
}

// writeEnvFile writes shell assignments to path all at once (a temporary
// file, then rename): the script waiting for the file never reads half.
func writeEnvFile(path, env string) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(env), 0o644); err != nil {
		return fmt.Errorf("write env file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("write env file: %w", err)
	}
	return nil
}

// RaiseFileLimit lifts RLIMIT_NOFILE so the tool can hold its idle tunnels:
// the hard limit to at least want when the process may (root), and the soft
// limit to the hard one. It returns the limit in force afterwards.
func RaiseFileLimit(want uint64) (uint64, error) {
	var lim syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("get open-file limit: %w", err)
	}
	if lim.Max < want {
		raised := syscall.Rlimit{Cur: want, Max: want}
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &raised); err == nil {
			return want, nil
		}
	}
	if lim.Cur < lim.Max {
		lim.Cur = lim.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &lim); err != nil {
			return 0, fmt.Errorf("raise open-file limit to %d: %w", lim.Max, err)
		}
	}
	return lim.Cur, nil
}

// WriteResult stores r as JSON at path.
func WriteResult(path string, r Result) error {
	b, err := json.MarshalIndent(r, "", "  ")
	if err != nil {
		return fmt.Errorf("encode result %s: %w", r.Name, err)
	}
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write result: %w", err)
	}
	return nil
}

// ReadResults loads results written by WriteResult, in the order given.
func ReadResults(paths []string) ([]Result, error) {
	var out []Result
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			return nil, fmt.Errorf("read result: %w", err)
		}
		var r Result
		if err := json.Unmarshal(b, &r); err != nil {
			return nil, fmt.Errorf("decode result %s: %w", p, err)
		}
		if r.Name == "" {
			return nil, fmt.Errorf("decode result %s: %w", p, errors.New("no name"))
		}
		out = append(out, r)
	}
	return out, nil
}
