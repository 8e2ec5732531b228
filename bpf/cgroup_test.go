package bpf

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"golang.org/x/sys/unix"
)

func TestParseMountinfo(t *testing.T) {
	for _, c := range []struct {
		name    string
		in      string
		want    string
		wantErr error
	}{
		{
			name: "hybrid host",
			in: "31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755\n" +
				"32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n" +
				"41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n",
			want: "/sys/fs/cgroup/unified",
		},
		{
			name: "pure v2 with optional fields",
			in:   "29 23 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 master:1 - cgroup2 cgroup2 rw,nsdelegate\n",
			want: "/sys/fs/cgroup",
		},
		{
			name: "escaped space in mount point",
			in:   `50 23 0:40 / /tmp/my\040cgroup rw - cgroup2 none rw` + "\n",
			want: "/tmp/my cgroup",
		},
		{
			name:    "only cgroup v1",
			in:      "32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu\n",
			wantErr: ErrNoCgroup2,
		},
		{
			name:    "cgroup2 as a source or option, not the type",
			in:      "60 23 0:50 / /mnt rw - ext4 cgroup2 cgroup2\n",
			wantErr: ErrNoCgroup2,
		},
		{
			name:    "separator missing",
			in:      "60 23 0:50 / /mnt rw cgroup2 cgroup2 rw\n",
			wantErr: ErrNoCgroup2,
		},
		{
			name:    "relative mount point is skipped",
			in:      "60 23 0:50 / mnt rw - cgroup2 cgroup2 rw\n",
			wantErr: ErrNoCgroup2,
		},
		{
			name:    "truncated escape is skipped",
			in:      `60 23 0:50 / /mnt\04 rw - cgroup2 cgroup2 rw` + "\n",
			wantErr: ErrNoCgroup2,
		},
		{name: "empty", in: "", wantErr: ErrNoCgroup2},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := parseMountinfo(strings.NewReader(c.in))
			if !errors.Is(err, c.wantErr) || got != c.want {
				t.Errorf("got %q, %v; want %q, %v", got, err, c.want, c.wantErr)
			}
		})
	}
}

func FuzzParseMountinfo(f *testing.F) {
	f.Add("41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw\n")
	f.Add(`50 23 0:40 / /tmp/a\040b rw shared:1 - cgroup2 none rw` + "\n")
	f.Fuzz(func(t *testing.T, in string) {
		got, err := parseMountinfo(strings.NewReader(in))
		if err != nil {
			if got != "" {
				t.Errorf("error %v with path %q", err, got)
			}
			return
		}
		if !filepath.IsAbs(got) || filepath.Clean(got) != got {
			t.Errorf("got %q, want a clean absolute path", got)
		}
		if !strings.Contains(in, "cgroup2") {
			t.Errorf("found %q in input without a cgroup2 mount", got)
		}
	})
}

func TestFindCgroup2(t *testing.T) {
	root, err := FindCgroup2()
	if errors.Is(err, ErrNoCgroup2) {
		t.Skip("no cgroup2 mounted here; TestMountCgroup2 covers mounting one")
	}
	if err != nil {
		t.Fatal(err)
	}
	var st unix.Statfs_t
	if err := unix.Statfs(root, &st); err != nil {
		t.Fatal(err)
	}
	if st.Type != unix.CGROUP2_SUPER_MAGIC {
		t.Errorf("FindCgroup2 = %s with fs magic %#x, want cgroup2 %#x", root, st.Type, unix.CGROUP2_SUPER_MAGIC)
	}
}

func TestMountCgroup2(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to mount")
	}
	dir := filepath.Join(t.TempDir(), "cg2")
	if err := MountCgroup2(dir); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := unix.Unmount(dir, 0); err != nil {
			t.Errorf("unmount %s: %v", dir, err)
		}
	})
	if err := checkCgroup2(dir); err != nil {
		t.Fatalf("after MountCgroup2: %v", err)
	}
	// The same hierarchy: a cgroup made through the new mount is usable
	// and visible as a cgroup2 directory.
	cg, err := NewJobCgroup(dir, "cordon-bpf-mount-test")
	if err != nil {
		t.Fatal(err)
	}
	if err := checkCgroup2(cg.Path()); err != nil {
		t.Error(err)
	}
	if err := cg.Remove(); err != nil {
		t.Fatal(err)
	}
}

