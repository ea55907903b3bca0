#!/usr/bin/env bash
# Keeps the build cache ($CARGO_TARGET_DIR) from filling the disk. Cargo never
# removes an artifact it no longer uses: every dependency bump, feature change or
# toolchain leaves the old ones behind, and incremental state grows with each
# edit (71 GiB of target dir, 43 GiB of it incremental, filled this machine's
# disk and failed a CI run). The Makefile builds without incremental state, so
# that is removed; the whole cache is removed when it is over its budget or the
# disk is nearly full (the next build starts clean: about 10 minutes on 2 cores).
#   AGENT_SANDBOX_CACHE_BUDGET_GB  largest target dir kept (default 25)
#   AGENT_SANDBOX_MIN_FREE_GB      free space the build wants (default 15)
set -euo pipefail

dir=${CARGO_TARGET_DIR:-/var/tmp/agent-sandbox-target}
budget_gb=${AGENT_SANDBOX_CACHE_BUDGET_GB:-25}
min_free_gb=${AGENT_SANDBOX_MIN_FREE_GB:-15}
[[ -d $dir ]] || exit 0

for inc in "$dir"/*/incremental "$dir"/*/*/incremental; do
  [[ -d $inc ]] || continue
  size_mb=$(( $(du -sk "$inc" | cut -f1) / 1024 ))
  ((size_mb < 100)) || echo "cache: removing ${size_mb} MiB of incremental state ($inc); builds here run with CARGO_INCREMENTAL=0"
  rm -rf "$inc"
done

used_gb=$(( $(du -sk "$dir" | cut -f1) / 1024 / 1024 ))
free_gb=$(( $(df -Pk "$dir" | awk 'NR==2 {print $4}') / 1024 / 1024 ))
if (( used_gb > budget_gb || free_gb < min_free_gb )); then
  echo "cache: $dir holds ${used_gb} GiB (budget ${budget_gb} GiB), ${free_gb} GiB free (want ${min_free_gb} GiB): removing it, the build starts clean"
  rm -rf "$dir"
fi
free_gb=$(( $(df -Pk "$(dirname "$dir")" | awk 'NR==2 {print $4}') / 1024 / 1024 ))
if (( free_gb < min_free_gb )); then
  echo "cache: only ${free_gb} GiB free on $(dirname "$dir") with the build cache gone; the build needs about ${min_free_gb} GiB. Free some space (docker system prune, old files under /var/tmp) and run again." >&2
  exit 1
fi
