// The @openai/agents adapter driven by the SDK's own Runner with a scripted
// model (no model calls, no network).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { mkdtempSync, chownSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Runner, setTracingDisabled } from '@openai/agents'
import { SandboxAgent, Manifest } from '@openai/agents/sandbox'
import { ScriptedModel, functionCall, assistantMessage } from '@openai/agents/testing'
import { AgentSandboxClient } from 'agent-sandbox/openai-agents'

const image = process.env.AGENT_SANDBOX_IMAGE ?? 'agent-sandbox/base:bookworm'
setTracingDisabled(true)

test('the Runner runs commands and apply_patch in an agent-sandbox session', async () => {
  const ws = mkdtempSync(join(tmpdir(), 'as-oajs-'))
  if (process.getuid() === 0) chownSync(ws, 1000, 1000)
  const model = new ScriptedModel([
    [functionCall('exec_command', { cmd: 'echo hi > a.txt && cat a.txt && id -u && pwd' }, { callId: 'c1' })],
    [{ type: 'apply_patch_call', callId: 'c2', status: 'completed', operation: { type: 'create_file', path: 'b.txt', diff: '+patched\n' } }],
    [functionCall('exec_command', { cmd: 'cat /etc/shadow; curl -fsS http://denied.test/ || echo refused' }, { callId: 'c3' })],
    [assistantMessage('done')],
  ])
  const agent = new SandboxAgent({ name: 'dev', instructions: 'work in the sandbox', model, defaultManifest: new Manifest({ root: '/workspace' }) })
  const client = new AgentSandboxClient({ image, workspace: ws })
  const result = await new Runner().run(agent, 'go', { sandbox: { client, options: {} } })
  assert.equal(result.finalOutput, 'done')
  assert.equal(readFileSync(join(ws, 'a.txt'), 'utf8'), 'hi\n')
  assert.equal(readFileSync(join(ws, 'b.txt'), 'utf8').trimEnd(), 'patched')
  const outputs = result.newItems.map((i) => JSON.stringify(i.rawItem?.output ?? ''))
  assert.ok(outputs.some((o) => o.includes('hi') && o.includes('1000') && o.includes('/workspace')), outputs.join('\n'))
  assert.ok(outputs.some((o) => o.includes('Permission denied') && o.includes('denied.test') && o.includes('no-matching-rule')), outputs.join('\n'))
})

test('an exposed port of a session resolves to the host loopback', async () => {
  const client = new AgentSandboxClient({ image })
  const s = await client.create({ manifest: new Manifest({ root: '/workspace' }) })
  try {
    await s.session.spawn(['python3', '-m', 'http.server', '8000', '--bind', '127.0.0.1'])
    const end = await s.resolveExposedPort(8000)
    assert.equal(end.host, '127.0.0.1')
    let body = ''
    for (let i = 0; i < 50 && !body.includes('Directory'); i++) {
      body = await fetch(end.url).then((r) => r.text(), () => '')
      if (!body.includes('Directory')) await new Promise((r) => setTimeout(r, 100))
    }
    assert.match(body, /Directory listing/)
  } finally {
    await s.shutdown()
  }
})

test('a long command yields a session id that write_stdin polls and Ctrl-C interrupts', async () => {
  const model = new ScriptedModel([
    [functionCall('exec_command', { cmd: 'for i in 1 2 3; do echo tick$i; sleep 0.4; done', yield_time_ms: 100 }, { callId: 'e1' })],
    [functionCall('write_stdin', { session_id: 1, chars: '', yield_time_ms: 5000 }, { callId: 'e2' })],
    [functionCall('exec_command', { cmd: 'trap "echo interrupted; exit 3" INT; echo waiting; while :; do sleep 0.1; done', yield_time_ms: 300 }, { callId: 'e3' })],
    [functionCall('write_stdin', { session_id: 2, chars: 'typed', yield_time_ms: 200 }, { callId: 'e4' })],
    [functionCall('write_stdin', { session_id: 2, chars: '\u0003', yield_time_ms: 5000 }, { callId: 'e5' })],
    [functionCall('write_stdin', { session_id: 2, chars: '', yield_time_ms: 10 }, { callId: 'e6' })],
    [assistantMessage('done')],
  ])
  const agent = new SandboxAgent({ name: 'dev', instructions: 'work in the sandbox', model, defaultManifest: new Manifest({ root: '/workspace' }) })
  const client = new AgentSandboxClient({ image })
  const result = await new Runner().run(agent, 'go', { sandbox: { client, options: {} } })
  assert.equal(result.finalOutput, 'done')
  const outputs = result.newItems.map((i) => JSON.stringify(i.rawItem?.output ?? '')).join('\n')
  assert.match(outputs, /Process running with session ID 1[^"]*tick1/)
  assert.doesNotMatch(outputs, /Process running with session ID 1[^"]*tick3/)
  assert.match(outputs, /Process exited with code 0[^"]*tick2\\ntick3/)
  assert.match(outputs, /session ID 2[^"]*takes no input/)
  assert.match(outputs, /Process exited with code 3[^"]*interrupted/)
  assert.match(outputs, /session not found: 2/)
})