func TestNewJobCgroupRejects(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("needs root to create cgroups")
	}
	root := cgroupRoot(t)
	cg := newCgroup(t)
	for _, c := range []struct{ name, parent, cgname string }{
		{"path traversal", root, "../escape"},
		{"nested path", root, "a/b"},
		{"hidden", root, ".x"},
		{"empty", root, ""},
		{"option-like", root, "-x"},
		{"already exists", root, filepath.Base(cg.Path())},
		{"interface file name", cg.Path(), "cgroup.procs"},
		{"parent not cgroup2", t.TempDir(), "job"},
	} {
		t.Run(c.name, func(t *testing.T) {
			got, err := NewJobCgroup(c.parent, c.cgname)
			if err == nil {
				got.Remove()
				t.Errorf("NewJobCgroup(%s, %q): got success, want an error", c.parent, c.cgname)
			}
		})
	}
}

// TestApplyStartsInsideCgroup shows there is no moment at which the child
// runs outside the cgroup: the exec'd program itself reports the job cgroup,
// and the helper's first connect is already refused.
func TestApplyStartsInsideCgroup(t *testing.T) {
	cg := newCgroup(t)
	proxy := newTCPSink(t, "127.0.0.1:0")
	other := newTCPSink(t, "127.0.0.1:0")
	enforce(t, cg, Policy{Proxy: proxy.addrPort()})
	root := cgroupRoot(t)
	rel := "/" + strings.TrimPrefix(cg.Path(), root+"/")

	cmd := exec.Command("cat", "/proc/self/cgroup")
	cg.Apply(cmd)
	out, err := cmd.Output()
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(string(out), "0::"+rel+"\n") {
		t.Errorf("cat /proc/self/cgroup started with Apply: got %q, want a line 0::%s", out, rel)
	}

	h := startHelper(t, cg)
	if got := h.errOf(helperOp{Op: "connect", Proto: "tcp", Addr: other.addrPort().String()}); got != "EPERM" {
		t.Errorf("helper's first connect to a denied port: got %q, want EPERM", got)
	}
	pids, err := cg.Procs()
	if err != nil {
		t.Fatal(err)
	}
	if len(pids) != 1 || pids[0] != h.cmd.Process.Pid {
		t.Errorf("cgroup processes: got %v, want [%d]", pids, h.cmd.Process.Pid)
	}
}

func TestAddProcAndRemoveKills(t *testing.T) {
	cg := newCgroup(t)
	cmd := exec.Command("sleep", "60")
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	if err := cg.AddProc(cmd.Process.Pid); err != nil {
		cmd.Process.Kill()
		<-done
		t.Fatal(err)
	}
	pids, err := cg.Procs()
	if err != nil || len(pids) != 1 || pids[0] != cmd.Process.Pid {
		t.Errorf("Procs after AddProc: got %v, %v, want [%d]", pids, err, cmd.Process.Pid)
	}
	// A cgroup the job made below its own, with a process of its own, does
	// not keep Remove from finishing.
	nested := filepath.Join(cg.Path(), "made-by-job", "deeper")
	if err := os.MkdirAll(nested, 0o755); err != nil {
		t.Fatal(err)
	}
	sleeper := exec.Command("sleep", "60")
	sleeper.SysProcAttr = &syscall.SysProcAttr{UseCgroupFD: true}
	dirFD, err := os.Open(nested)
	if err != nil {
		t.Fatal(err)
	}
	sleeper.SysProcAttr.CgroupFD = int(dirFD.Fd())
	if err := sleeper.Start(); err != nil {
		t.Fatal(err)
	}
	dirFD.Close()
	sleeperDone := make(chan error, 1)
	go func() { sleeperDone <- sleeper.Wait() }()
	defer func() { sleeper.Process.Kill(); <-sleeperDone }()
	if err := cg.Remove(); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Error("sleep exited cleanly; want killed by Remove")
		}
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatal("Remove did not kill the process in the cgroup")
	}
	if _, err := os.Stat(cg.Path()); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("cgroup directory after Remove: got %v, want it gone", err)
	}
	if err := cg.Remove(); err != nil {
		t.Errorf("second Remove: got %v, want nil", err)
	}
}

func TestKill(t *testing.T) {
	cg := newCgroup(t)
	// A shell that double-forks a sleeper away from itself: Kill must reach
	// both, though only the shell is our child.
	cmd := exec.Command("sh", "-c", "(sleep 60 &) ; exec sleep 60")
	cg.Apply(cmd)
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	waitFor(t, "both sleepers in the cgroup", func() bool {
		pids, _ := cg.Procs()
		return len(pids) == 2
	})
	if err := cg.Kill(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		cmd.Process.Kill()
		<-done
		t.Fatal("Kill did not kill the job's process")
	}
	waitFor(t, "the orphaned sleeper to die too", func() bool {
		pids, _ := cg.Procs()
		return len(pids) == 0
	})
}
