package bpf

import (
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"sync"

	"github.com/cilium/ebpf"
	"github.com/cilium/ebpf/features"
	"github.com/cilium/ebpf/link"
	"golang.org/x/sys/unix"
)

// Enforcement levels a sidecar records in usage reports and audit events
// (usage.Report.Enforcement).
const (
	// LevelCgroupEBPF: Enforce succeeded, the job's sockets are confined by
	// the cgroup programs of this package.
	LevelCgroupEBPF = "cgroup-ebpf"
	// LevelNetworkOnly: the kernel or the sandbox does not let us load them
	// (Fargate); only the network confines the job.
	LevelNetworkOnly = "network-only"
)

// ErrNotSupported matches (errors.Is) every error that means "this host
// cannot do cgroup eBPF enforcement": no CAP_BPF/CAP_SYS_ADMIN, no cgroup
// v2, or a kernel without the program or map types. The error wraps the
// cause. A sidecar that gets it runs at LevelNetworkOnly.
var ErrNotSupported = errors.New("cgroup eBPF enforcement not supported on this host")

// ErrClosed is returned by the methods of a closed Enforcement.
var ErrClosed = errors.New("bpf enforcement already closed")

// notSupported wraps cause so that it matches both ErrNotSupported and cause.
func notSupported(op string, cause error) error {
	return fmt.Errorf("%s: %w (needs root or CAP_BPF+CAP_NET_ADMIN, cgroup v2 and Linux 5.7+; expected on Fargate, run at %s): %w",
		op, ErrNotSupported, LevelNetworkOnly, cause)
}

// Probe reports whether this host can load and attach the programs, without
// attaching anything. It returns nil or an error matching ErrNotSupported.
// Enforce runs the same checks; call Probe to decide the enforcement level
// before there is a cgroup to attach to.
func Probe() error {
	for _, pt := range []ebpf.ProgramType{ebpf.CGroupSockAddr, ebpf.CGroupSKB} {
		if err := features.HaveProgramType(pt); err != nil {
			return notSupported(fmt.Sprintf("probe program type %s", pt), err)
		}
	}
	for _, mt := range []ebpf.MapType{ebpf.LPMTrie, ebpf.ArrayOfMaps, ebpf.PerCPUArray} {
		if err := features.HaveMapType(mt); err != nil {
			return notSupported(fmt.Sprintf("probe map type %s", mt), err)
		}
	}
	return nil
}

var _ io.Closer = (*Enforcement)(nil)

// Enforcement is the set of programs attached to one job cgroup. Close it
// when the job is done; while it is open the programs stay attached.
type Enforcement struct {
	cgroupPath string
	innerSpec  *ebpf.MapSpec

	mu     sync.Mutex // guards the following
	objs   *enforceObjects
	links  []link.Link
	closed bool
}

// attachments lists which program goes on which cgroup hook.
func (o *enforceObjects) attachments() []struct {
	prog   *ebpf.Program
	attach ebpf.AttachType
} {
	return []struct {
		prog   *ebpf.Program
		attach ebpf.AttachType
	}{
		{o.Connect4, ebpf.AttachCGroupInet4Connect},
		{o.Connect6, ebpf.AttachCGroupInet6Connect},
		{o.Sendmsg4, ebpf.AttachCGroupUDP4Sendmsg},
		{o.Sendmsg6, ebpf.AttachCGroupUDP6Sendmsg},
		{o.Egress, ebpf.AttachCGroupInetEgress},
	}
}

