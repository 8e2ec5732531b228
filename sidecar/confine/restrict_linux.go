package confine

import (
	"errors"
	"fmt"
	"os"
	"syscall"
	"unsafe"

	"golang.org/x/sys/unix"
)

// restrictChildren sets no_new_privs and removes CAP_NET_RAW from the
// bounding, ambient and inheritable sets of every thread of this process,
// so every child (the job) starts without it and can never gain it: with
// the bounding and inheritable sets lacking it, execve gives it to nobody,
// not even uid 0 (capabilities(7), "Transformation of capabilities during
// execve"); no_new_privs makes setuid and file-capability binaries inert.
// The wrapper needs neither after its setup. These attributes are
// per-thread, hence AllThreadsSyscall (available without cgo: the shipped
// binary is static). Idempotent.
func restrictChildren() error {
	all := func(op string, trap, a1, a2, a3 uintptr) error {
		if _, _, e := syscall.AllThreadsSyscall(trap, a1, a2, a3); e != 0 {
			if e == syscall.ENOTSUP {
				return fmt.Errorf("%s: not possible in a cgo build (build with CGO_ENABLED=0)", op)
			}
			return fmt.Errorf("%s: %w", op, e)
		}
		return nil
	}
	if err := all("set no_new_privs", unix.SYS_PRCTL, unix.PR_SET_NO_NEW_PRIVS, 1, 0); err != nil {
		return err
	}
	if err := all("drop CAP_NET_RAW from the ambient set", unix.SYS_PRCTL, unix.PR_CAP_AMBIENT, unix.PR_CAP_AMBIENT_LOWER, unix.CAP_NET_RAW); err != nil &&
		!errors.Is(err, syscall.EINVAL) { // a kernel without ambient capabilities
		return err
	}
	if err := all("drop CAP_NET_RAW from the bounding set", unix.SYS_PRCTL, unix.PR_CAPBSET_DROP, unix.CAP_NET_RAW, 0); err != nil {
		// Without CAP_SETPCAP the bounding set cannot shrink; that is
		// only safe for a non-root job, which gets nothing from the
		// bounding set on execve.
		if !errors.Is(err, syscall.EPERM) || os.Getuid() == 0 {
			return err
		}
	}
	hdr := unix.CapUserHeader{Version: unix.LINUX_CAPABILITY_VERSION_3}
	var data [2]unix.CapUserData
	if err := unix.Capget(&hdr, &data[0]); err != nil {
		return fmt.Errorf("read capabilities: %w", err)
	}
	const bit = uint32(1) << unix.CAP_NET_RAW // CAP_NET_RAW < 32: word 0
	if data[0].Inheritable&bit != 0 {
		data[0].Inheritable &^= bit
		if err := all("drop CAP_NET_RAW from the inheritable set", unix.SYS_CAPSET,
			uintptr(unsafe.Pointer(&hdr)), uintptr(unsafe.Pointer(&data[0])), 0); err != nil {
			return err
		}
	}
	return nil
}
