// Command xdsbench measures how fast an allowlist edit reaches every proxy:
// it starts the real cordon-xds binary (serve, with its SVID from a dev
// Workload API socket), connects N real ADS clients (egress-proxy/xdsclient,
// each its own mTLS connection with its own job SVID) over loopback, edits
// an allowlist file, and measures the time from the write until every
// client has applied and ACKed the new version. It prints one table with
// the latency percentiles and the control plane's CPU seconds and RSS
// (from /proc).
//
// It is a benchmark tool, not part of the test suite: run it through
// test/bench/xds/run.sh (make bench-xds).
package main

import (
	"bufio"
	"context"
	"flag"
	"fmt"
	"io"
	"log"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/cordon-dev/cordon/egress-proxy/xdsclient"
	"github.com/cordon-dev/cordon/internal/allowlist"
	"github.com/cordon-dev/cordon/test/spiffedev"
)

func main() {
	bin := flag.String("xds-bin", "bin/cordon-xds", "cordon-xds binary")
	clients := flag.Int("clients", 1000, "ADS client streams")
	orgs := flag.Int("orgs", 1, "allowlist files (orgs); clients are spread over them and each edit changes one file, so it reaches clients/orgs proxies (the default, 1, makes every edit reach every client)")
	edits := flag.Int("edits", 5, "allowlist edits to measure")
	flag.Parse()
	if err := run(*bin, *clients, *orgs, *edits); err != nil {
		log.Fatal(err)
	}
}

// applier records when the last policy was applied. The client ACKs right
// after Apply returns.
type applier struct {
	mu   sync.Mutex
	last time.Time
}

func (a *applier) Apply([]*allowlist.JobPolicy) error {
	now := time.Now()
	a.mu.Lock()
	a.last = now
	a.mu.Unlock()
	return nil
}

const markerBase = 20000

func orgFile(org, jobs, marker int) string {
	var b strings.Builder
	fmt.Fprintf(&b, "version: 1\norg: o%d\nendpoint_sets:\n  svc:\n    entries:\n      - host: api.o%d.example\n        ports: [443, %d]\n      - host: \"*.data.o%d.example\"\n        ports: [443]\njobs:\n", org, org, marker, org)
	for j := range jobs {
		fmt.Fprintf(&b, "  j%d:\n    class: platform\n    allow: [svc]\n", j)
	}
	return b.String()
}

// procStats is a process's CPU seconds (user+system) and RSS/peak RSS.
func procStats(pid int) (cpu float64, rss, hwm int64) {
	if b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid)); err == nil {
		s := string(b)
		f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
		ut, _ := strconv.ParseFloat(f[11], 64)
		st, _ := strconv.ParseFloat(f[12], 64)
		cpu = (ut + st) / 100 // USER_HZ is 100 on Linux
	}
	if f, err := os.Open(fmt.Sprintf("/proc/%d/status", pid)); err == nil {
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			k, v, _ := strings.Cut(sc.Text(), ":")
			n, _ := strconv.ParseInt(strings.TrimSuffix(strings.TrimSpace(v), " kB"), 10, 64)
			switch k {
			case "VmRSS":
				rss = n * 1024
			case "VmHWM":
				hwm = n * 1024
			}
		}
		f.Close()
	}
	return cpu, rss, hwm
}

func metric(addr, name string) float64 {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(line, name+" "); ok {
			f, _ := strconv.ParseFloat(v, 64)
			return f
		}
	}
	return -1
}

func freeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		log.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

func pct(d []time.Duration, p float64) time.Duration {
	if len(d) == 0 {
		return 0
	}
	i := int(p*float64(len(d))+0.5) - 1
	return d[min(max(i, 0), len(d)-1)]
}

