"""An agent-style loop: run every command a model proposes, auto-approved, in a sandbox.

No model is called here: PROPOSED stands in for what an LLM would suggest. The point is the
shape: no "run this?" prompt, because the box is the safety, and every refusal comes back as
data the agent can read and correct itself with. Each command gets a fresh sandbox from a pool
that starts the next one while the agent is thinking, so a command costs milliseconds, not a
container start.

    python examples/python/agent_loop.py [WORKSPACE]
"""

import sys
import tempfile

from agent_sandbox import Sandbox, SandboxError

PROPOSED = [
    "python3 --version",
    "echo 'print(\"hello from the workspace\")' > hello.py && python3 hello.py",
    "curl -sS -o /dev/null -w '%{http_code}\\n' https://registry.npmjs.org/",  # not allowed: 403
    "rm -rf /usr 2>&1 | tail -1",  # harmless: the root is read-only
    "cat ~/.ssh/id_rsa",  # there is no host home in here
]


def main() -> int:
    workspace = sys.argv[1] if len(sys.argv) > 1 else tempfile.mkdtemp(prefix="agent-ws-")
    sandbox = Sandbox(workspace=workspace, allow=["pypi.org", "files.pythonhosted.org"], timeout=60, memory="512m")
    try:
        with sandbox.pool(2) as pool:  # or sandbox.run(cmd): the same box, started on demand
            for cmd in PROPOSED:
                print(f"$ {cmd}")
                result = pool.run(cmd)
                for line in (result.stdout + result.stderr).splitlines():
                    print(f"  {line}")
                for event in result.events:
                    if not event.allowed:
                        print(f"  (network: {event.host}:{event.port} refused: {event.reason})")
                print(f"  -> exit {result.exit_code} ({result.duration * 1000:.0f} ms)")
    except SandboxError as e:  # the sandbox itself could not run: tell the agent why
        print(f"  sandbox error [{e.code}]: {e}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