// Enforce loads the programs, installs p and attaches the programs to the
// cgroup v2 directory cgroupPath, in that order, so the hooks never run
// without a policy. On a host that cannot do it, the error matches
// ErrNotSupported; any other error is a real failure (bad policy, missing
// directory, verifier rejection) and nothing stays attached.
func Enforce(cgroupPath string, p Policy) (*Enforcement, error) {
	if err := p.Validate(); err != nil {
		return nil, fmt.Errorf("enforce on %s: %w", cgroupPath, err)
	}
	if err := checkCgroup2(cgroupPath); err != nil {
		return nil, fmt.Errorf("enforce on %s: %w", cgroupPath, err)
	}
	if err := checkNotOwnCgroup(cgroupPath); err != nil {
		return nil, fmt.Errorf("enforce on %s: %w", cgroupPath, err)
	}
	if err := Probe(); err != nil {
		return nil, fmt.Errorf("enforce on %s: %w", cgroupPath, err)
	}
	spec, err := loadEnforce()
	if err != nil {
		return nil, fmt.Errorf("enforce on %s: %w", cgroupPath, err)
	}
	objs := &enforceObjects{}
	if err := spec.LoadAndAssign(objs, nil); err != nil {
		if errors.Is(err, unix.EPERM) || errors.Is(err, ebpf.ErrNotSupported) {
			return nil, notSupported("enforce on "+cgroupPath+": load programs", err)
		}
		return nil, fmt.Errorf("enforce on %s: load programs: %w", cgroupPath, err)
	}
	e := &Enforcement{
		cgroupPath: cgroupPath,
		innerSpec:  spec.Maps[enforceMapPolicy].InnerMap,
		objs:       objs,
	}
	if err := e.installLocked(p); err != nil {
		e.Close()
		return nil, fmt.Errorf("enforce on %s: %w", cgroupPath, err)
	}
	for _, a := range objs.attachments() {
		l, err := link.AttachCgroup(link.CgroupOptions{Path: cgroupPath, Attach: a.attach, Program: a.prog})
		if err != nil {
			e.Close()
			if errors.Is(err, unix.EPERM) || errors.Is(err, ebpf.ErrNotSupported) {
				return nil, notSupported(fmt.Sprintf("enforce on %s: attach %s", cgroupPath, a.attach), err)
			}
			return nil, fmt.Errorf("enforce on %s: attach %s: %w", cgroupPath, a.attach, err)
		}
		e.links = append(e.links, l)
	}
	return e, nil
}

// CgroupPath is the cgroup the programs are attached to.
func (e *Enforcement) CgroupPath() string { return e.cgroupPath }

// Update replaces the policy. It is atomic (see the package documentation):
// when it returns nil, the next connect(), sendmsg() and packet are judged
// by p, including packets of connections opened under the old policy. On
// error the old policy stays in force.
func (e *Enforcement) Update(p Policy) error {
	if err := p.Validate(); err != nil {
		return fmt.Errorf("update policy on %s: %w", e.cgroupPath, err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return fmt.Errorf("update policy on %s: %w", e.cgroupPath, ErrClosed)
	}
	if err := e.installLocked(p); err != nil {
		return fmt.Errorf("update policy on %s: %w", e.cgroupPath, err)
	}
	return nil
}

// installLocked builds a new trie for p and swaps it into the outer map.
// The outer map keeps its own reference to the trie; ours is dropped, and
// the kernel frees the previous trie once no program still uses it.
func (e *Enforcement) installLocked(p Policy) error {
	entries, err := p.entries()
	if err != nil {
		return fmt.Errorf("build policy map: %w (at most %d entries)", err, policyTrieSize)
	}
	trie, err := ebpf.NewMap(e.innerSpec)
	if err != nil {
		return fmt.Errorf("create policy map: %w", err)
	}
	defer trie.Close()
	for k, v := range entries {
		if err := trie.Put(k, v); err != nil {
			return fmt.Errorf("fill policy map: %w", err)
		}
	}
	if err := e.objs.Policy.Put(uint32(0), trie); err != nil {
		return fmt.Errorf("swap policy map: %w", err)
	}
	return nil
}

// Counters are cumulative since Enforce, over every CPU, for the cgroup and
// the cgroups below it.
type Counters struct {
	// Packets and Bytes count IP packets the job's sockets sent that the
	// policy allowed. Bytes is the L3 length (IP header, transport header,
	// payload). A GSO packet (one send the kernel later splits into several
	// segments) counts once, with all its payload.
	Packets uint64
	Bytes   uint64
	// PayloadBytes is the TCP and UDP payload within Bytes: exactly what the
	// job wrote to its sockets, plus any TCP retransmissions.
	PayloadBytes uint64
	// DroppedPackets and DroppedBytes count packets the egress check
	// dropped (raw sockets, revoked connections). Bytes as in Bytes.
	DroppedPackets uint64
	DroppedBytes   uint64
	// DeniedConnects counts connect() calls refused with EPERM.
	DeniedConnects uint64
	// DeniedSendmsgs counts UDP sendmsg() calls refused with EPERM.
	DeniedSendmsgs uint64
}

// Counters sums the per-CPU counters.
func (e *Enforcement) Counters() (Counters, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return Counters{}, fmt.Errorf("read counters of %s: %w", e.cgroupPath, ErrClosed)
	}
	var perCPU []enforceCounters
	if err := e.objs.Stats.Lookup(uint32(0), &perCPU); err != nil {
		return Counters{}, fmt.Errorf("read counters of %s: %w", e.cgroupPath, err)
	}
	var c Counters
	for _, v := range perCPU {
		c.Packets += v.TxPackets
		c.Bytes += v.TxBytes
		c.PayloadBytes += v.TxPayloadBytes
		c.DroppedPackets += v.DropPackets
		c.DroppedBytes += v.DropBytes
		c.DeniedConnects += v.DeniedConnects
		c.DeniedSendmsgs += v.DeniedSendmsgs
	}
	return c, nil
}

