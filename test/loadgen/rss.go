package loadgen

import (
	"bytes"
	"fmt"
	"os"
	"strconv"
)

// TreeRSS returns the resident memory in bytes (VmRSS) of process pid plus
// all of its descendants, so a proxy that forks helpers (squid) is measured
// whole. It reads /proc and so works on Linux only.
func TreeRSS(pid int) (int64, error) {
	children, err := childrenByParent()
	if err != nil {
		return 0, fmt.Errorf("read rss of pid %d: %w", pid, err)
	}
	var total int64
	queue := []int{pid}
	for len(queue) > 0 {
		p := queue[0]
		queue = queue[1:]
		rss, err := processRSS(p)
		if err != nil {
			if p == pid {
				return 0, fmt.Errorf("read rss of pid %d: %w", pid, err)
			}
			continue // a helper that exited meanwhile
		}
		total += rss
		queue = append(queue, children[p]...)
	}
	return total, nil
}

// processRSS reads VmRSS from /proc/PID/status.
func processRSS(pid int) (int64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, err
	}
	return parseVmRSS(b)
}

// parseVmRSS finds "VmRSS:   1234 kB" in a /proc/PID/status file.
func parseVmRSS(status []byte) (int64, error) {
	for line := range bytes.Lines(status) {
		rest, ok := bytes.CutPrefix(line, []byte("VmRSS:"))
		if !ok {
			continue
		}
		f := bytes.Fields(rest)
		if len(f) != 2 || string(f[1]) != "kB" {
			return 0, fmt.Errorf("unexpected VmRSS line %q", bytes.TrimSpace(line))
		}
		kb, err := strconv.ParseInt(string(f[0]), 10, 64)
		if err != nil || kb < 0 {
			return 0, fmt.Errorf("unexpected VmRSS value %q", f[0])
		}
		return kb << 10, nil
	}
	return 0, fmt.Errorf("no VmRSS line (kernel thread or zombie?)")
}

// childrenByParent maps every process ID to its children's IDs.
func childrenByParent() (map[int][]int, error) {
	entries, err := os.ReadDir("/proc")
	if err != nil {
		return nil, err
	}
	m := make(map[int][]int)
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		b, err := os.ReadFile("/proc/" + e.Name() + "/stat")
		if err != nil {
			continue // exited meanwhile
		}
		// "pid (comm) state ppid ...": comm may hold spaces and parens, so
		// parse after the last ')'.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 {
			continue
		}
		f := bytes.Fields(b[i+1:])
		if len(f) < 2 {
			continue
		}
		ppid, err := strconv.Atoi(string(f[1]))
		if err != nil {
			continue
		}
		m[ppid] = append(m[ppid], pid)
	}
	return m, nil
}
