#!/usr/bin/env bash
# A second Docker engine that shares nothing with the host's, for tests of
# the library against a remote engine. Idempotent.
#   scripts/remote-engine.sh start          build the image if absent, run the engine, load the base image
#   scripts/remote-engine.sh stop [--purge] remove the container (--purge: its /var/lib/docker volume too)
#   scripts/remote-engine.sh env            print the variables a test sets
# The engine is dockerd (Debian's docker.io) in a privileged container (or
# its equivalent, see set_run_flags) named agent-sandbox-remote-engine, its
# /var/lib/docker on a named volume (so overlay2 works inside). dockerd's TLS flags apply to every tcp listener, so
# dockerd listens on its unix socket and on 2376 with --tlsverify, and socat
# forwards plain 2375 to the unix socket. Both are published on loopback only:
#   plain  tcp://127.0.0.1:23750
#   TLS    tcp://127.0.0.1:23760 (certs in /var/tmp/agent-sandbox-remote/certs)
set -euo pipefail
IMAGE=${AGENT_SANDBOX_DIND_IMAGE:-agent-sandbox/dind:bookworm}
BASE_IMAGE=${AGENT_SANDBOX_BASE_IMAGE:-agent-sandbox/base:bookworm}
NAME=agent-sandbox-remote-engine
VOLUME=agent-sandbox-remote-engine
CERTS=/var/tmp/agent-sandbox-remote/certs
PLAIN=tcp://127.0.0.1:23750
TLS=tcp://127.0.0.1:23760
PACKAGES=docker.io,iptables,ca-certificates,procps,e2fsprogs,xz-utils,pigz,socat,tini,kmod
# `docker` alone is the host's engine, whatever the caller points DOCKER_HOST at.
unset DOCKER_HOST DOCKER_TLS_VERIFY DOCKER_CERT_PATH DOCKER_CONTEXT

