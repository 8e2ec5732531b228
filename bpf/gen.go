package bpf

// The committed enforce_bpfel.{go,o} come from cgroup_enforce.c. Rebuild
// them with ./bpf/generate.sh (or `make generate`), which sets
// CORDON_BPF_ASM_INCLUDE to the multiarch directory holding <asm/types.h>;
// ./bpf/check-generated.sh proves the committed files match the source.
//
// The flags are pinned so the output only depends on the clang release:
// -O2 and -mcpu=v3 (kernel 5.1+: 32-bit jumps, the oldest kernel that also
// has every program type used here), -g for BTF (bpf2go strips DWARF),
// warnings are errors. Only the little-endian object is built.
//go:generate go run github.com/cilium/ebpf/cmd/bpf2go -cc clang -target bpfel -type lpm_key -type lpm_val -type counters -cflags "-O2 -mcpu=v3 -Wall -Werror -std=gnu11 -idirafter $CORDON_BPF_ASM_INCLUDE" enforce cgroup_enforce.c
