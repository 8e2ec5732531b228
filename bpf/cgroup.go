package bpf

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"golang.org/x/sys/unix"
)

// ErrNoCgroup2 is returned by FindCgroup2 when no cgroup v2 hierarchy is
// mounted in this mount namespace. MountCgroup2 can mount one.
var ErrNoCgroup2 = errors.New("no cgroup2 filesystem mounted")

// FindCgroup2 returns the mount point of a cgroup v2 hierarchy, read from
// /proc/self/mountinfo (for example /sys/fs/cgroup on a pure v2 host or
// /sys/fs/cgroup/unified on a hybrid one).
func FindCgroup2() (string, error) {
	f, err := os.Open("/proc/self/mountinfo")
	if err != nil {
		return "", fmt.Errorf("find cgroup2 mount: %w", err)
	}
	defer f.Close()
	mp, err := parseMountinfo(f)
	if err != nil {
		return "", fmt.Errorf("find cgroup2 mount in /proc/self/mountinfo: %w", err)
	}
	return mp, nil
}

// parseMountinfo returns the mount point of the first cgroup2 mount in a
// proc(5) mountinfo listing. A line reads
//
//	36 35 98:0 /mnt1 /mnt2 rw,noatime master:1 - ext3 /dev/root rw,errors=continue
//
// with zero or more optional fields before the "-" separator; the fields
// after it are filesystem type, source and super options. Mount points
// escape space, tab, newline and backslash as octal (\040).
func parseMountinfo(r io.Reader) (string, error) {
	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 4096), 1<<20)
	for sc.Scan() {
		fields := strings.Fields(sc.Text())
		sep := -1
		for i := 6; i < len(fields); i++ {
			if fields[i] == "-" {
				sep = i
				break
			}
		}
		if sep < 0 || sep+1 >= len(fields) || fields[sep+1] != "cgroup2" {
			continue
		}
		mp, err := unescapeMountinfo(fields[4])
		if err != nil || !filepath.IsAbs(mp) {
			continue
		}
		return filepath.Clean(mp), nil
	}
	if err := sc.Err(); err != nil {
		return "", fmt.Errorf("read: %w", err)
	}
	return "", ErrNoCgroup2
}

