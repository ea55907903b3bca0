#!/usr/bin/env bash
# Idempotent set-up: installs what is missing and does nothing when all is there.
#   scripts/setup.sh          tools for build and test
#   scripts/setup.sh --bench  plus tinyproxy for the comparison benchmark
set -euo pipefail

need=()
command -v curl >/dev/null || need+=(curl)
if [[ "${1:-}" == "--bench" ]]; then
  command -v tinyproxy >/dev/null || need+=(tinyproxy)
fi
if ((${#need[@]})); then
  echo "setup: installing ${need[*]} from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi
rustup component list --installed 2>/dev/null | grep -q clippy || rustup component add clippy rustfmt
