#!/usr/bin/env bash
# generate.sh: rebuild the committed bpf2go output (enforce_bpfel.go and
# enforce_bpfel.o) from cgroup_enforce.c. Needs clang and llvm-strip
# (`make generate` installs them from Debian) and the kernel UAPI headers
# (linux-libc-dev, which clang's libc6-dev dependency brings in).
#
# The object is reproducible for a given clang major version: flags are
# pinned in gen.go, bpf2go passes -fno-ident and maps source paths to
# relative ones, and DWARF is stripped. CI's Debian 12 has clang 14.
set -euo pipefail
cd "$(dirname "$0")"

command -v clang >/dev/null || { echo "generate.sh: clang not found; run 'make generate' or apt-get install clang llvm" >&2; exit 1; }
command -v llvm-strip >/dev/null || { echo "generate.sh: llvm-strip not found; apt-get install llvm" >&2; exit 1; }

# <linux/bpf.h> includes <asm/types.h>, which Debian keeps under the
# multiarch directory that clang -target bpf does not search by itself.
multiarch=$(clang -print-multiarch 2>/dev/null || true)
asm_include=/usr/include/${multiarch}
if [ -z "$multiarch" ] || [ ! -e "$asm_include/asm/types.h" ]; then
  echo "generate.sh: no <asm/types.h> under /usr/include/${multiarch}; apt-get install linux-libc-dev" >&2
  exit 1
fi
export CORDON_BPF_ASM_INCLUDE=$asm_include
export GOFLAGS=${GOFLAGS:-}
go generate ./gen.go
