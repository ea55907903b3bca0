#!/usr/bin/env bash
# Runs each cargo-fuzz target for FUZZ_SECONDS (default 30). cargo-fuzz needs
# -Z flags; the machine has one stable toolchain, so RUSTC_BOOTSTRAP=1 lets it
# accept them.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
command -v cargo-fuzz >/dev/null || cargo install cargo-fuzz --locked
export RUSTC_BOOTSTRAP=1
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-/var/tmp/agent-sandbox-target}/fuzz
for target in authority rules; do
  mkdir -p "corpus/$target"
  cargo fuzz run "$target" "corpus/$target" -- -max_total_time="${FUZZ_SECONDS:-30}" -max_len=512
done
