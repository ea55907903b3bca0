#!/usr/bin/env bash
# Builds the napi addon into npm/ and regenerates npm/native.d.ts from the
# Rust definitions (committed; a diff after a build means it was stale).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools=${AGENT_SANDBOX_NODETOOLS:-/var/tmp/agent-sandbox-nodetools}
if [[ ! -x "$tools/node_modules/.bin/napi" || ! -x "$tools/node_modules/.bin/tsc" ]]; then
  mkdir -p "$tools"
  [[ -f "$tools/package.json" ]] || echo '{"private":true}' > "$tools/package.json"
  (cd "$tools" && npm install --silent --no-audit --no-fund @napi-rs/cli@3.10 typescript@5)
fi
cd "$root/npm"
"$tools/node_modules/.bin/napi" build --platform --release --manifest-path ../bindings/node/Cargo.toml \
  --package-json-path package.json --output-dir . --dts native.d.ts --no-js --no-const-enum
