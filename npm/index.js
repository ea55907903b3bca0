'use strict'
// The loader: picks the native addon for this platform and adds what is
// JavaScript's own (the Sandbox class, AbortSignal, the SandboxError type).
// Everything else is the Rust core.

const { platform, arch } = process

function loadNative() {
  const triple = `${platform}-${arch}${platform === 'linux' ? '-gnu' : ''}`
  try {
    return require(`./agent-sandbox.${triple}.node`)
  } catch (e) {
    throw new Error(
      `agent-sandbox: no native addon for ${triple} (supported: linux-x64-gnu). ${e && e.message}`,
    )
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

const CODED = /^\[agent-sandbox:([a-z_]+)\] ([\s\S]*)$/

function translate(e) {
  const m = e && typeof e.message === 'string' ? CODED.exec(e.message) : null
  return m ? new SandboxError(m[2], m[1]) : e
}

class Sandbox {
  /** @param {import('./index').SandboxOptions} [options] */
  constructor(options = {}) {
    this.options = { ...options }
    try {
      native.checkOptions(this.options)
    } catch (e) {
      throw translate(e)
    }
  }

  /**
   * Runs a command in a fresh sandbox. A string runs through /bin/sh -c; an
   * array runs as given. Never blocks the event loop.
   */
  async run(command, { onStdout, onStderr, onEvent, signal } = {}) {
    const shell = typeof command === 'string'
    const argv = shell ? [command] : Array.from(command, String)
    if (signal && signal.aborted) {
      throw new SandboxError('the run was aborted before it started', 'cancelled', { cause: signal.reason })
    }
    const id = native.newCancelId()
    const onAbort = () => native.cancel(id)
    if (signal) signal.addEventListener('abort', onAbort, { once: true })
    try {
      return await native.run(this.options, argv, shell, onStdout ?? null, onStderr ?? null, onEvent ?? null, id)
    } catch (e) {
      const err = translate(e)
      if (err instanceof SandboxError && err.code === 'cancelled' && signal) err.cause = signal.reason
      throw err
    } finally {
      if (signal) signal.removeEventListener('abort', onAbort)
    }
  }
}

const asyncDispose = Symbol.asyncDispose ?? Symbol.for('nodejs.asyncDispose')

function bytes(data) {
  if (typeof data === 'string') return Buffer.from(data, 'utf8')
  if (data instanceof Uint8Array) return data
  throw new TypeError('data must be a string or a Uint8Array/Buffer')
}

async function call(fn) {
  try {
    return await fn()
  } catch (e) {
    throw translate(e)
  }
}

// A Session or Pool garbage-collected without close() still removes its
// containers (the native registry would otherwise keep them until exit).
const unclosed = new FinalizationRegistry(({ kind, id }) => {
  const close = kind === 'pool' ? native.poolClose : native.sessionClose
  close(id).catch(() => {})
})

/** A warm sandbox for many commands. Close it (or `await using` it) when done. */
class Session {
  #id
  constructor(id) {
    this.#id = id
    this.sandboxId = native.sessionSandboxId(id)
    unclosed.register(this, { kind: 'session', id }, this)
  }

  /** Runs a command in the session; several may run at once. */
  exec(command, { env, workdir, timeoutMs, stdin, onStdout, onStderr } = {}) {
    const shell = typeof command === 'string'
    const argv = shell ? [command] : Array.from(command, String)
    const input = stdin === undefined ? null : bytes(stdin)
    return call(() =>
      native.sessionExec(this.#id, argv, shell, env ?? null, workdir ?? null, timeoutMs ?? null, input, onStdout ?? null, onStderr ?? null),
    )
  }

  /** Writes a string or bytes to a path under /workspace or /tmp. */
  writeFile(path, data) {
    return call(() => native.sessionWriteFile(this.#id, path, bytes(data)))
  }

  /** Reads a file: a Buffer, or a string when an encoding is given. */
  async readFile(path, encoding) {
    const buf = await call(() => native.sessionReadFile(this.#id, path))
    return encoding ? buf.toString(encoding) : buf
  }

  list(path = '.') {
    return call(() => native.sessionList(this.#id, path))
  }

  remove(path) {
    return call(() => native.sessionRemove(this.#id, path))
  }

  /** Allows a host rule from now on (new connections). */
  allow(rule) {
    try { native.sessionUpdatePolicy(this.#id, 'allow', rule) } catch (e) { throw translate(e) }
  }

  /** Denies a host rule from now on. */
  deny(rule) {
    try { native.sessionUpdatePolicy(this.#id, 'deny', rule) } catch (e) { throw translate(e) }
  }

  /** Removes a rule written exactly so. */
  removeRule(rule) {
    try { native.sessionUpdatePolicy(this.#id, 'remove', rule) } catch (e) { throw translate(e) }
  }

  /** Every network decision so far. */
  events() {
    try { return native.sessionEvents(this.#id) } catch (e) { throw translate(e) }
  }

  /** Stops and removes the sandbox. Idempotent. */
  close() {
    unclosed.unregister(this)
    return call(() => native.sessionClose(this.#id))
  }

  [asyncDispose]() {
    return this.close()
  }
}

/** Starts a session with this sandbox's options. */
Sandbox.prototype.session = async function session() {
  const id = await call(() => native.startSession(this.options))
  return new Session(id)
}

/**
 * Fresh sandboxes started ahead of time: each run gets its own, already
 * running, and ends it afterwards. Close it (or `await using` it) when done.
 */
class Pool {
  #id
  constructor(id, size) {
    this.#id = id
    this.size = size
    unclosed.register(this, { kind: 'pool', id }, this)
  }

  /** Runs a command in a fresh sandbox; every process it started is gone when this resolves. */
  run(command, { env, workdir, timeoutMs, stdin, onStdout, onStderr } = {}) {
    const shell = typeof command === 'string'
    const argv = shell ? [command] : Array.from(command, String)
    const input = stdin === undefined ? null : bytes(stdin)
    return call(() =>
      native.poolRun(this.#id, argv, shell, env ?? null, workdir ?? null, timeoutMs ?? null, input, onStdout ?? null, onStderr ?? null),
    )
  }

  /** Removes the spare sandboxes. Idempotent. */
  close() {
    unclosed.unregister(this)
    return call(() => native.poolClose(this.#id))
  }

  [asyncDispose]() {
    return this.close()
  }
}

/** Starts a pool of `size` sandboxes (default 1) with this sandbox's options. */
Sandbox.prototype.pool = async function pool(size = 1) {
  if (!Number.isInteger(size) || size < 1) {
    throw new TypeError('pool size must be a positive integer')
  }
  const id = await call(() => native.startPool(this.options, size))
  return new Pool(id, size)
}

module.exports = { Sandbox, Session, Pool, SandboxError }
