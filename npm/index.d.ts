// Public types. Option names are the core's (`SandboxOptions`/`ExecOptions`
// in Rust, keyword arguments in Python, flags of the CLI) in camelCase, with
// durations in milliseconds (`timeoutMs`); sizes are bytes or Docker's text
// ("512m"). Unknown or mistyped options throw SandboxError 'invalid_argument'.

/** The core's stable error codes (the same strings in Rust, Python and Node). */
export type SandboxErrorCode =
  | 'policy' | 'workspace' | 'docker_unavailable' | 'engine_too_old' | 'image_not_found' | 'invalid_argument'
  | 'engine' | 'cancelled' | 'file' | 'session_closed' | 'pool_closed' | 'bind' | 'listen' | 'io'

/** An error from agent-sandbox; the message says what to do. */
export declare class SandboxError extends Error {
  readonly code: SandboxErrorCode
}

export type Size = number | string

export interface SandboxOptions {
  /** Default: AGENT_SANDBOX_IMAGE, else debian:bookworm-slim; pulled if absent. */
  image?: string
  /** The read-write directory mounted at /workspace (default: none, a tmpfs). */
  workspace?: string
  /** Where the workspace is copied to the engine (a remote engine): leave out what its .gitignore files ignore (a bind mount shows everything). */
  skipGitignored?: boolean
  /** Host rules: github.com, *.github.com, .github.com, with :PORT or :* (default 80 and 443). */
  allow?: string[]
  /** Host rules to deny (deny wins). */
  deny?: string[]
  /** Networks to allow: the only way to IP literals and private ranges. */
  allowCidr?: string[]
  /** Networks to deny. */
  denyCidr?: string[]
  /** `HOST:PORT:ADDR` pins, as curl's --resolve takes them. */
  resolve?: string[]
  env?: Record<string, string>
  /** Kill the command after this many milliseconds (default: never). */
  timeoutMs?: number
  /** Memory limit, swap included (default "1g"). */
  memory?: Size
  /** CPU limit (default 1). */
  cpus?: number
  /** Process and thread limit (default 256). */
  pids?: number
  /** Size of /tmp (default "512m"). */
  tmpSize?: Size
  /** Bytes of stdout and of stderr kept in a result (default "16m" each). */
  outputLimit?: Size
  /** Largest file a session's readFile returns (default "64m"). */
  fileLimit?: Size
  /** Extra bind mounts: "HOST:TARGET" (read-only), "HOST:TARGET:rw". */
  mounts?: string[]
  /** "UID:GID" (default: the caller; for root, the workspace's owner). */
  user?: string
  /** The engine's OCI runtime, e.g. "runsc" for gVisor. */
  runtime?: string
  /** Close an unused session after this many milliseconds (default 30 min; 0: never). */
  idleTimeoutMs?: number
  /** Connections the proxy serves at once (default 1024). */
  maxConnections?: number
  /** New connections per second the proxy accepts (default 200). */
  connectionsPerSecond?: number
  /** Requests allowed by method and path: "GET api.github.com /repos/acme/**" (method * for any). The host's TLS is intercepted. */
  allowHttp?: string[]
  /** Secrets the sandbox never sees: inside, process.env[name] holds a placeholder the proxy replaces in requests to `host`. The host's TLS is intercepted. */
  secret?: Array<Secret | string>
  /** Extra roots (PEM files) trusted for the upstreams of intercepted hosts (a corporate CA). */
  upstreamCa?: string[]
  /** A TOML policy file (allow, deny, allowCidr... as snake_case keys, preset, http, secret): see the README. */
  policyFile?: string
  /** Named rule sets: pypi, npm, crates, github, go, rubygems, debian, huggingface, openai, anthropic, gemini. */
  preset?: string[]
  /** How long a request that matches no rule waits for `onAsk` (default 30000; then it is denied). */
  askTimeoutMs?: number
  /** Called for each request that matches no rule (never for a deny rule, an IP literal or a malformed request); the request waits for the answer. */
  onAsk?: (request: AskRequest) => AskAnswer | Promise<AskAnswer>
}

