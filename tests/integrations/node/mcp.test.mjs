// `agent-sandbox mcp` driven by the official MCP TypeScript SDK as a stdio
// client. No model: the test calls the tools itself.
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createServer } from 'node:net'
import { mkdtempSync, chownSync, readFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join } from 'node:path'
import { Client } from '@modelcontextprotocol/sdk/client/index.js'
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js'

const bin = process.env.AGENT_SANDBOX_BIN
const image = process.env.AGENT_SANDBOX_IMAGE ?? 'agent-sandbox/base:bookworm'

test('the TypeScript SDK lists, validates and calls every kind of tool', async () => {
  const ws = mkdtempSync(join(tmpdir(), 'as-mcp-'))
  if (process.getuid() === 0) chownSync(ws, 1000, 1000)
  // A canary that counts connections: the denied host must reach nothing.
  let connections = 0
  const canary = createServer((c) => { connections++; c.destroy() })
  await new Promise((r) => canary.listen(0, '127.0.0.1', r))
  const port = canary.address().port
  const transport = new StdioClientTransport({
    command: bin,
    args: ['mcp', '--image', image, '--workspace', ws, '--resolve', `denied.test:${port}:127.0.0.1`],
    stderr: 'inherit',
  })
  const client = new Client({ name: 'agent-sandbox-test', version: '1.0.0' })
  await client.connect(transport)
  try {
    const { tools } = await client.listTools()
    assert.deepEqual(tools.map((t) => t.name).sort(), ['list_files', 'process_output', 'read_file', 'remove_file',
      'request_access', 'run_command', 'start_process', 'stop_process', 'write_file'])
    for (const t of tools) {
      assert.equal(t.inputSchema.type, 'object')
      assert.ok(t.description.length > 40, t.name)
    }
    const run = tools.find((t) => t.name === 'run_command')
    assert.deepEqual(run.inputSchema.required, ['command'])

    const out = await client.callTool({ name: 'run_command', arguments: { command: 'echo hi; exit 2' } })
    assert.equal(out.isError, false)
    assert.equal(out.structuredContent.exit_code, 2)
    assert.equal(out.structuredContent.stdout, 'hi\n')

    await client.callTool({ name: 'write_file', arguments: { path: 'notes/a.txt', content: 'from ts\n' } })
    assert.equal(readFileSync(join(ws, 'notes/a.txt'), 'utf8'), 'from ts\n')
    const read = await client.callTool({ name: 'read_file', arguments: { path: 'notes/a.txt' } })
    assert.equal(read.structuredContent.content, 'from ts\n')
    const list = await client.callTool({ name: 'list_files', arguments: { path: 'notes' } })
    assert.deepEqual(list.structuredContent.entries, [{ name: 'a.txt', kind: 'file', size: 8 }])
    const rm = await client.callTool({ name: 'remove_file', arguments: { path: 'notes/a.txt' } })
    assert.equal(rm.isError, false)
    const bad = await client.callTool({ name: 'read_file', arguments: { path: 'notes/a.txt' } })
    assert.equal(bad.isError, true)
    assert.equal(bad.structuredContent.code, 'file')

    const started = await client.callTool({ name: 'start_process', arguments: { command: 'echo up; exec sleep 1000' } })
    const id = started.structuredContent.process_id
    let text = ''
    for (let i = 0; i < 50 && !text.includes('up'); i++) {
      const o = await client.callTool({ name: 'process_output', arguments: { process_id: id } })
      text += o.structuredContent.stdout
      if (!text.includes('up')) await new Promise((r) => setTimeout(r, 100))
    }
    assert.equal(text, 'up\n')
    const stopped = await client.callTool({ name: 'stop_process', arguments: { process_id: id } })
    assert.equal(stopped.structuredContent.exit_code, 137)

    const denied = await client.callTool({ name: 'run_command', arguments: { command: `curl -fsS http://denied.test:${port}/ || echo refused` } })
    assert.match(denied.structuredContent.stdout, /refused/)
    assert.equal(denied.structuredContent.refusals[0].host, 'denied.test')
    assert.equal(denied.structuredContent.refusals[0].reason, 'no-matching-rule')
    assert.equal(connections, 0)
    const access = await client.callTool({ name: 'request_access', arguments: { host: 'denied.test', port, reason: 'test' } })
    assert.equal(access.isError, true)
    assert.match(access.structuredContent.message, /--allow denied\.test/)
  } finally {
    await client.close()
    canary.close()
  }
})