// Close detaches every program from the cgroup and closes every program,
// link and map. It is idempotent; after it, the cgroup behaves as if
// Enforce had never run.
func (e *Enforcement) Close() error {
	e.mu.Lock()
	defer e.mu.Unlock()
	if e.closed {
		return nil
	}
	e.closed = true
	var errs []error
	for _, l := range e.links {
		if err := l.Close(); err != nil {
			errs = append(errs, fmt.Errorf("detach from %s: %w", e.cgroupPath, err))
		}
	}
	e.links = nil
	// Close every object even if one fails (enforceObjects.Close stops at
	// the first error).
	for _, c := range []interface{ Close() error }{
		e.objs.Connect4, e.objs.Connect6, e.objs.Sendmsg4, e.objs.Sendmsg6, e.objs.Egress,
		e.objs.Policy, e.objs.Stats,
	} {
		if err := c.Close(); err != nil {
			errs = append(errs, fmt.Errorf("close bpf object of %s: %w", e.cgroupPath, err))
		}
	}
	return errors.Join(errs...)
}

// checkNotOwnCgroup refuses a cgroup that holds the calling process: the
// programs would confine the sidecar itself (its proxy could no longer reach
// the allowed hosts), and on the root cgroup every process on the host. The
// job belongs in a cgroup of its own, below the caller's.
func checkNotOwnCgroup(path string) error {
	root, err := FindCgroup2()
	if err != nil {
		return fmt.Errorf("find the caller's cgroup: %w", err)
	}
	b, err := os.ReadFile("/proc/self/cgroup")
	if err != nil {
		return fmt.Errorf("find the caller's cgroup: %w", err)
	}
	own := ""
	for _, line := range strings.Split(string(b), "\n") {
		if rest, ok := strings.CutPrefix(line, "0::"); ok {
			own = filepath.Join(root, rest)
		}
	}
	if own == "" {
		return fmt.Errorf("find the caller's cgroup: no cgroup v2 line in /proc/self/cgroup")
	}
	var target unix.Stat_t
	if err := unix.Stat(path, &target); err != nil {
		return fmt.Errorf("stat %s: %w", path, err)
	}
	for dir := own; ; dir = filepath.Dir(dir) {
		var st unix.Stat_t
		if err := unix.Stat(dir, &st); err == nil && st.Dev == target.Dev && st.Ino == target.Ino {
			return fmt.Errorf("cgroup %s contains this process (in %s); attach to a job cgroup of its own (NewJobCgroup) instead", path, own)
		}
		if dir == root || dir == filepath.Dir(dir) {
			return nil
		}
	}
}

// checkCgroup2 returns nil if path is a directory of a cgroup v2 hierarchy.
func checkCgroup2(path string) error {
	var st unix.Statfs_t
	if err := unix.Statfs(path, &st); err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("cgroup directory %s: %w", path, err)
		}
		return fmt.Errorf("statfs %s: %w", path, err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		return notSupported("check cgroup", fmt.Errorf("%s is not on a cgroup v2 filesystem (fs magic %#x); mount one with MountCgroup2", path, st.Type))
	}
	return nil
}