# PID 1 is tini; this script starts socat for the plain port, then execs
# dockerd. Also mounted over the image's copy at each start, so a change here
# takes effect without rebuilding the image (the container is recreated when
# its label's hash differs).
DIND_SCRIPT=$(cat <<'SH'
#!/bin/sh
set -e
# What Docker's own dind script does: shared mounts for volume propagation, a fresh /tmp.
mount --make-rshared / 2>/dev/null || true
mount -t tmpfs -o mode=1777 tmpfs /tmp
# Without --privileged (see set_run_flags) /sys and the cgroup v1 hierarchies are
# read-only: make them writable, as --privileged would.
mount -o remount,rw /sys 2>/dev/null || true
for d in /sys/fs/cgroup/*/; do mount -o remount,rw,bind "$d" 2>/dev/null || true; done
rm -f /var/run/docker.pid /var/run/docker.sock
# nodelay: without it every small frame of an attached stream waits for
# the client's delayed ACK (40 ms), as Go's listener (dockerd's 2376) never does.
socat TCP-LISTEN:2375,fork,reuseaddr,nodelay UNIX-CONNECT:/var/run/docker.sock &
exec dockerd -H unix:///var/run/docker.sock -H tcp://0.0.0.0:2376 \
  --tlsverify --tlscacert /certs/ca.pem --tlscert /certs/server-cert.pem --tlskey /certs/server-key.pem "$@"
SH
)
SCRIPT=/var/tmp/agent-sandbox-remote/agent-sandbox-dind

die() { echo "remote-engine: $*" >&2; exit 1; }
inner() { DOCKER_HOST=$PLAIN docker "$@"; }

print_env() {
  cat <<EOF
# plain TCP
DOCKER_HOST=$PLAIN
# TLS (client certificate)
DOCKER_HOST=$TLS DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH=$CERTS
EOF
}

# The image: debootstrap minbase + docker.io, finished in a chroot when
# debootstrap's resolver gives up, then `docker import`. Skipped if present.
build_image() {
  docker image inspect "$IMAGE" >/dev/null 2>&1 && return 0
  command -v debootstrap >/dev/null || { export DEBIAN_FRONTEND=noninteractive; apt-get update -qq; apt-get install -y -qq debootstrap >/dev/null; }
  local mirror
  mirror=$(grep -hoE '^(URIs:|deb) +[^ ]+' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null \
    | awk '{print $2}' | grep -v -- '-security' | grep -E '/debian/?$' | head -1 || true)
  [[ -n "$mirror" ]] || die "no Debian mirror found in /etc/apt/sources.list*; cannot build $IMAGE"
  local root log=/var/tmp/agent-sandbox-dind-debootstrap.log
  root=$(mktemp -d /var/tmp/agent-sandbox-dind-rootfs.XXXXXX)
  trap 'for fs in proc sys dev; do umount -l "$root/$fs" 2>/dev/null || true; done; rm -rf "$root"' EXIT
  echo "remote-engine: building $IMAGE with debootstrap (log: $log)"
  if ! debootstrap --variant=minbase --include="$PACKAGES" bookworm "$root" "$mirror" >"$log" 2>&1; then
    [[ -x "$root/usr/bin/apt-get" ]] || { tail -20 "$log" >&2; die "debootstrap failed; see $log"; }
    echo "deb $mirror bookworm main" >"$root/etc/apt/sources.list"
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    # No service may start in the tree (docker.io's postinst would start dockerd).
    printf '#!/bin/sh\nexit 101\n' >"$root/usr/sbin/policy-rc.d"; chmod +x "$root/usr/sbin/policy-rc.d"
    for fs in proc sys dev; do mount --bind "/$fs" "$root/$fs"; done
    { chroot "$root" dpkg --configure -a || true
      chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get update -qq
      chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get -f install -y -qq
      chroot "$root" env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends ${PACKAGES//,/ }
    } >>"$log" 2>&1 || { tail -20 "$log" >&2; die "finishing $IMAGE in a chroot failed; see $log"; }
    for fs in proc sys dev; do umount -l "$root/$fs"; done
    rm -f "$root/usr/sbin/policy-rc.d"
    : >"$root/etc/resolv.conf"
  fi
  [[ -x "$root/usr/sbin/dockerd" ]] || die "dockerd missing from the tree; see $log"
  printf %s "$DIND_SCRIPT" >"$root/usr/local/bin/agent-sandbox-dind"
  chmod +x "$root/usr/local/bin/agent-sandbox-dind"
  rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/lib/docker/*
  tar -C "$root" -c . | docker import \
    -c 'ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/agent-sandbox-dind"]' \
    -c 'VOLUME /var/lib/docker' -c 'EXPOSE 2375 2376' - "$IMAGE" >/dev/null
  for fs in proc sys dev; do umount -l "$root/$fs" 2>/dev/null || true; done
  rm -rf "$root"
  trap - EXIT
  echo "remote-engine: built $IMAGE"
}

# A CA, a server certificate for localhost/127.0.0.1, a client certificate
# (ca.pem, cert.pem, key.pem: the names DOCKER_CERT_PATH expects). Once.
make_certs() {
  local f
  for f in ca.pem cert.pem key.pem server-cert.pem server-key.pem; do
    [[ -s "$CERTS/$f" ]] || break
  done
  [[ -s "$CERTS/$f" ]] && return 0
  mkdir -p "$CERTS"
  local tmp
  tmp=$(mktemp -d)
  (
    cd "$tmp"
    openssl req -x509 -newkey rsa:2048 -nodes -days 3650 -subj "/CN=agent-sandbox test CA" \
      -keyout ca-key.pem -out ca.pem
    openssl req -newkey rsa:2048 -nodes -subj "/CN=localhost" -keyout server-key.pem -out server.csr
    printf 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' >server.ext
    openssl x509 -req -in server.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 3650 \
      -extfile server.ext -out server-cert.pem
    openssl req -newkey rsa:2048 -nodes -subj "/CN=agent-sandbox client" -keyout key.pem -out client.csr
    printf 'extendedKeyUsage=clientAuth\n' >client.ext
    openssl x509 -req -in client.csr -CA ca.pem -CAkey ca-key.pem -CAcreateserial -days 3650 \
      -extfile client.ext -out cert.pem
  ) >"$tmp/log" 2>&1 || { cat "$tmp/log" >&2; rm -rf "$tmp"; die "openssl failed"; }
  chmod 600 "$tmp"/*key.pem
  cp "$tmp"/{ca.pem,cert.pem,key.pem,server-cert.pem,server-key.pem} "$CERTS/"
  rm -rf "$tmp"
}

# --privileged makes runc ask for every capability Docker knows; where the
# host's bounding set lacks some (CAP_SYS_RESOURCE on this machine) runc fails
# with "unable to apply caps: operation not permitted". Then: every capability
# the bounding set has, no seccomp/AppArmor/masked paths, all devices.
set_run_flags() {
  local names=(CHOWN DAC_OVERRIDE DAC_READ_SEARCH FOWNER FSETID KILL SETGID SETUID SETPCAP
    LINUX_IMMUTABLE NET_BIND_SERVICE NET_BROADCAST NET_ADMIN NET_RAW IPC_LOCK IPC_OWNER
    SYS_MODULE SYS_RAWIO SYS_CHROOT SYS_PTRACE SYS_PACCT SYS_ADMIN SYS_BOOT SYS_NICE
    SYS_RESOURCE SYS_TIME SYS_TTY_CONFIG MKNOD LEASE AUDIT_WRITE AUDIT_CONTROL SETFCAP
    MAC_OVERRIDE MAC_ADMIN SYSLOG WAKE_ALARM BLOCK_SUSPEND AUDIT_READ)
  local bnd i drop=()
  bnd=$((16#$(awk '/^CapBnd/{print $2}' /proc/self/status)))
  for i in "${!names[@]}"; do (( bnd >> i & 1 )) || drop+=(--cap-drop "${names[$i]}"); done
  if (( ${#drop[@]} == 0 )); then RUN_FLAGS=(--privileged); return; fi
  RUN_FLAGS=(--cap-add ALL "${drop[@]}" --security-opt seccomp=unconfined --security-opt apparmor=unconfined
    --security-opt systempaths=unconfined --device-cgroup-rule 'a *:* rwm')
}

start() {
  docker info >/dev/null 2>&1 || die "the host's Docker engine does not answer (scripts/docker.sh starts it)"
  docker image inspect "$BASE_IMAGE" >/dev/null 2>&1 || die "$BASE_IMAGE is missing on the host (scripts/docker.sh builds it)"
  build_image
  make_certs
  mkdir -p "${SCRIPT%/*}"
  printf '%s\n' "$DIND_SCRIPT" >"$SCRIPT"
  chmod 755 "$SCRIPT"
  local running hash
  hash=$(sha256sum "$SCRIPT" | cut -c1-16)
  running=$(docker inspect -f '{{.State.Running}}/{{index .Config.Labels "agent-sandbox.dind-script"}}' "$NAME" 2>/dev/null || true)
  if [[ "$running" != "true/$hash" ]]; then
    [[ -z "$running" ]] || stop
    set_run_flags
    docker run -d --name "$NAME" --hostname remote-engine "${RUN_FLAGS[@]}" \
      --label "agent-sandbox.dind-script=$hash" -v "$SCRIPT:/usr/local/bin/agent-sandbox-dind:ro" \
      -v "$VOLUME:/var/lib/docker" -v "$CERTS:/certs:ro" \
      -p 127.0.0.1:23750:2375 -p 127.0.0.1:23760:2376 \
      "$IMAGE" --storage-driver overlay2 >/dev/null
  fi
  local i
  for i in $(seq 120); do inner info >/dev/null 2>&1 && break; sleep 0.5; done
  if ! inner info >/dev/null 2>&1; then
    echo "remote-engine: the inner dockerd did not answer on $PLAIN within 60 s; its log:" >&2
    docker logs --tail 40 "$NAME" >&2 || true
    exit 1
  fi
  DOCKER_HOST=$TLS DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH=$CERTS docker version >/dev/null 2>&1 \
    || { docker logs --tail 20 "$NAME" >&2; die "the TLS endpoint $TLS does not answer"; }
  # The base image, loaded again when the host's copy changed (same image ID after save/load).
  local want
  want=$(docker image inspect -f '{{.Id}}' "$BASE_IMAGE")
  if [[ "$(inner image inspect -f '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || true)" != "$want" ]]; then
    docker save "$BASE_IMAGE" | inner load >/dev/null || die "could not load $BASE_IMAGE into the inner engine"
  fi
  echo "remote-engine: running (storage driver $(inner info -f '{{.Driver}}')): DOCKER_HOST=$PLAIN"
  echo "remote-engine: TLS: DOCKER_HOST=$TLS DOCKER_TLS_VERIFY=1 DOCKER_CERT_PATH=$CERTS"
}

stop() {
  # A clean shutdown of the inner dockerd first (its state is on the volume).
  docker stop -t 30 "$NAME" >/dev/null 2>&1 || true
  docker rm -f "$NAME" >/dev/null 2>&1 || true
  if [[ "${1:-}" == --purge ]]; then
    docker volume rm "$VOLUME" >/dev/null 2>&1 || true
  fi
}

case "${1:-}" in
  start) start ;;
  stop) stop "${2:-}" ;;
  env) print_env ;;
  *) die "usage: $0 start | stop [--purge] | env" ;;
esac
