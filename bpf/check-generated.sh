#!/usr/bin/env bash
# check-generated.sh: fail if the committed bpf2go output (enforce_bpfel.go,
# enforce_bpfel.o) is not what cgroup_enforce.c and gen.go produce now.
# It regenerates into a throwaway copy (go.mod, go.sum and bpf/ only), so
# the checkout is never touched, and prints the differences: a unified diff
# for Go, a disassembly diff for the object. Needs what generate.sh needs.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(dirname "$here")
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

cp "$root/go.mod" "$root/go.sum" "$tmp/"
mkdir "$tmp/bpf"
cp "$here"/*.c "$here"/*.go "$here"/*.sh "$tmp/bpf/"
rm -f "$tmp/bpf/"*_bpfel.go "$tmp/bpf/"*_bpfel.o
if ! out=$("$tmp/bpf/generate.sh" 2>&1); then
  echo "check-generated: regenerating failed:" >&2
  echo "$out" >&2
  exit 1
fi

status=0
for f in "$here"/*_bpfel.go "$here"/*_bpfel.o; do
  name=$(basename "$f")
  if [ ! -e "$tmp/bpf/$name" ]; then
    echo "check-generated: bpf/$name is committed but no longer generated" >&2
    status=1
  fi
done
for f in "$tmp/bpf/"*_bpfel.go "$tmp/bpf/"*_bpfel.o; do
  name=$(basename "$f")
  if [ ! -e "$here/$name" ]; then
    echo "check-generated: bpf/$name is generated but not committed" >&2
    status=1
    continue
  fi
  cmp -s "$f" "$here/$name" && continue
  status=1
  echo "check-generated: bpf/$name differs from a fresh build (run ./bpf/generate.sh and commit):" >&2
  case "$name" in
    *.go) diff -u "$here/$name" "$f" >&2 || true ;;
    *.o)
      if diff -u <(llvm-objdump -d --no-show-raw-insn "$here/$name" | sed 1,2d) \
                 <(llvm-objdump -d --no-show-raw-insn "$f" | sed 1,2d) >&2; then
        echo "(instructions identical; BTF, relocations or section layout differ)" >&2
      fi
      ;;
  esac
done
if [ "$status" -ne 0 ]; then
  echo "check-generated: built with $(clang --version | head -1)" >&2
  exit 1
fi
echo "check-generated: bpf2go output is up to date"
