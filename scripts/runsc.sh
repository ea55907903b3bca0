#!/usr/bin/env bash
# Idempotent: gVisor (runsc) registered with Docker as a second runtime named "runsc".
#  - installs runsc from Debian's packages if it is missing
#  - merges the runtime entry into /etc/docker/daemon.json (other keys kept) if absent or different
#  - sends SIGHUP to dockerd when daemon.json changed, and waits until `docker info` lists runsc
# Does nothing when everything is already in place.
set -euo pipefail
DAEMON_JSON=${DOCKER_DAEMON_JSON:-/etc/docker/daemon.json}
RUNTIME=runsc

if ! command -v runsc >/dev/null; then
  echo "runsc: installing runsc from Debian's packages"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq runsc >/dev/null
fi
RUNSC=$(command -v runsc)

# Prints "changed" if it rewrote daemon.json, nothing otherwise.
changed=$(python3 - "$DAEMON_JSON" "$RUNTIME" "$RUNSC" <<'EOF'
import json, os, shutil, sys
path, name, binary = sys.argv[1:4]
want = {"path": binary, "runtimeArgs": ["--network=none", "--host-uds=all"]}
try:
    with open(path) as f:
        text = f.read()
    cfg = json.loads(text) if text.strip() else {}
except FileNotFoundError:
    cfg = {}
if not isinstance(cfg, dict):
    sys.exit(f"runsc: {path} is not a JSON object")
runtimes = cfg.setdefault("runtimes", {})
if runtimes.get(name) == want:
    sys.exit(0)
runtimes[name] = want
os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
tmp = path + ".tmp"
with open(tmp, "w") as f:
    json.dump(cfg, f, indent=2)
    f.write("\n")
if os.path.exists(path):
    shutil.copymode(path, tmp)
os.replace(tmp, path)
print("changed")
EOF
)

has_runtime() { docker info --format '{{json .Runtimes}}' 2>/dev/null | grep -q "\"$RUNTIME\""; }

if [[ "$changed" == changed ]]; then
  echo "runsc: registered runtime \"$RUNTIME\" ($RUNSC) in $DAEMON_JSON; reloading dockerd"
  pid=$(pidof dockerd || true)
  [[ -n "$pid" ]] || { echo "runsc: dockerd is not running; start it (scripts/docker.sh) and rerun" >&2; exit 1; }
  kill -HUP $pid
fi

if ! has_runtime; then
  for _ in $(seq 60); do has_runtime && break; sleep 0.5; done
  has_runtime || { echo "runsc: docker info does not list runtime \"$RUNTIME\" after 30 s" >&2; exit 1; }
fi
