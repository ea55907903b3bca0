#!/usr/bin/env bash
# The MCP server and the framework adapters against the real frameworks:
# the official MCP Python and TypeScript SDKs, openai-agents and deepagents
# (versions pinned in tests/integrations). Their environments are cached
# under /var/tmp; the wheel (scripts/python-test.sh builds it) is installed
# fresh each time, and the CLI is the one `cargo test` built.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
target=${CARGO_TARGET_DIR:-/var/tmp/agent-sandbox-target}
cache=${AGENT_SANDBOX_INTEGRATIONS:-/var/tmp/agent-sandbox-integrations}
export AGENT_SANDBOX_BIN=${AGENT_SANDBOX_BIN:-$target/debug/agent-sandbox}
[[ -x "$AGENT_SANDBOX_BIN" ]] || cargo build -p agent-sandbox-cli
req="$root/tests/integrations/python/requirements.txt"
mkdir -p "$cache"
if ! cmp -s "$req" "$cache/py.requirements" 2>/dev/null; then
  rm -rf "$cache/py"
  python3 -m venv "$cache/py"
  "$cache/py/bin/pip" install -q -r "$req"
  cp "$req" "$cache/py.requirements"
fi
"$cache/py/bin/pip" install -q --force-reinstall --no-deps "$target"/wheels/agent_sandbox-*.whl
(cd "$cache" && LANGSMITH_TRACING=false "$cache/py/bin/pytest" -q -p no:cacheprovider "$root/tests/integrations/python")
pkg="$root/tests/integrations/node/package.json"
if ! cmp -s "$pkg" "$cache/node/package.json" 2>/dev/null; then
  rm -rf "$cache/node"
  mkdir -p "$cache/node"
  cp "$pkg" "$cache/node/"
  (cd "$cache/node" && npm install --silent --no-audit --no-fund)
fi
# The package as users get it: packed, then installed (its addon built by node-test.sh).
[[ -f "$root/npm/agent-sandbox.linux-x64-gnu.node" ]] || "$root/scripts/node-build.sh"
tgz=$(cd "$root/npm" && npm pack --silent --pack-destination "$cache")
(cd "$cache/node" && npm install --silent --no-audit --no-fund --no-save "$cache/$tgz")
cp "$root"/tests/integrations/node/*.test.mjs "$cache/node/"
(cd "$cache/node" && node --test ./*.test.mjs)
