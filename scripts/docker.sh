#!/usr/bin/env bash
# Idempotent: a Docker engine that answers, and the local base image.
#  - installs Docker Engine from Debian's packages if no engine answers and dockerd is missing
#  - starts dockerd in the background if it is not running, and waits for it
#  - builds agent-sandbox/base:bookworm (debootstrap minbase + docker import) if absent
set -euo pipefail
IMAGE=${AGENT_SANDBOX_BASE_IMAGE:-agent-sandbox/base:bookworm}
LOG=/var/log/agent-sandbox-dockerd.log

if ! docker info >/dev/null 2>&1; then
  if ! command -v dockerd >/dev/null; then
    echo "docker: installing docker.io from Debian's packages"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq docker.io >/dev/null
  fi
  if ! docker info >/dev/null 2>&1; then
    if ! pgrep -x dockerd >/dev/null; then
      echo "docker: starting dockerd (log: $LOG)"
      nohup dockerd >"$LOG" 2>&1 &
    fi
    for _ in $(seq 120); do docker info >/dev/null 2>&1 && break; sleep 0.5; done
    docker info >/dev/null 2>&1 || { echo "docker: dockerd did not answer within 60 s; see $LOG" >&2; tail -20 "$LOG" >&2; exit 1; }
  fi
fi

if ! docker image inspect "$IMAGE" >/dev/null 2>&1; then
  command -v debootstrap >/dev/null || { export DEBIAN_FRONTEND=noninteractive; apt-get update -qq; apt-get install -y -qq debootstrap >/dev/null; }
  # The same Debian mirror apt uses on this machine.
  mirror=$(grep -hoE '^(URIs:|deb) +[^ ]+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
    | awk '{print $2}' | grep -v -- '-security' | grep -E '/debian/?$' | head -1 || true)
  mirror=${mirror:-$(grep -hoE 'https?://[^ ]+/debian' /etc/apt/sources.list.d/* /etc/apt/sources.list 2>/dev/null | head -1 || true)}
  [[ -n "$mirror" ]] || { echo "docker: no Debian mirror found in /etc/apt/sources.list*; cannot build $IMAGE" >&2; exit 1; }
  root=$(mktemp -d /var/tmp/agent-sandbox-rootfs.XXXXXX)
  trap 'rm -rf "$root"' EXIT
  echo "docker: building $IMAGE with debootstrap (about a minute)"
  debootstrap --variant=minbase --include=curl,ca-certificates,git,python3,netcat-openbsd,procps \
    bookworm "$root" "$mirror" >/var/tmp/agent-sandbox-debootstrap.log 2>&1 \
    || { echo "docker: debootstrap failed; see /var/tmp/agent-sandbox-debootstrap.log" >&2; tail -20 /var/tmp/agent-sandbox-debootstrap.log >&2; exit 1; }
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import -c 'CMD ["/bin/bash"]' - "$IMAGE" >/dev/null
  echo "docker: built $IMAGE"
fi
