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

module.exports = { Sandbox, SandboxError }
