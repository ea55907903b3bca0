// An agent-style loop: run every command a model proposes, auto-approved, in a sandbox.
// No model is called: PROPOSED stands in for what an LLM would suggest. Refusals come back as
// data (exit codes, events) the agent can read and correct itself with. Each command gets a
// fresh sandbox from a pool that starts the next one while the agent is thinking.
//
//   node examples/node/agent.mjs [WORKSPACE]
import { mkdtempSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Sandbox, SandboxError } from 'agent-sandbox'

const PROPOSED = [
  'node --version 2>/dev/null || echo "no node in this image"',
  'echo "console.log(1 + 1)" > sum.js && ls -l /workspace',
  'curl -sS -o /dev/null https://registry.npmjs.org/', // not allowed: the proxy refuses it
  'rm -rf /usr 2>&1 | tail -1', // harmless: the root is read-only
]

const workspace = process.argv[2] ?? mkdtempSync(join(tmpdir(), 'agent-ws-'))
const sandbox = new Sandbox({ workspace, allow: ['pypi.org'], timeoutMs: 60_000, memory: '512m' })

let pool
try {
  pool = await sandbox.pool(2) // or sandbox.run(cmd): the same box, started on demand
  for (const cmd of PROPOSED) {
    console.log(`$ ${cmd}`)
    const r = await pool.run(cmd)
    for (const line of (r.stdout + r.stderr).split('\n').filter(Boolean)) console.log(`  ${line}`)
    for (const e of r.events.filter((e) => e.verdict === 'deny')) {
      console.log(`  (network: ${e.host}:${e.port} refused: ${e.reason})`)
    }
    console.log(`  -> exit ${r.exitCode} (${Math.round(r.durationMs)} ms)`)
  }
} catch (e) {
  if (e instanceof SandboxError) {
    console.log(`  sandbox error [${e.code}]: ${e.message}`)
    process.exitCode = 1
  } else {
    throw e
  }
} finally {
  await pool?.close() // Node 22+: `await using pool = ...`
}