/** A request that matched no rule. */
export interface AskRequest {
  host: string
  port: number
  /** `CONNECT` for a tunnel, else the request's method. */
  method: string
  /** The path (never the query), when the proxy sees it: plain HTTP and intercepted hosts. */
  path?: string | null
  sandboxId?: string | null
  /** The command running in the sandbox (the latest, if several are). */
  command?: string | null
  via: 'proxy' | 'capture'
  /** What answering 'sandbox' adds: `host:port`, or an HTTP rule. */
  rule: string
}

/**
 * 'once' (this request), 'sandbox' (add the rule for the sandbox's life),
 * 'deny', or `{ answer: 'deny', reason }` (the agent reads the reason).
 * A throw, a rejection or no answer is a deny.
 */
export type AskAnswer = 'once' | 'sandbox' | 'deny' | { answer: 'once' | 'sandbox' | 'deny'; reason?: string } | null | undefined

/**
 * A secret: `{ name, host, value }`, or `{ name, host, env }` to read the
 * value from the caller's environment variable `env`, or the CLI's text
 * `"NAME=ENVVAR@HOST"`.
 */
export interface Secret {
  /** The environment variable that holds the placeholder inside. */
  name: string
  /** The host rule whose requests get the value (allow-rule syntax). */
  host: string
  value?: string
  env?: string
}

export interface ExecOptions {
  /** Extra environment variables for this command. */
  env?: Record<string, string>
  /** Working directory: relative to /workspace, or absolute below it. */
  workdir?: string
  /** Kills the command's process group after this many milliseconds. */
  timeoutMs?: number
  /** Fed to the command's stdin, then EOF. */
  stdin?: string | Uint8Array
  /** Bytes of stdout and of stderr kept. */
  outputLimit?: Size
  /** Each chunk of stdout, as it arrives (chunks keep their newlines). */
  onStdout?: (chunk: string) => void
  /** Each chunk of stderr, as it arrives. */
  onStderr?: (chunk: string) => void
}

export interface RunOptions extends ExecOptions {
  /** Each network decision, as the proxy makes it. */
  onEvent?: (event: SandboxEvent) => void
  /** Aborting kills and removes the container; the promise rejects with code 'cancelled'. */
  signal?: AbortSignal
}

/** One decision of the network proxy. */
export interface SandboxEvent {
  time: string
  sandboxId?: string
  /** `error`: allowed, but resolving or connecting failed (not a policy decision). */
  verdict: 'allow' | 'deny' | 'error'
  /** `capture`: init captured a connection to a name it resolved (the program ignored the proxy variables). */
  via: 'proxy' | 'capture'
  /** The request's path (never its query), for requests the proxy saw: plain HTTP and intercepted hosts. */
  path?: string
  /** When `onAsk` decided: once, sandbox, deny, timeout or error. */
  ask?: 'once' | 'sandbox' | 'deny' | 'timeout' | 'error'
  method: string
  host: string
  port: number
  rule: string | null
  reason: string | null
  status: number
  bytesUp: number
  bytesDown: number
  durationMs: number
  /** Identical refusals in a row are one event. */
  count: number
}

/** The result of a command; a non-zero exit or a timeout is a result, not an error. */
export interface RunResult {
  exitCode: number
  stdout: string
  stderr: string
  stdoutTruncated: boolean
  stderrTruncated: boolean
  timedOut: boolean
  oomKilled: boolean
  durationMs: number
  events: SandboxEvent[]
  /** The events that were not allowed through (`deny` and `error`), with host, port and reason. */
  refusals: SandboxEvent[]
  eventsDropped: number
  /** Workspace files whose setuid/setgid bits were removed afterwards. */
  setidStripped: string[]
  sandboxId: string
}

export interface DirEntry {
  name: string
  kind: 'file' | 'dir' | 'symlink' | 'other'
  size: number
}

type Cmd = string | readonly string[]

