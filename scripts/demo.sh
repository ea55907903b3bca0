#!/usr/bin/env bash
# The gatekeeper on its own: a local server stands in for "the internet",
# reached through the proxy by a resolve pin; one name is allowed, one is not.
set -euo pipefail
BIN=${1:?usage: demo.sh path/to/agent-sandbox}
work=$(mktemp -d /tmp/agent-sandbox-demo.XXXXXX)
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT

echo "hello from allowed.test" > "$work/index.html"
python3 -m http.server 0 --bind 127.0.0.1 --directory "$work" >"$work/http.log" 2>&1 &
for _ in $(seq 50); do port=$(grep -oE 'port [0-9]+' "$work/http.log" | grep -oE '[0-9]+' || true); [[ -n "$port" ]] && break; sleep 0.1; done
"$BIN" proxy --listen "unix:$work/proxy.sock" \
  --allow "allowed.test:$port" --resolve "allowed.test:$port:127.0.0.1" \
  --audit-log "$work/audit.jsonl" 2>"$work/proxy.log" &
for _ in $(seq 50); do [[ -S "$work/proxy.sock" ]] && break; sleep 0.1; done
# curl speaks to the proxy's unix socket through a tiny TCP bridge-free path:
# --unix-socket with an absolute-URI request is exactly what a sandbox sends.
px() { local url=$1; shift; curl -sS --max-time 5 --unix-socket "$work/proxy.sock" --request-target "$url" "$@" "$url"; }

echo "== allowed: http://allowed.test:$port/ (the proxy resolves it to the local server)"
px "http://allowed.test:$port/"
echo "== denied: http://denied.test:$port/ (not on the list; never resolved, never dialled)"
px "http://denied.test:$port/" -D - -o /dev/null | grep -iE '^(HTTP|x-agent-sandbox-denied)'
echo "== denied: http://127.0.0.1:$port/ (IP literals need an allow_cidr rule)"
px "http://127.0.0.1:$port/" -D - -o /dev/null | grep -iE '^(HTTP|x-agent-sandbox-denied)'
echo "== audit log (JSON lines)"
cat "$work/audit.jsonl"
