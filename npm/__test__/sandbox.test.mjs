// Runs against the installed package (scripts/node-test.sh installs the packed tarball).
import { test } from 'node:test'
import assert from 'node:assert/strict'
import { createServer } from 'node:http'
import { execFileSync, spawnSync } from 'node:child_process'
import { createRequire } from 'node:module'
import { mkdtempSync, mkdirSync, symlinkSync, readFileSync, statSync, existsSync, chownSync, writeFileSync } from 'node:fs'
import { tmpdir } from 'node:os'
import { join, dirname } from 'node:path'
import { fileURLToPath } from 'node:url'
import { Sandbox, SandboxError } from 'agent-sandbox'

const image = process.env.AGENT_SANDBOX_IMAGE ?? 'agent-sandbox/base:bookworm'
const here = dirname(fileURLToPath(import.meta.url))
const sandbox = (opts = {}) => new Sandbox({ image, ...opts })
// A root caller's sandbox runs as the workspace's owner and refuses a
// root-owned workspace: the tests' workspaces belong to an ordinary user.
const TEST_UID = 1000
function workspace(prefix) {
  const ws = mkdtempSync(join(tmpdir(), prefix))
  if (process.getuid() === 0) chownSync(ws, TEST_UID, TEST_UID)
  return ws
}

function ownedContainers() {
  const out = execFileSync('docker', ['ps', '-a', '--filter', 'label=agent-sandbox', '--format', '{{.Label "agent-sandbox.owner"}}'], { encoding: 'utf8' })
  return out.split('\n').filter((l) => l.includes(`:${process.pid}:`))
}

test('the installed package is tested, and require works too', () => {
  const require = createRequire(import.meta.url)
  const cjs = require('agent-sandbox')
  assert.ok(require.resolve('agent-sandbox').includes('node_modules'))
  assert.equal(typeof cjs.Sandbox, 'function')
  assert.equal(cjs.SandboxError, SandboxError)
})

test('run returns exit code and output, and writes land in the workspace as the caller', async () => {
  const ws = workspace('as-node-')
  const r = await sandbox({ workspace: ws }).run('echo out; echo err >&2; echo data > /workspace/f; exit 3')
  assert.equal(r.exitCode, 3)
  assert.equal(r.stdout, 'out\n')
  assert.equal(r.stderr, 'err\n')
  assert.equal(r.timedOut, false)
  assert.ok(r.durationMs > 0)
  assert.equal(readFileSync(join(ws, 'f'), 'utf8'), 'data\n')
  assert.equal(statSync(join(ws, 'f')).uid, statSync(ws).uid)
  JSON.parse(JSON.stringify(r)) // plain, serialisable
  assert.deepEqual(ownedContainers(), [])
})

test('an array runs without a shell', async () => {
  const r = await sandbox().run(['printf', '%s|', 'a b', '$HOME'])
  assert.equal(r.stdout, 'a b|$HOME|')
})

test('onStdout streams chunks as they arrive', async () => {
  const chunks = []
  const r = await sandbox().run('for i in 1 2 3; do echo line$i; sleep 0.1; done', { onStdout: (c) => chunks.push(c) })
  assert.equal(chunks.join(''), 'line1\nline2\nline3\n')
  assert.ok(chunks.length >= 2)
  assert.equal(r.stdout, chunks.join(''))
})

test('run takes the per-command options of exec', async () => {
  const r = await sandbox({ env: { A: 'sandbox' } }).run('echo "$A $B $(pwd)"; cat', { env: { B: 'run' }, workdir: '/workspace', stdin: 'fed' })
  assert.equal(r.stdout, 'sandbox run /workspace\nfed')
  assert.ok((await sandbox().run('sleep 5', { timeoutMs: 500 })).timedOut)
  assert.ok(!(await sandbox().run('sleep 0.1')).timedOut, 'control: without the timeout it finishes')
})

test('timeoutMs kills the command and says so', async () => {
  const r = await sandbox({ timeoutMs: 1500 }).run("trap '' TERM; sleep 60")
  assert.equal(r.timedOut, true)
})

test('an AbortSignal cancels the run and removes its container', async () => {
  const ac = new AbortController()
  const p = sandbox().run('sleep 60', { signal: ac.signal })
  for (let i = 0; i < 100 && ownedContainers().length === 0; i++) await new Promise((r) => setTimeout(r, 100))
  assert.equal(ownedContainers().length, 1, 'the sandbox started')
  ac.abort(new Error('user pressed stop'))
  await assert.rejects(p, (e) => e instanceof SandboxError && e.code === 'cancelled' && e.cause?.message === 'user pressed stop')
  assert.deepEqual(ownedContainers(), [])
  await assert.rejects(sandbox().run('true', { signal: AbortSignal.abort() }), (e) => e.code === 'cancelled')
})

test('errors are SandboxError with the core code and a message that says what to do', async () => {
  // Rules and options are checked at construction; unknown or mistyped
  // options name the option as JavaScript spells it.
  assert.throws(() => sandbox({ allow: ['*.com'] }), (e) => e instanceof SandboxError && e.code === 'policy' && e.message.includes('*.com'))
  assert.throws(() => sandbox({ timeout: 5 }), (e) => e instanceof SandboxError && e.code === 'invalid_argument' && e.message.includes('timeoutMs'))
  assert.throws(() => sandbox({ timeoutMs: NaN }), (e) => e instanceof SandboxError && e.code === 'invalid_argument')
  assert.throws(() => sandbox({ allow: 'x' }), (e) => e instanceof SandboxError && e.code === 'invalid_argument' && e.message.includes('"allow"'))
  await assert.rejects(sandbox().run('true', { timeoutMs: 1, env: { A: 1 } }), (e) => e instanceof SandboxError && e.message.includes('"env"'))
  await assert.rejects(sandbox().run('true', { timout: 1 }), (e) => e.code === 'invalid_argument' && e.message.includes('"timout"'))
  await assert.rejects(sandbox({ workspace: '/nonexistent/as-ws' }).run('true'), (e) => e.code === 'workspace' && /does not exist/.test(e.message))
  assert.throws(() => sandbox({ memory: 'lots' }), (e) => e.code === 'invalid_argument')
  await assert.rejects(new Sandbox({ image: 'localhost:1/agent-sandbox/missing:1' }).run('true'), (e) => e.code === 'image_not_found')
  const child = spawnSync(process.execPath, ['--input-type=module', '-e', `
    import { Sandbox } from 'agent-sandbox'
    try { await new Sandbox({ image: ${JSON.stringify(image)} }).run('true') } catch (e) { console.log(e.code + ' ' + e.message) }
  `], { env: { ...process.env, DOCKER_HOST: 'unix:///nonexistent/as.sock' }, encoding: 'utf8', cwd: process.cwd() })
  assert.match(child.stdout, /^docker_unavailable Docker is not reachable.*Start the engine/)
})

test('the policy allows and denies, proven by a local canary', async () => {
  const hits = []
  const server = createServer((req, res) => { hits.push(req.url); res.end('hello from canary') })
  await new Promise((r) => server.listen(0, '127.0.0.1', r))
  const port = server.address().port
  const events = []
  try {
    const r = await sandbox({ allow: [`allowed.test:${port}`], resolve: [`allowed.test:${port}:127.0.0.1`] }).run(
      `curl -sS http://allowed.test:${port}/ok; echo; curl -s -o /dev/null -w '%{http_code}' http://denied.test:${port}/no`,
      { onEvent: (e) => events.push(e) },
    )
    assert.equal(r.stdout, 'hello from canary\n403', r.stderr)
    assert.deepEqual(hits, ['/ok'])
    const denied = r.events.find((e) => e.verdict === 'deny')
    assert.deepEqual([denied.host, denied.port, denied.reason], ['denied.test', port, 'no-matching-rule'])
    assert.deepEqual(r.refusals, [denied])
    assert.equal(denied.via, 'proxy')
    assert.equal(events.length, 2)
  } finally {
    server.close()
  }
})

test('many runs at once, without blocking the event loop', async () => {
  let ticks = 0
  const timer = setInterval(() => ticks++, 10)
  const rs = await Promise.all([0, 1, 2, 3].map((i) => sandbox().run(`echo ${i}`)))
  clearInterval(timer)
  assert.deepEqual(rs.map((r) => r.stdout), ['0\n', '1\n', '2\n', '3\n'])
  assert.ok(ticks > 5, 'the event loop kept running')
})

