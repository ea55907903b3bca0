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

  async exec({ cmd, workdir, yieldTimeMs }) {
    const started = Date.now()
    const r = await this.session.exec(cmd, { workdir, timeoutMs: yieldTimeMs ?? undefined })
    let output = r.stdout + r.stderr
    for (const e of r.refusals) output += `\n[agent-sandbox: network request to ${e.host}:${e.port} refused: ${e.reason}]`
    if (r.timedOut) output += '\n[agent-sandbox: the command timed out and was killed]'
    return { output, stdout: r.stdout, stderr: r.stderr, wallTimeSeconds: (Date.now() - started) / 1000, exitCode: r.exitCode }
  }

  async execCommand(args) {
    const r = await this.exec(args)
    const { text, originalTokenCount } = truncateOutput(r.output, args.maxOutputTokens)
    return formatExecResponse({ output: text, wallTimeSeconds: r.wallTimeSeconds, exitCode: r.exitCode, originalTokenCount })
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
