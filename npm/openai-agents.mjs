// agent-sandbox as a sandbox of the OpenAI Agents SDK for JavaScript
// (`@openai/agents`, tested with 0.20): a SandboxClient whose sessions are
// agent-sandbox sessions. Commands run in the sandbox; files and apply_patch
// go through its host-side file API; exposed ports are forwarded to the
// host's loopback.
//
//   import { Runner } from '@openai/agents'
//   import { SandboxAgent, Manifest } from '@openai/agents/sandbox'
//   import { AgentSandboxClient } from 'agent-sandbox/openai-agents'
//   const client = new AgentSandboxClient({ workspace: '.', allow: ['registry.npmjs.org'] })
//   await new Runner().run(agent, 'fix the tests', { sandbox: { client } })
import { applyDiff } from '@openai/agents'
import { Manifest } from '@openai/agents/sandbox'
import { formatExecResponse, truncateOutput } from '@openai/agents-core/sandbox/internal'
import { Sandbox } from './index.mjs'

const WORKSPACE = '/workspace'
// The SDK's defaults: how long exec_command and write_stdin wait for a command.
const EXEC_YIELD_MS = 10_000
const POLL_YIELD_MS = 250

function inWorkspace(path) {
  return path.startsWith('/') ? path : `${WORKSPACE}/${path}`
}

/** One agent-sandbox session behind the SDK's session interface. */
export class AgentSandboxSession {
  constructor(state, session) {
    this.state = state
    /** The agent-sandbox Session (for anything the SDK has no word for). */
    this.session = session
  }

  async start() {}

  async running() {
    return true
  }

  // The SDK's unified exec: a command runs as a background process of the
  // session; exec waits up to yieldTimeMs (10 s by default) and returns
  // either its exit code or a session id that write_stdin polls. There is
  // no terminal and no input after the start: write_stdin's characters
  // are refused with a note, except Ctrl-C (\u0003), which sends SIGINT.
  async exec({ cmd, workdir, yieldTimeMs }) {
    const started = Date.now()
    const p = await this.session.spawn(cmd, { workdir })
    return this.#collect(p, yieldTimeMs ?? EXEC_YIELD_MS, started, '')
  }

  async execCommand(args) {
    return this.#format(await this.exec(args), args.maxOutputTokens)
  }

  supportsPty() {
    return true
  }

  async writeStdin({ sessionId, chars, yieldTimeMs, maxOutputTokens }) {
    const p = this.#processes.get(sessionId)
    if (!p) {
      return formatExecResponse({ output: `write_stdin failed: session not found: ${sessionId}`, wallTimeSeconds: 0, exitCode: 1 })
    }
    const text = chars ?? ''
    if (text.includes('\u0003')) p.signal(2)
    const note = text.replaceAll('\u0003', '').length > 0
      ? '[agent-sandbox: a running command takes no input; give its input when starting it (for example with a pipe or a heredoc)]\n'
      : ''
    const r = await this.#collect(p, yieldTimeMs ?? POLL_YIELD_MS, Date.now(), note)
    return this.#format(r, maxOutputTokens)
  }

  #processes = new Map()
  #nextId = 1

  // Waits up to `ms` for `p` to end; the output since the last look.
  async #collect(p, ms, started, note) {
    let timer
    const ended = await Promise.race([
      p.wait(),
      new Promise((resolve) => { timer = setTimeout(() => resolve(null), ms) }),
    ]).finally(() => clearTimeout(timer))
    const o = p.readOutput()
    let output = note + (o.dropped ? `[agent-sandbox: ${o.dropped} bytes of output dropped]\n` : '') + o.stdout + o.stderr
    const wallTimeSeconds = (Date.now() - started) / 1000
    if (ended === null) {
      let id = [...this.#processes].find(([, q]) => q === p)?.[0]
      if (id === undefined) {
        id = this.#nextId++
        this.#processes.set(id, p)
      }
      return { output, stdout: o.stdout, stderr: o.stderr, wallTimeSeconds, sessionId: id }
    }
    for (const [id, q] of this.#processes) if (q === p) this.#processes.delete(id)
    for (const e of ended.refusals) output += `\n[agent-sandbox: network request to ${e.host}:${e.port} refused: ${e.reason}]`
    return { output, stdout: o.stdout, stderr: o.stderr, wallTimeSeconds, exitCode: ended.exitCode }
  }

  #format(r, maxOutputTokens) {
    const { text, originalTokenCount } = truncateOutput(r.output, maxOutputTokens)
    return formatExecResponse({ output: text, wallTimeSeconds: r.wallTimeSeconds, exitCode: r.exitCode, sessionId: r.sessionId, originalTokenCount })
  }

  async readFile({ path }) {
    return new Uint8Array(await this.session.readFile(inWorkspace(path)))
  }

  async listDir({ path }) {
    const entries = await this.session.list(inWorkspace(path))
    return entries.map((e) => ({ name: e.name, path: `${path.replace(/\/$/, '')}/${e.name}`, type: e.kind === 'dir' ? 'dir' : e.kind === 'file' ? 'file' : 'other' }))
  }

  async pathExists(path) {
    try {
      await this.session.readFile(inWorkspace(path))
      return true
    } catch {
      return this.directoryExists(path)
    }
  }

  async directoryExists(path) {
    try {
      await this.session.list(inWorkspace(path))
      return true
    } catch {
      return false
    }
  }

  createEditor() {
    const s = this.session
    return {
      createFile: async (op) => {
        await s.writeFile(inWorkspace(op.path), applyDiff('', op.diff, 'create'))
        return { status: 'completed', output: `Created ${op.path}` }
      },
      updateFile: async (op) => {
        const before = await s.readFile(inWorkspace(op.path), 'utf8')
        await s.writeFile(inWorkspace(op.moveTo ?? op.path), applyDiff(before, op.diff))
        if (op.moveTo && op.moveTo !== op.path) await s.remove(inWorkspace(op.path))
        return { status: 'completed', output: `Updated ${op.path}` }
      },
      deleteFile: async (op) => {
        await s.remove(inWorkspace(op.path))
        return { status: 'completed', output: `Deleted ${op.path}` }
      },
    }
  }

  async resolveExposedPort(port) {
    const addr = await this.session.expose(port)
    const i = addr.lastIndexOf(':')
    return { host: addr.slice(0, i), port: Number(addr.slice(i + 1)), url: `http://${addr}` }
  }

  async shutdown() {
    await this.session.close()
  }

  async delete() {
    await this.session.close()
  }
}

/** Creates agent-sandbox sessions for the SDK's runner; `options` are the Sandbox's. */
export class AgentSandboxClient {
  backendId = 'agent_sandbox'
  // The workspace is the caller's directory (or scratch): no snapshot copies of it.
  supportsDefaultOptions = false

  constructor(options = {}) {
    this.options = options
  }

  async create(args = {}) {
    const given = args instanceof Manifest ? args : args.manifest
    const manifest = given instanceof Manifest ? given : new Manifest({ root: WORKSPACE, ...(given ?? {}) })
    if (manifest.root !== WORKSPACE) {
      throw new Error(`an agent-sandbox workspace is ${WORKSPACE}, not ${manifest.root}: use new Manifest({ root: '${WORKSPACE}' })`)
    }
    const session = await new Sandbox({ ...this.options, ...(args.options ?? {}) }).session()
    return new AgentSandboxSession({ manifest, sandboxId: session.sandboxId }, session)
  }

  async delete(state) {
    await state?.session?.close?.()
  }
}
