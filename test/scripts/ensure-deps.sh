#!/usr/bin/env bash
# ensure-deps.sh PROFILE: install the Debian packages a make target needs, only
# when missing. Profiles: test, bench, generate, browser.
set -euo pipefail
profile=${1:-test}
need=()
have() { command -v "$1" >/dev/null 2>&1; }
case "$profile" in
  test)
    have initdb || have /usr/lib/postgresql/15/bin/initdb || need+=(postgresql)
    # The scrubber's tests pipe secrets through real hex dumpers; the demo
    # test drives curl and openssl.
    have xxd || need+=(xxd)
    have hexdump || need+=(bsdextrautils)
    have curl || need+=(curl)
    have openssl || need+=(openssl)
    # make test checks that regenerating the bpf2go output changes nothing.
    have clang || need+=(clang)
    have llvm-strip || need+=(llvm)
    [ -e /etc/ssl/certs/ca-certificates.crt ] || need+=(ca-certificates)
    # The e2e suite and the compose stack need a Docker Engine and Compose.
    have docker || need+=(docker.io)
    have docker-compose || need+=(docker-compose)
    # dispatcher/webui's browser test drives headless Chromium.
    have chromium || need+=(chromium)
    ;;
  bench)
    have squid || need+=(squid)
    have tinyproxy || need+=(tinyproxy)
    ;;
  generate)
    have clang || need+=(clang)
    have llvm-strip || need+=(llvm)
    ;;
  browser)
    have chromium || need+=(chromium)
    ;;
  *) echo "ensure-deps: unknown profile $profile" >&2; exit 2 ;;
esac
if ((${#need[@]})); then
  echo "ensure-deps: installing ${need[*]}"
  if [ "$(id -u)" -ne 0 ]; then echo "ensure-deps: need root to apt-get install ${need[*]}" >&2; exit 1; fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi
