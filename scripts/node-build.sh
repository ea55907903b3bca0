#!/usr/bin/env bash
# Builds the napi addon into npm/ the napi-rs way: `npm install && npm run
# build` (the build script is @napi-rs/cli's `napi build`, a devDependency).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root/npm"
if [[ ! -x node_modules/.bin/napi ]]; then
  npm install --silent --no-audit --no-fund
fi
npm run --silent build