func run(bin string, nClients, nOrgs, nEdits int) error {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	tmp, err := os.MkdirTemp("", "xdsbench-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)

	ca, err := spiffedev.NewCA("bench.test")
	if err != nil {
		return err
	}
	sock := filepath.Join(tmp, "agent.sock")
	ws, err := spiffedev.NewWorkloadServer(spiffedev.WorkloadConfig{CA: ca, ID: spiffeid.RequireFromString("spiffe://bench.test/cordon/xds"), TTL: time.Hour})
	if err != nil {
		return err
	}
	wln, err := spiffedev.ListenUnix(sock)
	if err != nil {
		return err
	}
	var wg sync.WaitGroup
	defer wg.Wait()
	defer cancel()
	wg.Add(1)
	go func() { defer wg.Done(); ws.Serve(ctx, wln) }()

	jobsPerOrg := (nClients + nOrgs - 1) / nOrgs
	dir := filepath.Join(tmp, "allowlists")
	os.MkdirAll(dir, 0o755)
	for o := range nOrgs {
		if err := os.WriteFile(filepath.Join(dir, fmt.Sprintf("o%d.yaml", o)), []byte(orgFile(o, jobsPerOrg, markerBase)), 0o644); err != nil {
			return err
		}
	}

	addr, maddr := freeAddr(), freeAddr()
	logf, _ := os.Create(filepath.Join(tmp, "cordon-xds.log"))
	defer logf.Close()
	cmd := exec.Command(bin, "serve", "--allowlists", dir, "--listen", addr, "--metrics", maddr,
		"--state-dir", filepath.Join(tmp, "state"), "--workload-api", "unix://"+sock)
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start %s: %w", bin, err)
	}
	defer func() {
		cmd.Process.Signal(os.Interrupt)
		done := make(chan struct{})
		go func() { cmd.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			cmd.Process.Kill()
			<-done
		}
	}()
	pid := cmd.Process.Pid
	for deadline := time.Now().Add(30 * time.Second); metric(maddr, "cordon_xds_config_version") != 1; {
		if time.Now().After(deadline) {
			b, _ := os.ReadFile(logf.Name())
			return fmt.Errorf("cordon-xds did not start:\n%s", b)
		}
		time.Sleep(50 * time.Millisecond)
	}
	cpuIdle, rssIdle, _ := procStats(pid)

	// Connect the clients.
	connectStart := time.Now()
	appliers := make([]*applier, nClients)
	cls := make([]*xdsclient.Client, nClients)
	for i := range nClients {
		id := spiffeid.RequireFromPath(ca.TrustDomain(), fmt.Sprintf("/org/o%d/job/j%d", i%nOrgs, i/nOrgs))
		svid, err := ca.MintX509SVID(id, time.Hour)
		if err != nil {
			return err
		}
		appliers[i] = &applier{}
		c, err := xdsclient.New(xdsclient.Config{Addr: addr, SVID: svid, Bundles: ca.Bundle(), MaxBackoff: time.Second}, appliers[i])
		if err != nil {
			return err
		}
		cls[i] = c
		wg.Add(1)
		go func() { defer wg.Done(); c.Run(ctx) }()
	}
	waitAll := func(cls []*xdsclient.Client, version string, timeout time.Duration) error {
		deadline := time.Now().Add(timeout)
		for {
			n := 0
			for _, c := range cls {
				if c.Version() == version {
					n++
				}
			}
			if n == len(cls) {
				return nil
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("only %d of %d clients reached %s", n, len(cls), version)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	if err := waitAll(cls, "v1", 120*time.Second); err != nil {
		return err
	}
	connectTime := time.Since(connectStart)
	cpuConnected, rssConnected, _ := procStats(pid)
	streams := metric(maddr, "cordon_xds_streams")
	// Let the connect storm settle (the v1 ACKs, TLS handshakes' garbage)
	// before timing edits: an edit does not land in the second 1,000
	// proxies connect.
	time.Sleep(2 * time.Second)
	cpuConnected, rssConnected, _ = procStats(pid)

	// Edit, measure, repeat. Each edit rewrites one org's file (rename over,
	// as editors and git do) with a new marker port.
	var all []time.Duration
	type editResult struct {
		p50, p99, max, serverAllACKed time.Duration
		cpu                           float64
	}
	var results []editResult
	pushed := 0
	for e := 1; e <= nEdits; e++ {
		marker := markerBase + e
		version := "v" + strconv.Itoa(e+1)
		acksBefore := metric(maddr, "cordon_xds_acks_total")
		cpuBefore, _, _ := procStats(pid)
		path := filepath.Join(dir, fmt.Sprintf("o%d.yaml", e%nOrgs))
		tmpf := filepath.Join(dir, ".edit.tmp")
		if err := os.WriteFile(tmpf, []byte(orgFile(e%nOrgs, jobsPerOrg, marker)), 0o644); err != nil {
			return err
		}
		t0 := time.Now()
		if err := os.Rename(tmpf, path); err != nil {
			return err
		}
		// Only the edited org's proxies get a push (the others' policies
		// did not change). The server counts the ACKs: poll until all
		// arrived.
		var affected []*xdsclient.Client
		var affectedA []*applier
		for i := range cls {
			if i%nOrgs == e%nOrgs {
				affected, affectedA = append(affected, cls[i]), append(affectedA, appliers[i])
			}
		}
		var serverAll time.Duration
		for deadline := time.Now().Add(60 * time.Second); ; {
			if metric(maddr, "cordon_xds_acks_total")-acksBefore >= float64(len(affected)) {
				serverAll = time.Since(t0)
				break
			}
			if time.Now().After(deadline) {
				return fmt.Errorf("edit %d: server saw %v of %d ACKs", e, metric(maddr, "cordon_xds_acks_total")-acksBefore, len(affected))
			}
			time.Sleep(20 * time.Millisecond)
		}
		if err := waitAll(affected, version, 10*time.Second); err != nil {
			return err
		}
		cpuAfter, _, _ := procStats(pid)
		var lat []time.Duration
		for _, a := range affectedA {
			a.mu.Lock()
			lat = append(lat, a.last.Sub(t0))
			a.mu.Unlock()
		}
		pushed = len(affected)
		slices.Sort(lat)
		all = append(all, lat...)
		results = append(results, editResult{pct(lat, .5), pct(lat, .99), pct(lat, 1), serverAll, cpuAfter - cpuBefore})
		time.Sleep(300 * time.Millisecond)
	}
	cpuEnd, rssEnd, hwm := procStats(pid)
	slices.Sort(all)

	fmt.Printf("cordon-xds push benchmark: %d ADS clients (one mTLS connection each, loopback), %d allowlist files, %d edits\n\n", nClients, nOrgs, nEdits)
	fmt.Printf("%-34s %12s\n", "connect+first policy, all clients", connectTime.Round(time.Millisecond))
	fmt.Printf("%-34s %12.0f\n", "streams (server gauge)", streams)
	fmt.Printf("%-34s %12d\n", "proxies each edit reaches", pushed)
	fmt.Println()
	fmt.Printf("%-6s %10s %10s %10s %22s %14s\n", "edit", "p50", "p99", "max", "all ACKs at server", "xds CPU (s)")
	for i, r := range results {
		fmt.Printf("%-6d %10s %10s %10s %22s %14.2f\n", i+1, r.p50.Round(time.Millisecond), r.p99.Round(time.Millisecond),
			r.max.Round(time.Millisecond), r.serverAllACKed.Round(time.Millisecond), r.cpu)
	}
	worst := time.Duration(0)
	for _, r := range results {
		worst = max(worst, r.serverAllACKed)
	}
	fmt.Printf("%-6s %10s %10s %10s %22s\n", "all", pct(all, .5).Round(time.Millisecond), pct(all, .99).Round(time.Millisecond),
		pct(all, 1).Round(time.Millisecond), worst.Round(time.Millisecond))
	fmt.Println("(p50/p99/max: file write -> each reached client applied the new version and sent its ACK;")
	fmt.Println(" all ACKs at server: file write -> cordon_xds_acks_total grew by every reached client, polled every 20ms)")
	fmt.Println()
	fmt.Printf("%-34s %12s\n", "control plane", "")
	fmt.Printf("  %-32s %12.2f\n", "CPU s, startup (1 load)", cpuIdle)
	fmt.Printf("  %-32s %12.2f\n", "CPU s, connecting clients", cpuConnected-cpuIdle)
	fmt.Printf("  %-32s %12.2f\n", "CPU s, all edits", cpuEnd-cpuConnected)
	fmt.Printf("  %-32s %9.1f MiB\n", "RSS idle (no clients)", float64(rssIdle)/(1<<20))
	fmt.Printf("  %-32s %9.1f MiB\n", "RSS with clients", float64(rssConnected)/(1<<20))
	fmt.Printf("  %-32s %9.1f MiB\n", "RSS end", float64(rssEnd)/(1<<20))
	fmt.Printf("  %-32s %9.1f MiB\n", "RSS peak (VmHWM)", float64(hwm)/(1<<20))
	var nacks = metric(maddr, "cordon_xds_nacks_total")
	fmt.Printf("  %-32s %12.0f\n", "NACKs", nacks)
	if n := metric(maddr, "cordon_xds_reload_seconds_count"); n > 0 {
		fmt.Printf("  %-32s %9.1f ms\n", "mean reload (load+translate+publish)", 1000*metric(maddr, "cordon_xds_reload_seconds_sum")/n)
	}
	p99 := pct(all, .99)
	verdict := "PASS"
	if p99 > time.Second || worst > time.Second {
		verdict = "MISS"
	}
	fmt.Printf("\ntarget p99 <= 1s from write to last ACK: %s (p99 %s, slowest edit's last ACK %s)\n", verdict, p99.Round(time.Millisecond), worst.Round(time.Millisecond))
	return nil
}
