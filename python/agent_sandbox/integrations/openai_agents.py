"""agent-sandbox as a sandbox of the OpenAI Agents SDK (``openai-agents``,
tested with 0.24). Commands run in an agent-sandbox session; files go
through its host-side file API; background processes (the SDK's PTY
interface) are session processes; exposed ports are forwarded to the host's
loopback.

>>> from agents import Runner, RunConfig                        # doctest: +SKIP
>>> from agents.sandbox import SandboxAgent, SandboxRunConfig   # doctest: +SKIP
>>> from agent_sandbox.integrations.openai_agents import AgentSandboxClient, AgentSandboxClientOptions
>>> client = AgentSandboxClient()                               # doctest: +SKIP
>>> options = AgentSandboxClientOptions(sandbox={"workspace": ".", "allow": ["pypi.org"]})  # doctest: +SKIP
>>> run_config = RunConfig(sandbox=SandboxRunConfig(client=client, options=options))        # doctest: +SKIP

The workspace is ``/workspace`` (the manifest's root must be it). The
sandbox options are :class:`agent_sandbox.Sandbox`'s keyword arguments.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from pathlib import Path
from typing import Any, Literal

from agents.sandbox import ExecResult, Manifest
from agents.sandbox.errors import ExecTimeoutError, WorkspaceReadNotFoundError
from agents.sandbox.session import (
    BaseSandboxClient,
    BaseSandboxClientOptions,
    BaseSandboxSession,
    SandboxSession,
    SandboxSessionState,
)
from agents.sandbox.session.pty_types import PtyExecUpdate
from agents.sandbox.snapshot import NoopSnapshotSpec, resolve_snapshot
from agents.sandbox.types import ExposedPortEndpoint

from .. import FileError, Process, Sandbox, Session

WORKSPACE = "/workspace"
# How long a background command is watched before its first answer, when
# the SDK gives no yield time.
_DEFAULT_YIELD_S = 10.0


class AgentSandboxClientOptions(BaseSandboxClientOptions):
    """Options of the sandbox: ``sandbox`` holds :class:`agent_sandbox.Sandbox`'s
    keyword arguments (``image``, ``workspace``, ``allow``, ``policy_file``, ...)."""

    type: Literal["agent_sandbox"] = "agent_sandbox"
    sandbox: dict[str, Any] = {}


class AgentSandboxSessionState(SandboxSessionState):
    """What the SDK stores: the sandbox id only. The sandbox's options (its
    policy, secrets, mounts) stay with the client, never in stored state."""

    type: Literal["agent_sandbox"] = "agent_sandbox"
    sandbox_id: str = ""


class AgentSandboxSession(BaseSandboxSession):
    """One agent-sandbox session behind the SDK's session interface."""

    def __init__(self, state: AgentSandboxSessionState, session: Session) -> None:
        self.state = state
        self._session = session
        self._pty: dict[int, Process] = {}

    @property
    def session(self) -> Session:
        """The agent-sandbox session (for anything the SDK has no word for)."""
        return self._session

    async def _exec_internal(self, *command: str | Path, timeout: float | None = None) -> ExecResult:
        r = await self._session.exec_async([str(c) for c in command], timeout=timeout)
        if r.timed_out:
            raise ExecTimeoutError(command=tuple(str(c) for c in command), timeout_s=timeout)
        return ExecResult(stdout=r.stdout_bytes, stderr=r.stderr_bytes, exit_code=r.exit_code)

    async def read(self, path: Path, *, user: Any = None) -> io.IOBase:
        p = self.normalize_path(path)
        try:
            return io.BytesIO(await self._session.read_file_async(str(p)))
        except FileError:
            raise WorkspaceReadNotFoundError(path=path) from None

    async def write(self, path: Path, data: io.IOBase, *, user: Any = None) -> None:
        p = self.normalize_path(path, for_write=True)
        payload = data.read()
        await self._session.write_file_async(str(p), payload.encode() if isinstance(payload, str) else payload)

    async def running(self) -> bool:
        return self._session._native is not None

    async def persist_workspace(self) -> io.IOBase:
        r = await self._session.exec_async(["tar", "-C", WORKSPACE, "-cf", "-", "."], output_limit="1g")
        if r.exit_code != 0 or r.stdout_truncated:
            raise RuntimeError(f"archiving {WORKSPACE} failed: {r.stderr.strip() or 'output truncated'}")
        return io.BytesIO(r.stdout_bytes)

    async def hydrate_workspace(self, data: io.IOBase) -> None:
        r = await self._session.exec_async(["tar", "-C", WORKSPACE, "-xf", "-"], stdin=data.read())
        if r.exit_code != 0:
            raise RuntimeError(f"restoring {WORKSPACE} failed: {r.stderr.strip()}")

    # Background processes: the SDK's PTY interface, without a terminal.
    def supports_pty(self) -> bool:
        return True

    async def _watch(self, proc: Process, yield_time_s: float | None) -> PtyExecUpdate:
        deadline = time.monotonic() + (_DEFAULT_YIELD_S if yield_time_s is None else yield_time_s)
        while proc.running and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        got = proc.read_output()
        number = int(proc.id[1:])
        if proc.running:
            self._pty[number] = proc
        else:
            self._pty.pop(number, None)
        return PtyExecUpdate(
            process_id=number if proc.running else None,
            output=got.stdout_bytes + got.stderr_bytes,
            exit_code=proc.exit_code,
            original_token_count=None,
        )

    async def pty_exec_start(self, *command: str | Path, timeout: float | None = None, shell: bool | list[str] = True,
                             user: Any = None, tty: bool = False, yield_time_s: float | None = None,
                             max_output_tokens: int | None = None) -> PtyExecUpdate:
        argv = self._prepare_exec_command(*command, shell=shell, user=None)
        proc = await self._session.spawn_async(argv, timeout=timeout)
        return await self._watch(proc, yield_time_s)

    async def pty_write_stdin(self, *, session_id: int, chars: str, yield_time_s: float | None = None,
                              max_output_tokens: int | None = None) -> PtyExecUpdate:
        proc = self._pty.get(session_id)
        if proc is None:
            raise ValueError(f"no running process {session_id}")
        if chars:
            raise ValueError("agent-sandbox processes take stdin when they start, not later; send chars='' to read output")
        return await self._watch(proc, yield_time_s)

    async def pty_terminate_all(self) -> None:
        for proc in list(self._pty.values()):
            proc.kill()
        self._pty.clear()

    async def _resolve_exposed_port(self, port: int) -> ExposedPortEndpoint:
        host, _, host_port = (await self._session.expose_async(port)).rpartition(":")
        return ExposedPortEndpoint(host=host, port=int(host_port))

    async def _shutdown_backend(self) -> None:
        await self._session.close_async()


