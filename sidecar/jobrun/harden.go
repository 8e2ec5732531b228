package jobrun

import (
	"fmt"

	"golang.org/x/sys/unix"
)

// HardenProcess marks the calling process non-dumpable
// (prctl(PR_SET_DUMPABLE, 0)). The job runs as the wrapper's uid, and
// without this it could read /proc/<wrapper>/environ (the task's AWS
// credential variables that were removed from its own env), read
// /proc/<wrapper>/mem, or open /proc/<wrapper>/fd/1 and write to the
// container's log around the scrubber. Non-dumpable, those files belong to
// root and need CAP_SYS_PTRACE. The job itself is unaffected: execve resets
// the flag. Call it once, early in main; it is process-wide.
func HardenProcess() error {
	if err := unix.Prctl(unix.PR_SET_DUMPABLE, 0, 0, 0, 0); err != nil {
		return fmt.Errorf("make process non-dumpable: %w", err)
	}
	return nil
}
