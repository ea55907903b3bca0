#!/usr/bin/env bash
# Idempotent set-up: installs what is missing and does nothing when all is there.
#   scripts/setup.sh          tools for build and test
#   scripts/setup.sh --bench  plus tinyproxy for the comparison benchmark
set -euo pipefail

need=()
command -v curl >/dev/null || need+=(curl)
# sshd for the git-over-ssh capture test (run by the test on a loopback port).
[[ -x /usr/sbin/sshd ]] || need+=(openssh-server)
if [[ "${1:-}" == "--bench" ]]; then
  command -v tinyproxy >/dev/null || need+=(tinyproxy)
fi
if ((${#need[@]})); then
  echo "setup: installing ${need[*]} from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # Install, never start: no service of the host is started by set-up.
  had_policy=0; [[ -e /usr/sbin/policy-rc.d ]] && had_policy=1
  if ((!had_policy)); then printf '#!/bin/sh\nexit 101\n' >/usr/sbin/policy-rc.d; chmod +x /usr/sbin/policy-rc.d; fi
  apt-get install -y -qq "${need[@]}" >/dev/null
  ((had_policy)) || rm -f /usr/sbin/policy-rc.d
fi
rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt
