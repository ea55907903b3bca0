// Public types. The option, result and event shapes are generated from the
// Rust definitions into native.d.ts (by `napi build`); this file adds the
// JavaScript-side class, run options and error codes.
import type { SandboxOptions, RunResult, SandboxEvent } from './native'

export type { SandboxOptions, RunResult, SandboxEvent }

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
}
