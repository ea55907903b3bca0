'use strict'
// The loader: picks the native addon for this platform and adds what is
// JavaScript's own: option objects (checked by the core, which names any
// unknown or mistyped one), AbortSignal, camelCase results. Everything else
// is the Rust core.

const { platform, arch } = process

function loadNative() {
  const triple = `${platform}-${arch}${platform === 'linux' ? '-gnu' : ''}`
  try {
    return require(`./agent-sandbox.${triple}.node`)
  } catch (e) {
    throw new Error(`agent-sandbox: no native addon for ${triple} (supported: linux-x64-gnu). ${e && e.message}`)
  }
}

const native = loadNative()

/** An error from agent-sandbox; `code` is the core's stable error code. */
class SandboxError extends Error {
  constructor(message, code, options) {
    super(message, options)
    this.name = 'SandboxError'
    this.code = code
  }
}
native.setErrorClass(SandboxError)

/** The core's snake_case JSON as JavaScript objects (camelCase keys). */
function fromCore(v) {
  if (Array.isArray(v)) return v.map(fromCore)
  if (v === null || typeof v !== 'object') return v
  const camel = (k) => k.replace(/_([a-z])/g, (_, c) => c.toUpperCase())
  return Object.fromEntries(Object.entries(v).map(([k, x]) => [camel(k), fromCore(x)]))
}
const parsed = (json) => fromCore(JSON.parse(json))

function bytes(data) {
  if (typeof data === 'string') return Buffer.from(data, 'utf8')
  if (data instanceof Uint8Array) return Buffer.from(data.buffer, data.byteOffset, data.byteLength)
  throw new SandboxError('stdin and file data must be a string or a Uint8Array/Buffer', 'invalid_argument')
}

/**
 * Options as JSON for the core; a function (or signal) the method does not
 * take stays in, as a string, so the core names it as unknown. Values JSON
 * would turn into null or {} (NaN, Infinity, a Map or Set) are refused here
 * rather than silently meaning "unset".
 */
const toJson = (options) =>
  JSON.stringify(options, (key, v) => {
    if (typeof v === 'function') return '[function]'
    if ((typeof v === 'number' && !Number.isFinite(v)) || v instanceof Map || v instanceof Set) {
      throw new SandboxError(`invalid option "${key}": ${String(v)} is not a JSON value`, 'invalid_argument')
    }
    return v
  })

/** A command and its per-command options, split into the native call's arguments. */
function commandArgs(command, options, own) {
  const shell = typeof command === 'string'
  const { stdin, ...rest } = options ?? {}
  const extra = Object.fromEntries(own.map((k) => [k, rest[k] ?? null]))
  own.forEach((k) => delete rest[k])
  return [shell ? [command] : Array.from(command, String), shell, toJson(rest), stdin === undefined ? null : bytes(stdin), extra]
}

/**
 * The user's `onAsk` as the addon calls it: the request as JSON text in, the
 * answer as JSON text out. A throw, a rejection or no answer is a deny whose
 * reason says so, never a crash.
 */
function asker(onAsk) {
  if (!onAsk) return null
  if (typeof onAsk !== 'function') {
    throw new SandboxError('invalid onAsk: it must be a function (async or not)', 'invalid_argument')
  }
  return async (text) => {
    try {
      const answer = await onAsk(parsed(text))
      if (answer == null) return JSON.stringify({ answer: 'deny', reason: 'the ask callback gave no answer' })
      return JSON.stringify(answer)
    } catch (e) {
      return JSON.stringify({ answer: 'deny', reason: `${e?.name ?? 'Error'}: ${e?.message ?? String(e)}` })
    }
  }
}

class Sandbox {
  #native
  #ask
  /** @param {import('./index').SandboxOptions} [options] */
  constructor(options = {}) {
    const { onAsk, ...rest } = options ?? {}
    this.options = { ...rest }
    this.#ask = asker(onAsk)
    this.#native = new native.Sandbox(toJson(this.options))
  }