/** A sandbox configuration, checked here; each run gets a fresh container. */
export declare class Sandbox {
  constructor(options?: SandboxOptions)
  readonly options: SandboxOptions
  /** A string runs through /bin/sh -c; an array runs as given. */
  run(command: Cmd, options?: RunOptions): Promise<RunResult>
  /** Starts a warm sandbox for many commands. */
  session(): Promise<Session>
  /** Starts `size` (default 1) sandboxes ahead of time for fast one-shot runs. */
  pool(size?: number): Promise<Pool>
}

/** What copying the workspace back did. */
export interface SyncReport {
  written: number
  removed: number
  /** Paths changed on both sides (the sandbox's version is beside them), or not written safely. */
  conflicts: string[]
}

/** A warm sandbox. Call close() when done (in a `finally`). */
export declare class Session {
  readonly sandboxId: string
  exec(command: Cmd, options?: ExecOptions): Promise<RunResult>
  writeFile(path: string, data: string | Uint8Array): Promise<void>
  readFile(path: string): Promise<Buffer>
  readFile(path: string, encoding: BufferEncoding): Promise<string>
  list(path?: string): Promise<DirEntry[]>
  remove(path: string): Promise<void>
  /** Copies the workspace back to your directory now, as close() does at the end (only a remote engine has a copy; with a bind mount there is nothing to do). A file changed on both sides keeps yours; the sandbox's is beside it as NAME.from-sandbox, listed in `conflicts`. */
  syncBack(): Promise<SyncReport>
  /** Copies a local directory (links as links; with skipGitignored what its .gitignore ignores left out) or a tar file into the sandbox directory `dest` (under /workspace or /tmp; created if missing, never through a link), written inside the sandbox by its own user with the image's tar. */
  upload(local: string, dest: string): Promise<void>
  /** Copies the sandbox directory `path` into the existing local directory `local`: nothing written through a link or outside it; a local file that differs is kept, the sandbox's beside it as NAME.from-sandbox (listed in `conflicts`). */
  download(path: string, local: string): Promise<SyncReport>
  allow(rule: string): void
  deny(rule: string): void
  removeRule(rule: string): void
  /** The rules in force, by kind (rules an ask answered 'sandbox' added included). */
  policy(): Record<'allow' | 'deny' | 'allowCidr' | 'denyCidr' | 'resolve' | 'http' | 'preset' | 'secret', string[]>
  events(): SandboxEvent[]
  /** Starts a command in the background; resolves once it started. `timeoutMs` applies only if given. */
  spawn(command: Cmd, options?: ExecOptions): Promise<Process>
  /** Background processes: every running one and the latest ended. */
  processes(): Process[]
  /** Forwards a port on the host's 127.0.0.1 (a free one unless given) to `port` inside; resolves to '127.0.0.1:PORT'. */
  expose(port: number, hostPort?: number): Promise<string>
  /** Closes an exposed port's host listener; whether it was exposed. */
  unexpose(port: number): boolean
  /** Exposed ports: port inside -> host address. */
  exposed(): Record<string, string>
  close(): Promise<void>
}

/** A background process of a session; iterate it for its output. Dropping it does not stop it. */
export declare class Process {
  /** `p1`, `p2`, ... in its session. */
  readonly id: string
  readonly command: string[]
  readonly running: boolean
  /** The exit code once it ended (null while it runs, or if the session ended first). */
  readonly exitCode: number | null
  signal(signal: number): void
  kill(): void
  /** Output since the last call (never waits). */
  readOutput(): { stdout: string; stderr: string; dropped: number; exitCode: number | null }
  /** Resolves at the end; rejects with 'session_closed' if the session ended first. */
  wait(): Promise<RunResult>
  [Symbol.asyncIterator](): AsyncIterator<{ pipe: 'stdout' | 'stderr'; data: Buffer }>
}

/** Fresh sandboxes started ahead of time: each run gets its own, and ends it afterwards. */
export declare class Pool {
  readonly size: number
  run(command: Cmd, options?: ExecOptions): Promise<RunResult>
  close(): Promise<void>
}
