// Type-checked by `make test` (tsc --noEmit --strict) against the installed package.
import { Sandbox, SandboxError, type RunResult, type SandboxEvent, type SandboxErrorCode, type DirEntry } from 'agent-sandbox'

const sandbox = new Sandbox({
  workspace: '.',
  allow: ['registry.npmjs.org', '.github.com'],
  resolve: ['allowed.test:443:127.0.0.1'],
  env: { CI: '1' },
  timeoutMs: 60_000,
  memory: '1g',
  cpus: 1,
  pids: 256,
})

export async function check(signal: AbortSignal): Promise<number> {
  const events: SandboxEvent[] = []
  try {
    const r: RunResult = await sandbox.run(['npm', 'test'], {
      onStdout: (chunk: string) => console.log(chunk),
      onEvent: (e) => {
        const v: 'allow' | 'deny' | 'error' = e.verdict
        if (v !== 'allow') events.push(e)
      },
      signal,
    })
    const denied: string[] = r.refusals.map((e) => `${e.host}:${e.port} ${e.via}`)
    return r.timedOut ? 124 : r.exitCode + denied.length * 0
  } catch (e) {
    if (e instanceof SandboxError) {
      const code: SandboxErrorCode = e.code
      return code === 'cancelled' ? 130 : 125
    }
    throw e
  }
}

export async function edit(): Promise<string> {
  const s = await sandbox.session()
  try {
    await s.writeFile('notes.txt', 'hello')
    const r: RunResult = await s.exec('wc -c notes.txt', { workdir: '.', timeoutMs: 5_000, env: { LC_ALL: 'C' } })
    const entries: DirEntry[] = await s.list()
    s.allow('pypi.org')
    const text: string = await s.readFile('notes.txt', 'utf8')
    return `${r.stdout} ${entries.length} ${text}`
  } finally {
    await s.close()
  }
}