test('the agent example runs', () => {
  const ws = workspace('as-node-ex-')
  const example = join(here, '..', 'node', 'agent.mjs')
  const out = spawnSync(process.execPath, [example, ws], { encoding: 'utf8', env: { ...process.env, AGENT_SANDBOX_IMAGE: image } })
  assert.equal(out.status, 0, out.stderr)
  assert.match(out.stdout, /refused: no-matching-rule/)
  assert.match(out.stdout, /Read-only file system/)
  assert.ok(existsSync(join(ws, 'sum.js')))
})

test('sessions: many execs, files, live policy, and cleanup', async () => {
  const { Session } = await import('agent-sandbox')
  const ws = workspace('as-node-sess-')
  const hits = []
  const server = createServer((req, res) => { hits.push(req.url); res.end('ok') })
  await new Promise((r) => server.listen(0, '127.0.0.1', r))
  const port = server.address().port
  const s = await sandbox({ workspace: ws, resolve: [`late.test:${port}:127.0.0.1`] }).session()
  try {
    assert.ok(s instanceof Session)
    const outs = await Promise.all([0, 1, 2].map((i) => s.exec(`echo ${i}`)))
    assert.deepEqual(outs.map((o) => o.stdout), ['0\n', '1\n', '2\n'])
    assert.equal((await s.exec('echo $A; cat', { env: { A: 'env' }, stdin: 'in' })).stdout, 'env\nin')
    await s.writeFile('notes/a.txt', 'hello')
    assert.equal(readFileSync(join(ws, 'notes/a.txt'), 'utf8'), 'hello')
    assert.equal(await s.readFile('notes/a.txt', 'utf8'), 'hello')
    assert.deepEqual((await s.readFile('/workspace/notes/a.txt')), Buffer.from('hello'))
    assert.deepEqual((await s.list('notes')).map((e) => [e.name, e.kind]), [['a.txt', 'file']])
    await assert.rejects(s.readFile('/etc/passwd'), (e) => e instanceof SandboxError && e.code === 'file')
    const curl = `curl -s -o /dev/null -w '%{http_code}' http://late.test:${port}/`
    assert.equal((await s.exec(curl)).stdout, '403')
    s.allow(`late.test:${port}`)
    assert.equal((await s.exec(curl)).stdout, '200')
    assert.throws(() => s.allow('*.com'), (e) => e.code === 'policy')
    assert.deepEqual(hits, ['/'])
    assert.deepEqual(s.events().map((e) => e.verdict), ['deny', 'allow'])
  } finally {
    await s[Symbol.asyncDispose ?? Symbol.for('nodejs.asyncDispose')]()
    server.close()
  }
  assert.deepEqual(ownedContainers(), [])
  await assert.rejects(s.exec('true'), (e) => e.code === 'session_closed')
})

test('pools: each run gets a fresh, already started sandbox, and close leaves nothing', async () => {
  const { Pool } = await import('agent-sandbox')
  const ws = workspace('as-node-pool-')
  await assert.rejects(sandbox().pool(0), (e) => e instanceof SandboxError && e.code === 'invalid_argument')
  assert.throws(() => sandbox({ allow: ['*'] }), (e) => e instanceof SandboxError && e.code === 'policy')
  const pool = await sandbox({ workspace: ws }).pool(2)
  try {
    assert.ok(pool instanceof Pool)
    assert.equal(pool.size, 2)
    const first = await pool.run('echo scratch > /tmp/x; echo kept > /workspace/a; exit 4')
    assert.equal(first.exitCode, 4)
    const second = await pool.run('test ! -e /tmp/x && cat /workspace/a')
    assert.equal(second.stdout, 'kept\n', second.stderr)
    assert.notEqual(first.sandboxId, second.sandboxId)
    const chunks = []
    const r = await pool.run('echo $A; cat', { env: { A: 'env' }, stdin: 'in', onStdout: (c) => chunks.push(c) })
    assert.equal(r.stdout, 'env\nin')
    assert.equal(chunks.join(''), r.stdout)
    assert.ok((await pool.run('sleep 30', { timeoutMs: 500 })).timedOut)
    const outs = await Promise.all([0, 1, 2].map((i) => pool.run(`echo ${i}`)))
    assert.deepEqual(outs.map((o) => o.stdout), ['0\n', '1\n', '2\n'])
  } finally {
    await pool[Symbol.asyncDispose ?? Symbol.for('nodejs.asyncDispose')]()
  }
  assert.deepEqual(ownedContainers(), [])
  await assert.rejects(pool.run('true'), (e) => e.code === 'pool_closed')
})

