// Package confine is how `cordon-sidecar run` confines its job beyond the
// env it gets (issue 7, "Use from the sidecar"): where the host lets us load
// eBPF (EC2 launch type, our own machines) the job starts inside a cgroup
// v2 of its own with bpf/'s connect and sendmsg hooks attached, so it can
// reach nothing but its proxy, its DNS resolver, the allowed CIDRs and the
// agent's loopback endpoints it is given (each one address:port), however
// it ignores HTTP_PROXY; on Fargate (no eBPF) the job runs network-only and the
// network (no NAT, the gateway) confines it. Either way the job starts
// with no_new_privs and without CAP_NET_RAW.
//
// What root in the job means: the job runs as the container's uid. If that
// is root it keeps root's other capabilities (a container's default set),
// so it could for example move itself out of its cgroup if the cgroup
// filesystem is writable in its container, or detach programs with
// CAP_BPF/CAP_SYS_ADMIN where the container has them: eBPF confinement
// holds against a job that is not root, or root in a container without
// CAP_SYS_ADMIN, CAP_BPF and a writable cgroupfs (the defaults of Docker and
// ECS). What it always loses is CAP_NET_RAW (raw and packet sockets,
// which do not pass the connect hooks) and the ability to gain privileges
// through setuid or file-capability binaries.
//
// It is not the eBPF programs (bpf/) nor the job wrapper (sidecar/jobrun).
package confine

import (
	"bufio"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"slices"
	"strings"
	"syscall"

	"github.com/google/uuid"

	"github.com/cordon-dev/cordon/bpf"
	"github.com/cordon-dev/cordon/sidecar/jobrun"
)

// Modes of --enforce.
const (
	ModeAuto    = "auto"    // eBPF where the host allows it, else network-only
	ModeRequire = "require" // refuse to start the job without eBPF
	ModeOff     = "off"     // never eBPF (network-only)
)

// DefaultMountDir is where a cgroup2 hierarchy is mounted when the host
// (or container) has none.
const DefaultMountDir = "/run/cordon/cgroup2"

// Config configures the confinement.
type Config struct {
	// Mode is ModeAuto, ModeRequire or ModeOff. If empty, ModeAuto.
	Mode string
	// CgroupParent is the cgroup v2 directory the job's cgroup is made
	// in. If empty, the root of the mounted cgroup2 hierarchy (mounted at
	// DefaultMountDir if there is none).
	CgroupParent string
	// DNS is the one resolver the job may send DNS to. If invalid, the
	// first nameserver of ResolvConf, port 53.
	DNS netip.AddrPort
	// ResolvConf is read for the resolver. If empty, /etc/resolv.conf.
	ResolvConf string
	// AllowCIDRs are networks the job may reach directly (VPC endpoints).
	// If nil, none.
	AllowCIDRs []netip.Prefix
	// Logger. If nil, discarded.
	Logger *slog.Logger
}

// Validate checks the mode.
func (c *Config) Validate() error {
	switch c.Mode {
	case "", ModeAuto, ModeRequire, ModeOff:
		return nil
	}
	return fmt.Errorf("--enforce %q: want auto, require or off", c.Mode)
}

// Confiner implements jobrun.Confiner.
type Confiner struct {
	cfg       Config
	log       *slog.Logger
	endpoints []netip.AddrPort // from AllowLoopbackEndpoint
	level     string
	cg        *bpf.JobCgroup   // nil: network-only
	enf       *bpf.Enforcement // nil: network-only
}

var _ jobrun.Confiner = (*Confiner)(nil)

// New checks cfg; nothing is set up until Setup.
func New(cfg Config) (*Confiner, error) {
	if err := cfg.Validate(); err != nil {
		return nil, err
	}
	if cfg.Mode == "" {
		cfg.Mode = ModeAuto
	}
	log := cfg.Logger
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	return &Confiner{cfg: cfg, log: log, level: bpf.LevelNetworkOnly}, nil
}

// AllowLoopbackEndpoint lets the job reach addr directly: the agent's
// scoped-credentials endpoint on loopback (sidecar/credserver), which the
// SDKs call without the proxy. It must be a loopback address with a port
// and is called before Setup; allowing the same endpoint again changes
// nothing. Only that TCP port is allowed (bpf.Policy.AllowEndpoints), not
// the whole address: the loopback is shared with the agent's other
// listeners (its health endpoint, by default 127.0.0.1:9902) and, in a
// task, with every container of the task's network namespace.
func (c *Confiner) AllowLoopbackEndpoint(addr netip.AddrPort) error {
	a := addr.Addr().Unmap()
	switch {
	case !a.IsLoopback():
		return fmt.Errorf("confine: %s is not a loopback address; only the agent's loopback endpoints are allowed directly", addr)
	case addr.Port() == 0:
		return fmt.Errorf("confine: loopback endpoint %s has no port; give the port the agent listens on", addr)
	}
	ep := netip.AddrPortFrom(a, addr.Port())
	if !slices.Contains(c.endpoints, ep) {
		c.endpoints = append(c.endpoints, ep)
	}
	return nil
}

// Level is the enforcement level: bpf.LevelCgroupEBPF once Setup attached
// the programs, else bpf.LevelNetworkOnly.
func (c *Confiner) Level() string { return c.level }

