#!/usr/bin/env bash
# Builds the wheel with maturin, installs it into a fresh virtual environment,
# and runs pytest against the installed package (not the source tree), so a
# packaging mistake fails here.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools=${AGENT_SANDBOX_PYTOOLS:-/var/tmp/agent-sandbox-pytools}
wheels=${CARGO_TARGET_DIR:-/var/tmp/agent-sandbox-target}/wheels
if [[ ! -x "$tools/bin/maturin" ]]; then
  python3 -m venv "$tools"
  "$tools/bin/pip" install -q "maturin>=1.16,<2"
fi
rm -rf "$wheels"
(cd "$root/python" && "$tools/bin/maturin" build --release --quiet --out "$wheels")
venv=$(mktemp -d /tmp/agent-sandbox-pyvenv.XXXXXX)
trap 'rm -rf "$venv"' EXIT
python3 -m venv "$venv"
"$venv/bin/pip" install -q "$wheels"/agent_sandbox-*.whl "pytest>=8"
cd "$venv"   # away from the source tree: only the installed package can be imported
"$venv/bin/pytest" -q -p no:cacheprovider "$root/python/tests" "$@"
