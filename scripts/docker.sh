#!/usr/bin/env bash
# Idempotent: a Docker engine that answers, and the local base image.
#  - installs Docker Engine from Debian's packages if no engine answers and dockerd is missing
#  - starts dockerd in the background if it is not running, and waits for it
#  - builds agent-sandbox/base:bookworm (debootstrap minbase + docker import) if absent,
#    and agent-sandbox/clients:bookworm (real clients: node, npm, pip, git, ssh, wget) for the tests
set -euo pipefail
IMAGE=${AGENT_SANDBOX_BASE_IMAGE:-agent-sandbox/base:bookworm}
CLIENTS_IMAGE=${AGENT_SANDBOX_CLIENTS_IMAGE:-agent-sandbox/clients:bookworm}
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

# build_image NAME PACKAGES: debootstrap --variant=minbase of bookworm with
# PACKAGES, finished in a chroot (debootstrap's own resolver fails on some
# sets, npm's among them), then `docker import`. Skipped if NAME exists.
build_image() {
  local image=$1 packages=$2
  docker image inspect "$image" >/dev/null 2>&1 && return 0
  command -v debootstrap >/dev/null || { export DEBIAN_FRONTEND=noninteractive; apt-get update -qq; apt-get install -y -qq debootstrap >/dev/null; }
  # The same Debian mirror apt uses on this machine.
  local mirror
  mirror=$(grep -hoE '^(URIs:|deb) +[^ ]+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
    | awk '{print $2}' | grep -v -- '-security' | grep -E '/debian/?$' | head -1 || true)
  mirror=${mirror:-$(grep -hoE 'https?://[^ ]+/debian' /etc/apt/sources.list.d/* /etc/apt/sources.list 2>/dev/null | head -1 || true)}
  [[ -n "$mirror" ]] || { echo "docker: no Debian mirror found in /etc/apt/sources.list*; cannot build $image" >&2; exit 1; }
  local root log=/var/tmp/agent-sandbox-debootstrap.log
  root=$(mktemp -d /var/tmp/agent-sandbox-rootfs.XXXXXX)
  trap 'rm -rf "$root"' EXIT
  echo "docker: building $image with debootstrap (log: $log)"
  if ! debootstrap --variant=minbase --include="$packages" bookworm "$root" "$mirror" >"$log" 2>&1; then
    # Finish what debootstrap left unconfigured, from inside the tree.
    [[ -x "$root/usr/bin/apt-get" ]] || { echo "docker: debootstrap failed; see $log" >&2; tail -20 "$log" >&2; exit 1; }
    echo "deb $mirror bookworm main" >"$root/etc/apt/sources.list"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    for fs in proc sys dev; do mount --bind "/$fs" "$root/$fs"; done
    trap 'for fs in proc sys dev; do umount -l "$root/$fs" 2>/dev/null; done; rm -rf "$root"' EXIT
    { chroot "$root" dpkg --configure -a || true
      chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
      chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get -f install -y -qq
      chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ${packages//,/ }
    } >>"$log" 2>&1 || { echo "docker: finishing $image in a chroot failed; see $log" >&2; tail -20 "$log" >&2; exit 1; }
    for fs in proc sys dev; do umount -l "$root/$fs"; done
    : >"$root/etc/resolv.conf"
  fi
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*
  tar -C "$root" -c . | docker import -c 'CMD ["/bin/bash"]' - "$image" >/dev/null
  rm -rf "$root"
  trap - EXIT
  echo "docker: built $image"
}

build_image "$IMAGE" curl,ca-certificates,git,python3,netcat-openbsd,procps
# Real clients nobody here wrote, for the capture and DNS tests (#12): only
# for `make test` (`--clients`), not for the demo.
[[ "${1:-}" == "--clients" ]] || exit 0
build_image "$CLIENTS_IMAGE" \
  curl,wget,ca-certificates,git,openssh-client,python3,python3-pip,python3-venv,netcat-openbsd,procps,dnsutils,nodejs,npm
