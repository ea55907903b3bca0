#!/usr/bin/env bash
# Podman's Docker-compatible API for the tests, rootful. Idempotent.
#   scripts/podman.sh start   install podman if absent, run `podman system service`, load the base image
#   scripts/podman.sh stop    stop the service this script started
#   scripts/podman.sh env     print the variable a test sets
# Rootless Podman is not offered: on this cgroup v1 host it runs containers
# but ignores --memory/--pids-limit ("Resource limits are not supported and
# ignored on cgroups V1 rootless systems"), which the sandbox relies on.
set -euo pipefail
BASE_IMAGE=${AGENT_SANDBOX_BASE_IMAGE:-agent-sandbox/base:bookworm}
RUN=/run/agent-sandbox-podman
SOCK=$RUN/podman.sock
PIDFILE=$RUN/podman.pid
LOG=/var/log/agent-sandbox-podman.log
# The host's engine for `docker save`, whatever the caller points DOCKER_HOST at.
unset DOCKER_HOST DOCKER_TLS_VERIFY DOCKER_CERT_PATH DOCKER_CONTEXT

die() { echo "podman: $*" >&2; exit 1; }
compat() { DOCKER_HOST=unix://$SOCK docker "$@"; }
# `/_ping`, never `/version`: Podman 4.3 answers `/version` by running the
# package manager on conmon, which now and then did not return for minutes.
answers() { curl -sf --max-time 5 --unix-socket "$SOCK" http://d/_ping >/dev/null 2>&1; }
# The pid in PIDFILE, if it is still our service.
service_pid() {
  local pid
  pid=$(cat "$PIDFILE" 2>/dev/null) || return 1
  [[ -n "$pid" ]] && tr '\0' ' ' 2>/dev/null <"/proc/$pid/cmdline" | grep -q "system service.*unix://$SOCK" && echo "$pid"
}

install() {
  command -v podman >/dev/null && return 0
  echo "podman: installing podman from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  local pkgs=(podman netavark uidmap slirp4netns fuse-overlayfs) p
  for p in catatonit; do apt-cache show "$p" >/dev/null 2>&1 && pkgs+=("$p"); done
  apt-get install -y -qq --no-install-recommends "${pkgs[@]}" >/dev/null
}

start() {
  local started=
  install
  docker info >/dev/null 2>&1 || die "the host's Docker engine does not answer (scripts/docker.sh starts it)"
  mkdir -p "$RUN"
  if ! answers; then
    if ! service_pid >/dev/null; then
      # Rootful Podman gives every container RLIMIT_NOFILE and RLIMIT_NPROC
      # 1048576; raising a hard limit needs CAP_SYS_RESOURCE, which this
      # machine's bounding set lacks, so runc failed with "error setting
      # rlimit type 7: operation not permitted". Use the limits the service
      # itself runs with (it lowers its own RLIMIT_NPROC to 32768).
      local nofile nproc
      nofile=$(ulimit -Hn); [[ $nofile == unlimited || $nofile -gt 1048576 ]] && nofile=1048576
      nproc=$(ulimit -Hu); [[ $nproc == unlimited || $nproc -gt 32768 ]] && nproc=32768
      printf '[containers]\ndefault_ulimits = ["nofile=%s:%s", "nproc=%s:%s"]\n' \
        "$nofile" "$nofile" "$nproc" "$nproc" >"$RUN/containers.conf"
      rm -f "$SOCK"
      CONTAINERS_CONF=$RUN/containers.conf setsid podman system service --time=0 "unix://$SOCK" \
        >>"$LOG" 2>&1 </dev/null &
      echo $! >"$PIDFILE"
      started=1
    fi
    local i
    for i in $(seq 60); do answers && break; sleep 0.5; done
    answers || { tail -20 "$LOG" >&2; die "podman's API did not answer on unix://$SOCK within 30 s; see $LOG"; }
  fi
  # The base image, loaded again when the host's copy changed (same image ID after save/load).
  local want
  want=$(docker image inspect -f '{{.Id}}' "$BASE_IMAGE" 2>/dev/null) \
    || die "$BASE_IMAGE is missing on the host (scripts/docker.sh builds it)"
  if [[ "$(compat image inspect -f '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || true)" != "$want" ]]; then
    docker save "$BASE_IMAGE" | podman load -q >/dev/null || die "podman load of $BASE_IMAGE failed"
    # podman stores it as localhost/$BASE_IMAGE; the compat API resolves the short name to it.
    [[ "$(compat image inspect -f '{{.Id}}' "$BASE_IMAGE" 2>/dev/null || true)" == "$want" ]] \
      || die "loaded $BASE_IMAGE, but the compat API does not resolve that name to it"
  fi
  [[ -z "${started:-}" ]] || compat run --rm --network none "$BASE_IMAGE" true \
    || die "the compat API answers but cannot run a container; see $LOG"
  echo "podman: running ($(podman --version)): DOCKER_HOST=unix://$SOCK"
}

stop() {
  local pid i
  if pid=$(service_pid); then
    kill "$pid"
    for i in $(seq 40); do kill -0 "$pid" 2>/dev/null || break; sleep 0.25; done
    kill -0 "$pid" 2>/dev/null && die "the service (pid $pid) did not stop within 10 s"
  fi
  rm -f "$PIDFILE" "$SOCK"
}

case "${1:-}" in
  start) start ;;
  stop) stop ;;
  env) echo "DOCKER_HOST=unix://$SOCK" ;;
  *) die "usage: $0 start | stop | env" ;;
esac
