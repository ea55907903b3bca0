// agent-sandbox as a sandbox of the OpenAI Agents SDK for JavaScript (@openai/agents 0.20).
import type { SandboxOptions, Session } from './index'

/** One agent-sandbox session behind the SDK's SandboxSession interface. */
export declare class AgentSandboxSession {
  readonly state: { manifest: unknown; sandboxId: string; [key: string]: unknown }
  /** The agent-sandbox Session (for anything the SDK has no word for). */
  readonly session: Session
  /** Runs `cmd` as a background process; waits up to yieldTimeMs (10 s), then reports its exit code or a session id for writeStdin. */
  execCommand(args: { cmd: string; workdir?: string; yieldTimeMs?: number; maxOutputTokens?: number }): Promise<string>
  /** True: the SDK then offers write_stdin (polling; Ctrl-C sends SIGINT; other input is refused: there is no terminal). */
  supportsPty(): boolean
  writeStdin(args: { sessionId: number; chars?: string; yieldTimeMs?: number; maxOutputTokens?: number }): Promise<string>
  readFile(args: { path: string }): Promise<Uint8Array>
  resolveExposedPort(port: number): Promise<{ host: string; port: number; url: string }>
  shutdown(): Promise<void>
}

/** A SandboxClient for `new Runner().run(agent, input, { sandbox: { client } })`. */
export declare class AgentSandboxClient {
  readonly backendId: 'agent_sandbox'
  readonly supportsDefaultOptions: false
  constructor(options?: SandboxOptions)
  create(args?: { manifest?: unknown; options?: SandboxOptions }): Promise<AgentSandboxSession>
}