// Setup makes the job's cgroup and attaches the programs with the proxy
// at proxyURL (an IP literal and port) as the only TCP destination. Where
// the host cannot load them it logs why once and stays network-only,
// unless the mode is require. Any other failure is an error: the job must
// not start half-confined.
func (c *Confiner) Setup(proxyURL string) error {
	if c.cfg.Mode == ModeOff {
		c.log.Info("eBPF enforcement off (--enforce=off): the job is confined by the network only")
		return nil
	}
	proxy, err := proxyAddr(proxyURL)
	if err != nil {
		return err
	}
	dns := c.cfg.DNS
	if !dns.IsValid() {
		if dns, err = resolver(c.cfg.ResolvConf); err != nil {
			return err
		}
	}
	// Enforce itself finds out whether the host can load the programs
	// (bpf.Probe's checks, without loading them twice: the job's start
	// waits for this).
	parent := c.cfg.CgroupParent
	if parent == "" {
		parent, err = bpf.FindCgroup2()
		if errors.Is(err, bpf.ErrNoCgroup2) {
			if err = bpf.Probe(); err == nil {
				parent, err = DefaultMountDir, bpf.MountCgroup2(DefaultMountDir)
			}
		}
		if err != nil {
			return c.unsupported(fmt.Errorf("job cgroup: %w (pass --cgroup-parent DIR, or --enforce=off)", err))
		}
	}
	cg, err := bpf.NewJobCgroup(parent, "cordon-job-"+uuid.Must(uuid.NewV7()).String())
	if err != nil {
		return c.unsupported(fmt.Errorf("job cgroup: %w", err))
	}
	enf, err := bpf.Enforce(cg.Path(), c.policy(proxy, dns))
	if err != nil {
		cg.Remove()
		return c.unsupported(fmt.Errorf("confine job: %w", err))
	}
	c.cg, c.enf, c.level = cg, enf, bpf.LevelCgroupEBPF
	c.log.Debug("job confined", "cgroup", cg.Path(), "proxy", proxy.String(), "dns", dns.String(), "endpoints", len(c.endpoints))
	return nil
}

// policy is what the job's cgroup may reach.
func (c *Confiner) policy(proxy, dns netip.AddrPort) bpf.Policy {
	return bpf.Policy{Proxy: proxy, DNS: dns, AllowCIDRs: c.cfg.AllowCIDRs, AllowEndpoints: c.endpoints}
}

// unsupported returns nil, having logged why, when err means the host
// cannot do eBPF and the mode allows network-only; else err.
func (c *Confiner) unsupported(err error) error {
	// A wrapper without the privileges (not root, a read-only cgroupfs)
	// is the same as a host without eBPF.
	if !errors.Is(err, bpf.ErrNotSupported) && !errors.Is(err, fs.ErrPermission) && !errors.Is(err, syscall.EROFS) {
		return err
	}
	if c.cfg.Mode == ModeRequire {
		return fmt.Errorf("--enforce=require: %w", err)
	}
	c.log.Warn("eBPF enforcement not available here, running network-only", "reason", err.Error())
	return nil
}

// Apply makes cmd start inside the job cgroup (if any) and takes
// CAP_NET_RAW and privilege gain away from every child of this process.
func (c *Confiner) Apply(cmd *exec.Cmd) error {
	if err := restrictChildren(); err != nil {
		if c.cfg.Mode == ModeRequire || c.cg != nil {
			return fmt.Errorf("restrict the job's privileges: %w", err)
		}
		c.log.Warn("could not restrict the job's privileges", "err", err.Error())
	}
	if c.cg != nil {
		c.cg.Apply(cmd)
	}
	return nil
}

// Finish records the level and the kernel's counters in res, detaches the
// programs and removes the cgroup (killing anything the job left in it).
// It is idempotent.
func (c *Confiner) Finish(res *jobrun.Result) {
	res.Enforcement = c.level
	if c.enf != nil {
		if n, err := c.enf.Counters(); err == nil {
			res.KernelEgressBytes, res.DeniedConnects = n.Bytes, n.DeniedConnects+n.DeniedSendmsgs
		}
		if err := c.enf.Close(); err != nil {
			c.log.Warn("detach eBPF programs", "err", err.Error())
		}
		c.enf = nil
	}
	if c.cg != nil {
		if err := c.cg.Remove(); err != nil {
			c.log.Warn("remove job cgroup", "err", err.Error())
		}
		c.cg = nil
	}
}

// proxyAddr is the proxy URL's address; it must be an IP literal, since
// the hooks compare addresses.
func proxyAddr(proxyURL string) (netip.AddrPort, error) {
	u, err := url.Parse(proxyURL)
	if err != nil || u.Host == "" {
		return netip.AddrPort{}, fmt.Errorf("proxy URL %q: want http://IP:PORT", proxyURL)
	}
	host, port := u.Hostname(), u.Port()
	if port == "" {
		port = "80"
	}
	ap, err := netip.ParseAddrPort(net.JoinHostPort(host, port))
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("proxy URL %q: eBPF enforcement needs an IP address and port, not a name", proxyURL)
	}
	return netip.AddrPortFrom(ap.Addr().Unmap(), ap.Port()), nil
}

// resolver is the first nameserver of a resolv.conf, port 53.
func resolver(path string) (netip.AddrPort, error) {
	if path == "" {
		path = "/etc/resolv.conf"
	}
	f, err := os.Open(path)
	if err != nil {
		return netip.AddrPort{}, fmt.Errorf("find the DNS resolver: %w (pass --dns IP:PORT)", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		if len(fields) >= 2 && fields[0] == "nameserver" {
			a, err := netip.ParseAddr(fields[1])
			if err != nil || a.Zone() != "" {
				continue // a scoped IPv6 address the hooks cannot match
			}
			return netip.AddrPortFrom(a.Unmap(), 53), nil
		}
	}
	return netip.AddrPort{}, fmt.Errorf("find the DNS resolver: no nameserver in %s (pass --dns IP:PORT)", path)
}