class AgentSandboxClient(BaseSandboxClient[AgentSandboxClientOptions]):
    """Creates agent-sandbox sessions for the SDK's runner."""

    backend_id = "agent_sandbox"
    supports_default_options = True

    def __init__(self, options: AgentSandboxClientOptions | None = None) -> None:
        super().__init__()
        # Used by resume(): the options a stored state could otherwise widen.
        self._options = options or AgentSandboxClientOptions()

    async def create(self, *, snapshot: Any = None, manifest: Manifest | None = None,
                     options: AgentSandboxClientOptions | None = None) -> SandboxSession:
        manifest = manifest or Manifest(root=WORKSPACE)
        if manifest.root != WORKSPACE:
            raise ValueError(f"an agent-sandbox workspace is {WORKSPACE}, not {manifest.root!r}: use Manifest(root={WORKSPACE!r})")
        self._validate_manifest_for_create(manifest)
        if options is not None:
            self._options = options
        session = await Sandbox(**dict(self._options.sandbox)).session().start_async()
        sid = uuid.uuid4()
        state = AgentSandboxSessionState(
            session_id=sid, manifest=manifest, sandbox_id=session.id,
            # The workspace is the caller's directory (or scratch): no copies of it by default.
            snapshot=resolve_snapshot(snapshot or NoopSnapshotSpec(), str(sid)),
        )
        return self._wrap_session(AgentSandboxSession(state, session))

    async def delete(self, session: SandboxSession) -> SandboxSession:
        inner = getattr(session, "_inner", session)
        if isinstance(inner, AgentSandboxSession):
            await inner.session.close_async()
        return session

    async def resume(self, state: SandboxSessionState) -> SandboxSession:
        """A new sandbox with this client's options (a sandbox's processes
        and /tmp do not outlive it; its workspace, a host directory, does)."""
        if not isinstance(state, AgentSandboxSessionState):
            raise TypeError(f"not an agent-sandbox session state: {type(state).__name__}")
        session = await Sandbox(**dict(self._options.sandbox)).session().start_async()
        state.sandbox_id = session.id
        return self._wrap_session(AgentSandboxSession(state, session))

    def deserialize_session_state(self, payload: dict[str, object]) -> SandboxSessionState:
        return self._deserialize_session_state_payload(payload, AgentSandboxSessionState)
