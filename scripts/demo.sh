#!/usr/bin/env bash
# make demo: one sandboxed run, five checks. A local HTTPS server stands in
# for the allowed site; the proxy reaches it through a resolve pin.
set -euo pipefail
BIN=${1:?usage: demo.sh path/to/agent-sandbox}
work=$(mktemp -d /tmp/agent-sandbox-demo.XXXXXX)
cleanup() { kill $(jobs -p) 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work"; }
trap cleanup EXIT
mkdir -p "$work/ws" "$work/site"
echo "hello from allowed.test (a local HTTPS server)" > "$work/site/index.html"
openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj "/CN=allowed.test" \
  -addext "subjectAltName=DNS:allowed.test" -keyout "$work/key.pem" -out "$work/ws/ca.pem" 2>/dev/null
python3 - "$work" >"$work/port" 2>/dev/null <<'PY' &
import http.server, ssl, sys, functools
work = sys.argv[1]
handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=work + "/site")
srv = http.server.ThreadingHTTPServer(("0.0.0.0", 0), handler)
ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
ctx.load_cert_chain(work + "/ws/ca.pem", work + "/key.pem")
srv.socket = ctx.wrap_socket(srv.socket, server_side=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
PY
for _ in $(seq 50); do [[ -s "$work/port" ]] && break; sleep 0.1; done
port=$(cat "$work/port")
host_ip=$(hostname -I 2>/dev/null | awk '{print $1}'); host_ip=${host_ip:-127.0.0.1}

cat > "$work/ws/checks.sh" <<SH
ok() { echo "   -> PASS: \$1"; }
no() { echo "   -> FAIL: \$1"; fails=\$((fails + 1)); }
fails=0
echo "1. allowed: https://allowed.test:$port/ through the proxy"
if curl -sS --cacert /workspace/ca.pem https://allowed.test:$port/; then ok "the allowed site answered"; else no "the allowed site did not answer"; fi
echo "2. not on the list: https://denied.test:$port/"
msg=\$(curl -sS --max-time 5 https://denied.test:$port/ 2>&1); echo "   \$msg"
case "\$msg" in *403*) ok "refused by the proxy (403)";; *) no "not refused";; esac
echo "3. rm -rf /bin on the read-only root"
rm -rf /bin 2>&1 | head -1 | sed 's/^/   /'
if test -x /bin/sh; then ok "/bin is still there"; else no "/bin was removed"; fi
echo "4. write to the workspace"
if echo "written inside the sandbox" > /workspace/hello.txt; then ok "wrote /workspace/hello.txt as uid \$(id -u)"; else no "could not write"; fi
echo "5. ignore the proxy: connect straight to the host ($host_ip:$port) and to 127.0.0.1:$port"
for addr in $host_ip 127.0.0.1; do
  if python3 -c "import socket; socket.create_connection(('\$addr', $port), timeout=5)" 2>/tmp/err; then
    no "reached \$addr:$port directly"
  else
    echo "   \$addr: \$(tail -1 /tmp/err)"; ok "no way to \$addr but the proxy"
  fi
done
echo "6. ignore the proxy by name (no proxy variables): init answers DNS and captures the connection into the same proxy"
for name in allowed.test denied.test; do
  if env -u HTTPS_PROXY -u https_proxy -u ALL_PROXY -u all_proxy python3 -c "import ssl, urllib.request as u; print('  ', u.build_opener(u.ProxyHandler({}), u.HTTPSHandler(context=ssl.create_default_context(cafile='/workspace/ca.pem'))).open('https://\$name:$port/', timeout=10).read().decode().strip())" 2>/tmp/err; then
    [ \$name = allowed.test ] && ok "\$name reached through capture" || no "\$name reached"
  else
    echo "   \$name: \$(tail -1 /tmp/err)"; [ \$name = denied.test ] && ok "\$name refused through capture" || no "\$name not reached"
  fi
done
exit \$fails
SH

# A root caller's sandbox runs as the workspace's owner, never as root.
if [[ $(id -u) == 0 ]]; then chown -R 1000:1000 "$work/ws"; fi
echo "== agent-sandbox run --allow allowed.test:$port (resolved to the local server) -- sh /workspace/checks.sh"
"$BIN" run --image "${AGENT_SANDBOX_IMAGE:-agent-sandbox/base:bookworm}" --workspace "$work/ws" --allow "allowed.test:$port" --resolve "allowed.test:$port:127.0.0.1" \
  --audit-log "$work/audit.jsonl" -- sh /workspace/checks.sh || { echo "demo: a check failed" >&2; exit 1; }
echo "== on the host: the file the sandbox wrote, owned by the workspace's owner (the caller unless the caller is root)"
ls -ln "$work/ws/hello.txt"
echo "== audit log"
cat "$work/audit.jsonl"