test('syncBack and skipGitignored through a gateway', async () => {
  // A gateway on the local engine: the workspace is a copy, as on a remote one.
  process.env.AGENT_SANDBOX_GATEWAY = 'always'
  const ws = workspace('as-node-sync-')
  writeFileSync(join(ws, '.gitignore'), 'build/\n')
  const s = await sandbox({ workspace: ws, skipGitignored: true }).session()
  try {
    assert.equal((await s.exec('ls -A')).stdout, '.gitignore\n')
    await s.exec('echo made > made.txt; mkdir build; echo box > build/out')
    assert.ok(!existsSync(join(ws, 'made.txt')), 'a copy: seen here after a sync')
    assert.deepEqual(await s.syncBack(), { written: 1, removed: 0, conflicts: [] })
    assert.equal(readFileSync(join(ws, 'made.txt'), 'utf8'), 'made\n')
    assert.ok(!existsSync(join(ws, 'build/out')), 'ignored: not copied back')
  } finally {
    await s.close()
    delete process.env.AGENT_SANDBOX_GATEWAY
  }
})

test('upload and download', async () => {
  const src = mkdtempSync(join(tmpdir(), 'as-node-up-'))
  mkdirSync(join(src, 'sub'))
  writeFileSync(join(src, 'sub', 'b.txt'), 'b')
  symlinkSync('/etc/passwd', join(src, 'link'))
  const out = mkdtempSync(join(tmpdir(), 'as-node-down-'))
  writeFileSync(join(out, 'b.txt'), 'mine')
  const s = await sandbox().session()
  try {
    await s.upload(src, '/tmp/in')
    assert.equal((await s.exec('cat /tmp/in/sub/b.txt; echo; readlink /tmp/in/link')).stdout, 'b\n/etc/passwd\n')
    const report = await s.download('/tmp/in/sub', out)
    assert.equal(report.written, 1)
    assert.ok(report.conflicts[0].startsWith('b.txt'), JSON.stringify(report))
    assert.equal(readFileSync(join(out, 'b.txt'), 'utf8'), 'mine', 'a local file is never overwritten')
    assert.equal(readFileSync(join(out, 'b.txt.from-sandbox'), 'utf8'), 'b')
    await assert.rejects(s.upload(join(out, 'b.txt'), '/tmp/x'), (e) => e.code === 'io' && /not a tar file/.test(e.message))
    await s.exec('ln -s /etc /tmp/esc')
    await assert.rejects(s.download('/tmp/esc', out), (e) => e.code === 'file' && /symbolic link/.test(e.message))
  } finally {
    await s.close()
  }
})

test('a session or pool garbage-collected without close() removes its containers', () => {
  // A child process with --expose-gc, in this project (so it resolves the installed package).
  const script = `
    const { Sandbox } = require('agent-sandbox')
    const { execFileSync } = require('node:child_process')
    const mine = () => execFileSync('docker', ['ps', '-a', '--filter', 'label=agent-sandbox', '--format', '{{.Label "agent-sandbox.owner"}}'], { encoding: 'utf8' })
      .split('\\n').filter((l) => l.includes(':' + process.pid + ':')).length
    ;(async () => {
      const box = new Sandbox({ image: ${JSON.stringify(image)} })
      await (async () => { await box.session(); await box.pool(1) })()
      const before = mine()
      for (let i = 0; i < 100 && mine() > 0; i++) {
        global.gc()
        await new Promise((r) => setTimeout(r, 100))
      }
      console.log(before, mine())
    })()
  `
  const out = spawnSync(process.execPath, ['--expose-gc', '-e', script], { encoding: 'utf8', cwd: join(here, '..') })
  assert.equal(out.status, 0, out.stderr)
  const [before, after] = out.stdout.trim().split(' ').map(Number)
  assert.ok(before >= 2, `expected a session and a pool spare, saw ${before}`)
  assert.equal(after, 0, 'containers outlived their garbage-collected owners')
})