// unescapeMountinfo undoes the kernel's octal escaping (\ooo) of a path.
func unescapeMountinfo(s string) (string, error) {
	if !strings.Contains(s, `\`) {
		return s, nil
	}
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '\\' {
			b.WriteByte(s[i])
			continue
		}
		if i+4 > len(s) {
			return "", fmt.Errorf("truncated escape in %q", s)
		}
		n, err := strconv.ParseUint(s[i+1:i+4], 8, 8)
		if err != nil {
			return "", fmt.Errorf("bad escape in %q: %w", s, err)
		}
		b.WriteByte(byte(n))
		i += 3
	}
	return b.String(), nil
}

// MountCgroup2 mounts the cgroup v2 hierarchy at dir (creating dir), for a
// host or container that has none mounted. There is one v2 hierarchy per
// cgroup namespace, so every mount shows the same cgroups. Unmount it with
// unix.Unmount(dir, 0) when done.
func MountCgroup2(dir string) error {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("mount cgroup2: %w", err)
	}
	if err := unix.Mount("cgroup2", dir, "cgroup2", unix.MS_NOSUID|unix.MS_NODEV|unix.MS_NOEXEC, ""); err != nil {
		if errors.Is(err, unix.EPERM) {
			return fmt.Errorf("mount cgroup2 on %s: %w (needs CAP_SYS_ADMIN): %w", dir, ErrNotSupported, err)
		}
		return fmt.Errorf("mount cgroup2 on %s: %w", dir, err)
	}
	return nil
}

// JobCgroup is a cgroup v2 directory made for one job.
type JobCgroup struct {
	path string
	dir  *os.File // the directory, for CLONE_INTO_CGROUP

	mu      sync.Mutex // guards the following
	removed bool
}

// cgroupName is what NewJobCgroup accepts as a name: one path element that
// is neither hidden nor an option-like "-x". A name that collides with an
// interface file ("cgroup.procs") fails in Mkdir with EEXIST.
var cgroupName = regexp.MustCompile(`^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$`)

// NewJobCgroup creates the cgroup parent/name. parent must be a directory of
// a cgroup v2 hierarchy (FindCgroup2 or MountCgroup2 gives the root) and
// name must not exist yet: a job never shares a cgroup with leftovers.
func NewJobCgroup(parent, name string) (*JobCgroup, error) {
	if !cgroupName.MatchString(name) {
		return nil, fmt.Errorf("create job cgroup: name %q must be 1-128 letters, digits, '_', '.', '-' and not start with '.' or '-'", name)
	}
	if err := checkCgroup2(parent); err != nil {
		return nil, fmt.Errorf("create job cgroup %q: %w", name, err)
	}
	path := filepath.Join(parent, name)
	if err := os.Mkdir(path, 0o755); err != nil {
		return nil, fmt.Errorf("create job cgroup: %w", err)
	}
	dir, err := os.OpenFile(path, os.O_RDONLY|unix.O_DIRECTORY|unix.O_CLOEXEC, 0)
	if err != nil {
		os.Remove(path)
		return nil, fmt.Errorf("create job cgroup: %w", err)
	}
	return &JobCgroup{path: path, dir: dir}, nil
}

// Path is the cgroup's directory, what Enforce takes.
func (c *JobCgroup) Path() string { return c.path }

// FD is an open file descriptor of the cgroup directory, valid until
// Remove: what syscall.SysProcAttr.CgroupFD takes.
func (c *JobCgroup) FD() int { return int(c.dir.Fd()) }

// Apply makes cmd start its process directly inside the cgroup (clone3 with
// CLONE_INTO_CGROUP, Linux 5.7+), so there is no moment at which the child
// runs outside it. Call it before cmd.Start; it keeps any other SysProcAttr
// settings.
func (c *JobCgroup) Apply(cmd *exec.Cmd) {
	if cmd.SysProcAttr == nil {
		cmd.SysProcAttr = &syscall.SysProcAttr{}
	}
	cmd.SysProcAttr.UseCgroupFD = true
	cmd.SysProcAttr.CgroupFD = c.FD()
}

// AddProc moves the process pid (all its threads) into the cgroup. Prefer
// Apply for a new process: a process moved after it started has run
// outside the cgroup until now, and sockets it opened before keep their
// old cgroup for the socket hooks.
func (c *JobCgroup) AddProc(pid int) error {
	if err := os.WriteFile(filepath.Join(c.path, "cgroup.procs"), []byte(strconv.Itoa(pid)), 0); err != nil {
		return fmt.Errorf("move pid %d into cgroup %s: %w", pid, c.path, err)
	}
	return nil
}

// Procs lists the processes in the cgroup (not in cgroups below it).
func (c *JobCgroup) Procs() ([]int, error) {
	b, err := os.ReadFile(filepath.Join(c.path, "cgroup.procs"))
	if err != nil {
		return nil, fmt.Errorf("list processes of cgroup %s: %w", c.path, err)
	}
	var pids []int
	for _, f := range bytes.Fields(b) {
		pid, err := strconv.Atoi(string(f))
		if err != nil {
			return nil, fmt.Errorf("list processes of cgroup %s: bad pid %q", c.path, f)
		}
		pids = append(pids, pid)
	}
	return pids, nil
}

// removeTimeout bounds how long Remove waits for killed processes to exit.
const removeTimeout = 5 * time.Second

// Remove kills every process left in the cgroup and below it (cgroup.kill,
// Linux 5.14+; SIGKILL to each listed process before that), waits for them to
// exit and removes the directory with any cgroups the job made below it. The
// caller must still reap its own children. It is idempotent.
func (c *JobCgroup) Remove() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.removed {
		return nil
	}
	if err := c.killLocked(); err != nil {
		return err
	}
	if err := rmdirTree(c.path, time.Now().Add(removeTimeout)); err != nil {
		return err
	}
	c.removed = true
	return c.dir.Close()
}

// rmdirTree removes the cgroup dir after the cgroups below it, deepest
// first. A cgroup's interface files go with its directory; rmdir fails with
// EBUSY while killed processes are still exiting, so it retries until
// deadline.
func rmdirTree(dir string, deadline time.Time) error {
	ents, err := os.ReadDir(dir)
	if err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove cgroup %s: %w", dir, err)
	}
	for _, ent := range ents {
		if ent.IsDir() {
			if err := rmdirTree(filepath.Join(dir, ent.Name()), deadline); err != nil {
				return err
			}
		}
	}
	for {
		err := unix.Rmdir(dir)
		if err == nil || errors.Is(err, unix.ENOENT) {
			return nil
		}
		if !errors.Is(err, unix.EBUSY) || time.Now().After(deadline) {
			return fmt.Errorf("remove cgroup %s: %w (processes still in it?)", dir, err)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// Kill sends SIGKILL to every process in the cgroup and below it, including
// any the job forked or double-forked away from its parent: the way to end a
// job at its timeout. It does not wait for them to exit.
func (c *JobCgroup) Kill() error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.removed {
		return nil
	}
	return c.killLocked()
}

func (c *JobCgroup) killLocked() error {
	err := os.WriteFile(filepath.Join(c.path, "cgroup.kill"), []byte("1"), 0)
	if err == nil || errors.Is(err, os.ErrNotExist) && !c.exists() {
		return nil
	}
	// No cgroup.kill (before Linux 5.14): kill what is listed here.
	pids, perr := c.Procs()
	if perr != nil {
		return fmt.Errorf("kill processes of cgroup %s: %w", c.path, err)
	}
	for _, pid := range pids {
		if err := unix.Kill(pid, unix.SIGKILL); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("kill pid %d of cgroup %s: %w", pid, c.path, err)
		}
	}
	return nil
}

func (c *JobCgroup) exists() bool {
	_, err := os.Stat(c.path)
	return err == nil
}
