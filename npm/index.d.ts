// Public types. The option, result and event shapes are generated from the
// Rust definitions into native.d.ts (by `napi build`); this file adds the
// JavaScript-side class, run options and error codes.
import type { SandboxOptions, RunResult, SandboxEvent, DirEntry, EventVerdict } from './native'

export type { SandboxOptions, RunResult, SandboxEvent, DirEntry, EventVerdict }

/** The core's stable error codes (the same strings in Rust, Python and Node). */
export type SandboxErrorCode =
  | 'policy'
  | 'workspace'
  | 'docker_unavailable'
  | 'engine_too_old'
  | 'image_not_found'
  | 'invalid_argument'
  | 'engine'
  | 'cancelled'
  | 'file'
  | 'session_closed'
  | 'pool_closed'
  | 'bind'
  | 'listen'
  | 'io'

/** An error from agent-sandbox; the message says what to do. */
export declare class SandboxError extends Error {
  readonly code: SandboxErrorCode
}

export interface RunOptions {
  /** Each chunk of stdout, as it arrives. */
  onStdout?: (chunk: string) => void
  /** Each chunk of stderr, as it arrives. */
  onStderr?: (chunk: string) => void
  /** Each network decision, as the proxy makes it. */
  onEvent?: (event: SandboxEvent) => void
  /** Aborting kills and removes the container; the promise rejects with code 'cancelled'. */
  signal?: AbortSignal
}

/** A sandbox configuration; each run gets a fresh container. */
export declare class Sandbox {
  constructor(options?: SandboxOptions)
  readonly options: SandboxOptions
  /** A string runs through /bin/sh -c; an array runs as given. */
  run(command: string | readonly string[], options?: RunOptions): Promise<RunResult>
  /** Starts a warm sandbox for many commands. */
  session(): Promise<Session>
  /** Starts `size` (default 1) sandboxes ahead of time for fast one-shot runs. */
  pool(size?: number): Promise<Pool>
}

export interface ExecOptions {
  /** Extra environment variables for this command. */
  env?: Record<string, string>
  /** Working directory: relative to /workspace, or absolute below it. */
  workdir?: string
  /** Kills the command's process group after this long. */
  timeoutMs?: number
  /** Fed to the command's stdin, then EOF. */
  stdin?: string | Uint8Array
  onStdout?: (chunk: string) => void
  onStderr?: (chunk: string) => void
}

/** A warm sandbox. `await using s = await sandbox.session()`, or call close(). */
export declare class Session {
  readonly sandboxId: string
  exec(command: string | readonly string[], options?: ExecOptions): Promise<RunResult>
  writeFile(path: string, data: string | Uint8Array): Promise<void>
  readFile(path: string): Promise<Buffer>
  readFile(path: string, encoding: BufferEncoding): Promise<string>
  list(path?: string): Promise<DirEntry[]>
  remove(path: string): Promise<void>
  allow(rule: string): void
  deny(rule: string): void
  removeRule(rule: string): void
  events(): SandboxEvent[]
  close(): Promise<void>
  [Symbol.asyncDispose](): Promise<void>
}

/**
 * Fresh sandboxes started ahead of time: each run gets its own, already
 * running, and ends it afterwards. `await using pool = await sandbox.pool(2)`,
 * or call close().
 */
export declare class Pool {
  readonly size: number
  /** Every process the command started is gone when this resolves. */
  run(command: string | readonly string[], options?: ExecOptions): Promise<RunResult>
  close(): Promise<void>
  [Symbol.asyncDispose](): Promise<void>
}
