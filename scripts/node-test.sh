#!/usr/bin/env bash
# Packs the npm package, installs the tarball into a fresh project, and runs
# the tests and a TypeScript check there, against the installed package.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
"$root/scripts/node-build.sh"
proj=$(mktemp -d /tmp/agent-sandbox-npm.XXXXXX)
trap 'rm -rf "$proj"' EXIT
(cd "$root/npm" && npm pack --silent --pack-destination "$proj" >/dev/null)
cd "$proj"
echo '{"private":true,"type":"module"}' > package.json
npm install --silent --no-audit --no-fund ./agent-sandbox-*.tgz @types/node@20
cp -r "$root/npm/__test__" "$root/examples/node" .
"$root/npm/node_modules/.bin/tsc" --noEmit --strict --target es2022 --module nodenext --moduleResolution nodenext \
  --lib es2022,dom --types node node/typed.mts
node --test __test__/