  /** Runs a command in a fresh sandbox, removed afterwards. Never blocks the event loop. */
  async run(command, options) {
    const [argv, shell, json, stdin, { onStdout, onStderr, onEvent, signal }] = commandArgs(command, options, [
      'onStdout', 'onStderr', 'onEvent', 'signal',
    ])
    if (signal?.aborted) {
      throw new SandboxError('the run was aborted before it started', 'cancelled', { cause: signal.reason })
    }
    const cancel = new native.Cancel()
    const onAbort = () => cancel.cancel()
    signal?.addEventListener('abort', onAbort, { once: true })
    const events = onEvent && ((e) => onEvent(parsed(e)))
    try {
      return parsed(await this.#native.run(argv, shell, json, stdin, onStdout, onStderr, events, cancel, this.#ask))
    } catch (e) {
      if (e instanceof SandboxError && e.code === 'cancelled' && signal) e.cause = signal.reason
      throw e
    } finally {
      signal?.removeEventListener('abort', onAbort)
    }
  }

  /** Starts a warm sandbox for many commands. */
  async session() {
    return new Session(await this.#native.start(this.#ask))
  }

  /** Starts `size` sandboxes ahead of time for fast one-shot runs. */
  async pool(size = 1) {
    if (!Number.isInteger(size) || size < 1) {
      throw new SandboxError(`pool size must be a positive integer, not ${size}`, 'invalid_argument')
    }
    return new Pool(await this.#native.pool(size, this.#ask), size)
  }
}

const asyncDispose = Symbol.asyncDispose ?? Symbol.for('nodejs.asyncDispose')

/** A warm sandbox for many commands. Close it when done (dropping it removes it too, later). */
class Session {
  #native
  constructor(handle) {
    this.#native = handle
    this.sandboxId = handle.sandboxId
  }

  /** Runs a command in the session; several may run at once. */
  async exec(command, options) {
    const [argv, shell, json, stdin, { onStdout, onStderr }] = commandArgs(command, options, ['onStdout', 'onStderr'])
    return parsed(await this.#native.exec(argv, shell, json, stdin, onStdout, onStderr))
  }

  /** Writes a string or bytes to a path under /workspace or /tmp. */
  writeFile(path, data) {
    return this.#native.writeFile(path, bytes(data))
  }

  /** Reads a file: a Buffer, or a string when an encoding is given. */
  async readFile(path, encoding) {
    const buf = await this.#native.readFile(path)
    return encoding ? buf.toString(encoding) : buf
  }

  /** A directory's entries ({name, kind, size}), sorted by name; at most 10,000. */
  async list(path = '.') {
    return parsed(await this.#native.listing(path)).entries
  }

  /** Removes a file, a symlink (not its target) or an empty directory. */
  remove(path) {
    return this.#native.remove(path)
  }

  /**
   * Copies the workspace back to your directory now, as close() does at the
   * end (only a remote engine has a copy; with a bind mount there is nothing
   * to do): {written, removed, conflicts}.
   */
  async syncBack() {
    return parsed(await this.#native.syncBack())
  }

  /**
   * Copies a local directory (links as links; with skipGitignored what its
   * .gitignore ignores left out) or a tar file into the sandbox directory
   * `dest` (under /workspace or /tmp; created if missing, never through a
   * link). Written inside the sandbox by its own user, with the image's tar.
   */
  upload(local, dest) {
    return this.#native.upload(String(local), dest)
  }

  /**
   * Copies the sandbox directory `path` into the existing local directory
   * `local`: nothing written through a link or outside it; a local file that
   * differs is kept, the sandbox's beside it as NAME.from-sandbox (listed in
   * conflicts): {written, removed, conflicts}.
   */
  async download(path, local) {
    return parsed(await this.#native.download(path, String(local)))
  }

  /** Allows a host rule from now on (new connections). */
  allow(rule) {
    this.#native.changeRules('allow', rule)
  }

  /** Denies a host rule from now on. */
  deny(rule) {
    this.#native.changeRules('deny', rule)
  }

  /** Removes a rule written exactly so. */
  removeRule(rule) {
    this.#native.changeRules('removeRule', rule)
  }

  /** The rules in force, by kind (rules an ask answered 'sandbox' added included). */
  policy() {
    return parsed(this.#native.policy())
  }

  /** Every network decision so far. */
  events() {
    return parsed(this.#native.events())
  }

  /** Starts a command in the background; resolves once it started. */
  async spawn(command, options) {
    const [argv, shell, json, stdin, { onStdout, onStderr }] = commandArgs(command, options, ['onStdout', 'onStderr'])
    return new Process(await this.#native.spawn(argv, shell, json, stdin, onStdout, onStderr))
  }

  /** Background processes: every running one and the latest ended. */
  processes() {
    return this.#native.processes().map((p) => new Process(p))
  }

  /** Forwards a port on the host's 127.0.0.1 to `port` inside; resolves to '127.0.0.1:PORT'. */
  expose(port, hostPort) {
    return this.#native.expose(port, hostPort ?? null)
  }

  /** Closes an exposed port's host listener; whether it was exposed. */
  unexpose(port) {
    return this.#native.unexpose(port)
  }

  /** Exposed ports: { [portInside]: '127.0.0.1:PORT' }. */
  exposed() {
    return parsed(this.#native.exposed())
  }

  /** Stops and removes the sandbox. Idempotent. */
  close() {
    return this.#native.close()
  }

  [asyncDispose]() {
    return this.close()
  }
}

/**
 * A background process of a session. `for await (const { pipe, data } of proc)`
 * yields its output from the oldest byte kept until it ends. Dropping it does
 * not stop the process.
 */
class Process {
  #native
  constructor(handle) {
    this.#native = handle
    this.id = handle.id
    this.command = handle.command
  }

  get running() {
    return this.#native.running
  }

  /** The exit code once it ended (null while it runs, or if the session ended first). */
  get exitCode() {
    return this.#native.exitCode ?? null
  }

  /** Sends a signal (a number) to its process group. */
  signal(signal) {
    this.#native.signal(signal)
  }

  /** Kills its process group; wait() then resolves with exit code 137. */
  kill() {
    this.#native.kill()
  }

  /** Output since the last call: { stdout, stderr (strings), dropped, exitCode }. */
  readOutput() {
    const o = this.#native.takeOutput()
    return { stdout: o.stdout.toString(), stderr: o.stderr.toString(), dropped: o.dropped, exitCode: o.exitCode ?? null }
  }

  /** Resolves at the end with its result (output kept, events of its lifetime). */
  async wait() {
    return parsed(await this.#native.wait())
  }

  async *[Symbol.asyncIterator]() {
    let cursor = 0
    for (;;) {
      const c = await this.#native.nextChunk(cursor)
      if (!c) return
      cursor = c.cursor
      yield { pipe: c.pipe, data: c.data }
    }
  }
}

/** Fresh sandboxes started ahead of time: each run gets its own, and ends it afterwards. */
class Pool {
  #native
  constructor(handle, size) {
    this.#native = handle
    this.size = size
  }

  /** Runs a command in a fresh sandbox; every process it started is gone when this resolves. */
  async run(command, options) {
    const [argv, shell, json, stdin, { onStdout, onStderr }] = commandArgs(command, options, ['onStdout', 'onStderr'])
    return parsed(await this.#native.run(argv, shell, json, stdin, onStdout, onStderr))
  }

  /** Removes the spare sandboxes. Idempotent. */
  close() {
    return this.#native.close()
  }

  [asyncDispose]() {
    return this.close()
  }
}

module.exports = { Sandbox, Session, Process, Pool, SandboxError }