test('secrets stay outside the box and HTTP rules narrow a host', async () => {
  const hits = []
  const server = createServer((req, res) => { hits.push(req.url); res.end('ok') })
  await new Promise((r) => server.listen(0, '127.0.0.1', r))
  const port = server.address().port
  const value = 'sk-node-secret-value-51c2'
  process.env.AS_TEST_NODE_SECRET = value
  try {
    const s = sandbox({
      allowHttp: [`GET api.test:${port} /ok/**`],
      resolve: [`api.test:${port}:127.0.0.1`],
      secret: [{ name: 'API_KEY', host: `api.test:${port}`, env: 'AS_TEST_NODE_SECRET' }],
    })
    const r = await s.run(
      `echo "inside: $API_KEY"; ` +
      `curl -s -o /dev/null -w 'ok %{http_code}\\n' http://api.test:${port}/ok/x; ` +
      `curl -s -o /dev/null -w 'other-path %{http_code}\\n' http://api.test:${port}/admin; ` +
      `curl -s -o /dev/null -w 'secret-in-clear %{http_code}\\n' -H "X-Key: $API_KEY" http://api.test:${port}/ok/y`,
    )
    assert.match(r.stdout, /inside: agent-sandbox-secret-api-key-/, r.stderr)
    assert.ok(!(r.stdout + r.stderr).includes(value))
    assert.ok(r.stdout.includes('ok 200\nother-path 403\nsecret-in-clear 403\n'), r.stdout)
    assert.deepEqual(hits, ['/ok/x'])
    const reasons = Object.fromEntries(r.refusals.map((e) => [e.path, e.reason]))
    assert.match(reasons['/admin'], /^no-matching-http-rule/)
    assert.equal(reasons['/ok/y'], 'secret-over-plain-http; secret=API_KEY')
    assert.ok(!JSON.stringify(r.events).includes(value))
    assert.throws(() => sandbox({ secret: ['T=AS_TEST_UNSET_VAR@api.test'] }),
      (e) => e.code === 'invalid_argument' && /AS_TEST_UNSET_VAR is not set/.test(e.message))
  } finally {
    delete process.env.AS_TEST_NODE_SECRET
    server.close()
  }
})

test('onAsk: once, sandbox, deny with a reason, a throw, a timeout; the canary sees only what was allowed', async () => {
  const hits = []
  const server = createServer((req, res) => { hits.push(req.url); res.end('ok') })
  await new Promise((r) => server.listen(0, '127.0.0.1', r))
  const { port } = server.address()
  const curl = (host, path) => `curl -s -o /dev/null -w '%{http_code} ' http://${host}:${port}${path}`
  try {
    const asked = []
    const onAsk = async (req) => {
      asked.push(req)
      await new Promise((r) => setTimeout(r, 10))
      if (req.host === 'a.test') return 'once'
      if (req.host === 'b.test') return 'sandbox'
      if (req.host === 't.test') throw new TypeError('dialog closed')
      return { answer: 'deny', reason: 'not for this task' }
    }
    const resolve = ['a', 'b', 'c', 't'].map((h) => `${h}.test:${port}:127.0.0.1`)
    const r = await sandbox({ resolve, onAsk }).run(
      [curl('a.test', '/a1'), curl('a.test', '/a2'), curl('b.test', '/b1'), curl('b.test', '/b2'), curl('c.test', '/c'), curl('t.test', '/t')].join('; '),
    )
    assert.deepEqual(r.stdout.trim().split(' '), ['200', '200', '200', '200', '403', '403'], r.stderr)
    assert.deepEqual(asked.map((q) => q.host), ['a.test', 'a.test', 'b.test', 'c.test', 't.test'])
    assert.equal(asked[0].rule, `a.test:${port}`)
    assert.equal(asked[0].path, '/a1')
    assert.match(asked[0].command, /curl/)
    assert.deepEqual(hits.sort(), ['/a1', '/a2', '/b1', '/b2'])
    const reasons = r.refusals.map((e) => [e.host, e.ask, e.reason])
    assert.deepEqual(reasons, [
      ['c.test', 'deny', 'ask-denied; reason=not for this task'],
      ['t.test', 'deny', 'ask-denied; reason=TypeError: dialog closed'],
    ])
    // No answer in time is a deny that says so.
    const slow = sandbox({ resolve, askTimeoutMs: 300, onAsk: () => new Promise((r) => setTimeout(() => r('once'), 3000)) })
    const t = await slow.run(curl('a.test', '/late'))
    assert.equal(t.stdout.trim(), '403')
    assert.equal(t.refusals[0].ask, 'timeout')
    // A session shows the rule 'sandbox' added.
    const s = await sandbox({ resolve, onAsk }).session()
    try {
      assert.equal((await s.exec(curl('b.test', '/b3'))).stdout.trim(), '200')
      assert.deepEqual(s.policy().allow, [`b.test:${port}`])
    } finally {
      await s.close()
    }
    assert.ok(!hits.includes('/late'))
    assert.throws(() => sandbox({ onAsk: 'yes' }), /onAsk/)
  } finally {
    server.close()
  }
})

