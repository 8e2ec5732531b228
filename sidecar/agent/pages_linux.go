package agent

import (
	"bufio"
	"bytes"
	"debug/elf"
	"os"
	"strconv"
	"strings"
	"syscall"
)

// releaseCodePages unmaps the resident pages of this binary's read-only
// mappings (text and rodata) from the process, as the kernel does under
// memory pressure. Setup (TLS, the SDK, protobuf registration of the xDS
// types, and the kernel's fault-around on a binary whose file is hot in
// the page cache) leaves most of the binary resident, ~20 MB; the idle
// agent needs a small part of it, which faults back in from the page
// cache on use. Writable mappings are never touched: for them
// MADV_DONTNEED would discard data. Nor is a binary that was relocated at
// load time (PIE, or dynamically linked: its RELRO pages are written by
// the loader, then made read-only, and would revert to the file); only a
// static, position-dependent executable (the shipped CGO_ENABLED=0
// build) qualifies. It reports how many bytes it released.
func releaseCodePages() int64 {
	exe, err := os.Readlink("/proc/self/exe")
	if err != nil || !staticExec(exe) {
		return 0
	}
	maps, err := os.ReadFile("/proc/self/maps")
	if err != nil {
		return 0
	}
	var released int64
	sc := bufio.NewScanner(bytes.NewReader(maps))
	for sc.Scan() {
		// start-end perms offset dev inode path
		f := strings.Fields(sc.Text())
		if len(f) < 6 || f[5] != exe || strings.ContainsRune(f[1], 'w') || f[1][3] != 'p' {
			continue
		}
		lo, hi, ok := strings.Cut(f[0], "-")
		if !ok {
			continue
		}
		start, err1 := strconv.ParseUint(lo, 16, 64)
		end, err2 := strconv.ParseUint(hi, 16, 64)
		if err1 != nil || err2 != nil || end <= start {
			continue
		}
		if _, _, errno := syscall.Syscall(syscall.SYS_MADVISE, uintptr(start), uintptr(end-start), syscall.MADV_DONTNEED); errno == 0 {
			released += int64(end - start)
		}
	}
	return released
}

// staticExec reports whether path is an ELF executable loaded as is: not
// position-independent, no interpreter, no dynamic section.
func staticExec(path string) bool {
	f, err := elf.Open(path)
	if err != nil {
		return false
	}
	defer f.Close()
	if f.Type != elf.ET_EXEC {
		return false
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP || p.Type == elf.PT_DYNAMIC || p.Type == elf.PT_GNU_RELRO {
			return false
		}
	}
	return true
}