test('policyFile and preset', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'as-node-policy-'))
  const file = join(dir, 'policy.toml')
  const { writeFileSync } = await import('node:fs')
  writeFileSync(file, 'preset = ["github"]\nallow = [\n  "ok.test",\n  "*.com",\n]\n')
  assert.throws(() => sandbox({ policyFile: file }), (e) => e instanceof SandboxError && e.code === 'policy' && /policy.toml:4: "\*\.com"/.test(e.message))
  writeFileSync(file, 'preset = ["github"]\n')
  const s = await sandbox({ policyFile: file, preset: ['npm'] }).session()
  try {
    assert.deepEqual(s.policy().preset, ['github', 'npm'])
  } finally {
    await s.close()
  }
  assert.throws(() => sandbox({ preset: ['nope'] }), /the presets are/)
})

test('background processes stream and end; an exposed port reaches a server inside', async () => {
  const ws = workspace('spawn')
  execFileSync('sh', ['-c', `echo served from the sandbox > ${ws}/hello.txt`])
  const s = await sandbox({ workspace: ws }).session()
  let host
  let server
  try {
    const p = await s.spawn('for i in 1 2 3; do echo line$i; sleep 0.1; done; echo oops >&2; exec sleep 1000')
    assert.equal(p.id, 'p1')
    assert.equal(p.running, true)
    const seen = []
    for await (const { pipe, data } of p) {
      seen.push(`${pipe}:${data}`)
      if (pipe === 'stderr') break
    }
    assert.equal(seen.join(''), 'stdout:line1\nstdout:line2\nstdout:line3\nstderr:oops\n')
    const got = p.readOutput()
    assert.equal(got.stdout, 'line1\nline2\nline3\n')
    assert.equal(got.exitCode, null)
    p.kill()
    const r = await p.wait()
    assert.equal(r.exitCode, 137)
    assert.equal(p.exitCode, 137)
    server = await s.spawn(['python3', '-m', 'http.server', '8000', '--bind', '127.0.0.1'])
    host = await s.expose(8000)
    assert.match(host, /^127\.0\.0\.1:\d+$/)
    assert.deepEqual(s.exposed(), { 8000: host })
    let body = ''
    for (let i = 0; i < 100 && !body.includes('served'); i++) {
      body = await fetch(`http://${host}/hello.txt`).then((r) => r.text(), () => '')
      if (!body.includes('served')) await new Promise((r) => setTimeout(r, 100))
    }
    assert.equal(body, 'served from the sandbox\n')
    assert.deepEqual(s.processes().map((q) => q.id), ['p1', 'p2'])
  } finally {
    await s.close()
  }
  await assert.rejects(server.wait(), (e) => e.code === 'session_closed')
  await assert.rejects(fetch(`http://${host}/hello.txt`))
})
