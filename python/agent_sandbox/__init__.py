"""agent-sandbox: run AI agents' commands in a box they cannot leave.

>>> from agent_sandbox import Sandbox
>>> result = Sandbox(workspace=".", allow=["pypi.org"]).run("pip download requests")  # doctest: +SKIP

Every method has a blocking form (``run``, ``exec``, ``read_file``, ...) and
an asyncio form with an ``_async`` suffix; sessions and pools are context
managers (``with`` and ``async with``). Durations are seconds, sizes bytes
or Docker's text (``"512m"``). Option names and meanings are the library's
and the CLI's (see the README's option table).
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import contextlib
import inspect
import json
import os
import threading
from dataclasses import asdict, dataclass
from typing import Any, Callable, Coroutine, Mapping, Sequence, TypeVar

from . import _native
from .errors import (
    CancelledError,
    DockerUnavailableError,
    EngineError,
    EngineTooOldError,
    FileError,
    ImageNotFoundError,
    InvalidArgumentError,
    PolicyError,
    PoolClosedError,
    SandboxError,
    SessionClosedError,
    WorkspaceError,
)

__version__: str = _native.__version__
# Before the interpreter finalizes, the native module's threads stop
# calling into Python (one that did then would abort the process).
atexit.register(_native._interpreter_exiting)
__all__ = ["Sandbox", "Session", "Process", "ProcessOutput", "Pool", "RunResult", "Event", "AskRequest", "Answer", "SandboxError", "PolicyError",
           "WorkspaceError", "DockerUnavailableError", "EngineTooOldError", "ImageNotFoundError",
           "InvalidArgumentError", "EngineError", "CancelledError", "FileError", "SessionClosedError",
           "PoolClosedError", "__version__"]

Command = str | Sequence[str]
"""One string runs through ``/bin/sh -c``; a list runs as given."""
Output = Callable[[str], Any]
"""Called with each chunk of output as text (chunks keep their newlines:
``on_stdout=sys.stdout.write``, or ``lambda t: print(t, end="")``)."""
T = TypeVar("T")


@dataclass(frozen=True, repr=False)
class Event:
    """One decision of the network proxy (identical refusals in a row are one
    event with a ``count``)."""

    verdict: str
    """``allow``, ``deny`` (refused: policy, malformed, a limit) or ``error``
    (allowed, but resolving or connecting failed)."""
    host: str
    port: int
    method: str
    time: str = ""
    rule: str | None = None
    reason: str | None = None
    status: int = 0
    bytes_up: int = 0
    bytes_down: int = 0
    duration_ms: int = 0
    count: int = 1
    sandbox_id: str | None = None
    via: str = "proxy"
    """``proxy`` (the program used the proxy variables) or ``capture`` (init
    captured a connection to a name it resolved)."""
    path: str | None = None
    """The request's path (never its query), for requests the proxy saw:
    plain HTTP and hosts whose TLS it intercepts (a secret or an HTTP rule)."""
    ask: str | None = None
    """When ``on_ask`` decided: ``once``, ``sandbox``, ``deny``, ``timeout`` or ``error``."""

    @property
    def allowed(self) -> bool:
        return self.verdict == "allow"

    @classmethod
    def _of(cls, raw: str | dict) -> Event:
        d = json.loads(raw) if isinstance(raw, str) else raw
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})

    def to_json(self) -> str:
        """The event as one line of JSON (the CLI's audit log format)."""
        return json.dumps(asdict(self))

    def __repr__(self) -> str:
        return f"Event({self.verdict} {self.method} {self.host}:{self.port} rule={self.rule!r} reason={self.reason!r})"


@dataclass(frozen=True)
class AskRequest:
    """A request that matched no rule, for the ``on_ask`` callback."""

    host: str
    port: int
    method: str
    """``CONNECT`` for a tunnel, else the request's method."""
    rule: str
    """What answering ``"sandbox"`` adds (``host:port``, or an HTTP rule)."""
    path: str | None = None
    """The path (never the query), when the proxy sees it: plain HTTP and intercepted hosts."""
    sandbox_id: str | None = None
    command: str | None = None
    """The command running in the sandbox (the latest, if several are)."""
    via: str = "proxy"


Answer = str | Mapping[str, str] | None
"""What ``on_ask`` returns (or its coroutine returns): ``"once"`` (this
request), ``"sandbox"`` (add the rule for the sandbox's life), ``"deny"``,
``{"answer": "deny", "reason": "..."}`` (the agent reads the reason), or
``None`` (deny). An exception is a deny with the exception as its reason."""


def _asker(on_ask: Callable[[AskRequest], Any] | None, timeout: float | None) -> Callable[[str], str] | None:
    """``on_ask`` as the native module calls it: JSON text in and out, on
    one of the library's threads. A coroutine runs on the event loop the
    sandbox call came from (it is free: it awaits the call), else on a loop
    of its own."""
    if on_ask is None:
        return None
    try:
        loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
    except RuntimeError:
        loop = None
    wait = timeout if timeout is not None else 30.0

    def call(raw: str) -> str:
        _where.in_callback = True
        try:
            d = json.loads(raw)
            answer = on_ask(AskRequest(**{k: v for k, v in d.items() if k in AskRequest.__dataclass_fields__}))
            if inspect.isawaitable(answer):
                async def settle(a: Any = answer) -> Any:
                    return await a
                if loop is not None and loop.is_running():
                    answer = asyncio.run_coroutine_threadsafe(settle(), loop).result(wait)
                else:
                    answer = asyncio.run(settle())
            if answer is None:
                answer = {"answer": "deny", "reason": "the ask callback gave no answer"}
            return json.dumps(answer if isinstance(answer, str) else dict(answer))
        except BaseException as e:  # noqa: BLE001 - any failure is a deny, never a crash
            return json.dumps({"answer": "deny", "reason": f"{type(e).__name__}: {e}"})
        finally:
            _where.in_callback = False

    return call


@dataclass(frozen=True, repr=False)
class RunResult:
    """The result of a command. ``stdout``/``stderr`` are text (UTF-8, bad
    bytes replaced); ``stdout_bytes``/``stderr_bytes`` are exact. A non-zero
    exit or a timeout is a result, not an exception."""

    exit_code: int
    stdout_bytes: bytes
    stderr_bytes: bytes
    stdout_truncated: bool
    stderr_truncated: bool
    timed_out: bool
    oom_killed: bool
    duration: float
    """Wall time in seconds."""
    events: list[Event]
    """Every network decision during the command."""
    events_dropped: int
    setid_stripped: list[str]
    """Workspace files whose setuid/setgid bits were removed afterwards."""
    sandbox_id: str

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode("utf-8", "replace")

    @property
    def refusals(self) -> list[Event]:
        """The events that were not allowed through: refused by the policy
        (``deny``) or allowed but unreachable (``error``), with host, port
        and reason."""
        return [e for e in self.events if e.verdict != "allow"]

    @property
    def success(self) -> bool:
        """Exit code 0 and no timeout."""
        return self.exit_code == 0 and not self.timed_out

    @classmethod
    def _of(cls, native: tuple[str, bytes, bytes]) -> RunResult:
        meta, out, err = native
        d = json.loads(meta)
        return cls(d["exit_code"], out, err, d["stdout_truncated"], d["stderr_truncated"], d["timed_out"],
                   d["oom_killed"], d["duration_ms"] / 1e3, [Event._of(e) for e in d["events"]],
                   d["events_dropped"], d["setid_stripped"], d["sandbox_id"])

    def __repr__(self) -> str:
        return (f"RunResult(exit_code={self.exit_code}, timed_out={self.timed_out}, oom_killed={self.oom_killed}, "
                f"stdout={len(self.stdout_bytes)} bytes, stderr={len(self.stderr_bytes)} bytes, "
                f"events={len(self.events)}, duration={self.duration:.3f}s)")


# -- the sync API: one event loop thread runs every blocking call's coroutine.

_loop: asyncio.AbstractEventLoop | None = None
_loop_lock = threading.Lock()


_where = threading.local()


def _callback(fn: Callable[[Any], Any] | None, wrap: Callable[[str], Any] = lambda x: x) -> Callable[[str], Any] | None:
    """A user callback as the native module calls it (on the library's
    threads): marked, so a blocking call from inside it fails instead of
    waiting on itself."""
    if fn is None:
        return None

    def call(raw: str) -> Any:
        _where.in_callback = True
        try:
            return fn(wrap(raw))
        finally:
            _where.in_callback = False

    return call


def _forget_loop() -> None:
    """A forked child has no loop thread: it starts its own on first use."""
    global _loop
    _loop = None


os.register_at_fork(after_in_child=_forget_loop)


def _block(coro: Coroutine[Any, Any, T]) -> T:
    """Runs ``coro`` on the library's loop thread and waits for it. Ctrl-C
    cancels it, waits for its cleanup (a run removes its container, an exec
    stops its command), then raises KeyboardInterrupt."""
    global _loop
    if getattr(_where, "in_callback", False) or (
        _loop is not None and _loop._thread_id == threading.get_ident()  # type: ignore[attr-defined]
    ):
        coro.close()
        raise SandboxError(
            "a blocking agent-sandbox call from a callback or from the library's own thread would "
            "wait on itself; call the _async method from an event loop, or make the call elsewhere",
            "invalid_argument",
        )
    with _loop_lock:
        if _loop is None:
            _loop = asyncio.new_event_loop()
            threading.Thread(target=_loop.run_forever, name="agent-sandbox", daemon=True).start()
    loop, done, box = _loop, concurrent.futures.Future(), []

    def start() -> None:
        box.append(loop.create_task(coro))
        box[0].add_done_callback(done.set_result)

    loop.call_soon_threadsafe(start)
    try:
        task = done.result()
    except KeyboardInterrupt:
        loop.call_soon_threadsafe(lambda: box[0].cancel())
        with contextlib.suppress(BaseException):
            done.result(timeout=60)
        raise
    return task.result()


SecretLike = str | tuple[str, str, str] | Mapping[str, str]
"""A secret: ``(name, host_rule, value)``; ``{"name", "host", "value"}`` or
``{"name", "host", "env"}`` (the value read from the caller's variable
``env``); or the CLI's text ``"NAME=ENVVAR@HOST"``."""


def _secret(s: SecretLike) -> str | dict[str, str]:
    if isinstance(s, str):
        return s
    if isinstance(s, tuple):
        if len(s) != 3:
            raise InvalidArgumentError("a secret is (name, host_rule, value)")
        return {"name": s[0], "host": s[1], "value": s[2]}
    return dict(s)


def _json(options: Mapping[str, Any]) -> str:
    """Options as JSON for the core's options layer: paths as text, anything
    else JSON lacks as its type's name (the core then names the option)."""
    return json.dumps(dict(options), default=lambda v: os.fspath(v) if isinstance(v, os.PathLike) else f"<{type(v).__name__}>")


def _exec_options(env, workdir, timeout, stdin, output_limit, unknown) -> tuple[str, bytes | None]:
    """Per-command options as JSON (unknown ones included: the core names
    them in its error) and stdin as bytes."""
    if isinstance(stdin, str):
        stdin = stdin.encode()
    options = {"env": env, "workdir": workdir, "timeout": timeout, "output_limit": output_limit}
    return _json(options | unknown), stdin


class Sandbox:
    """A sandbox configuration; every option is checked here. Each ``run``
    gets a fresh container; ``session()`` keeps one warm, ``pool(n)`` starts
    fresh ones ahead of time."""

    def __init__(self, *, image: str | None = None, workspace: str | os.PathLike | None = None,
                 skip_gitignored: bool | None = None,
                 allow: Sequence[str] = (), deny: Sequence[str] = (), allow_cidr: Sequence[str] = (),
                 deny_cidr: Sequence[str] = (), resolve: Sequence[str] = (), env: Mapping[str, str] | None = None,
                 timeout: float | str | None = None, memory: int | str | None = None, cpus: float | None = None,
                 pids: int | None = None, tmp_size: int | str | None = None, output_limit: int | str | None = None,
                 file_limit: int | str | None = None, mounts: Sequence[str] = (), user: str | None = None,
                 runtime: str | None = None, idle_timeout: float | str | None = None,
                 max_connections: int | None = None, connections_per_second: int | None = None,
                 allow_http: Sequence[str] = (), secret: Sequence[SecretLike] = (),
                 upstream_ca: Sequence[str | os.PathLike] = (), policy_file: str | os.PathLike | None = None,
                 preset: Sequence[str] = (), ask_timeout: float | str | None = None,
                 on_ask: Callable[[AskRequest], Answer | Coroutine[Any, Any, Answer]] | None = None,
                 **unknown: Any):
        """``on_ask`` is called (sync or async) for each request that
        matches no rule; the request waits for its :data:`Answer`, at most
        ``ask_timeout`` seconds (default 30), then is denied. ``policy_file``
        is a TOML policy (see the README); ``preset`` names rule sets
        (``["pypi", "npm"]``). ``skip_gitignored``: where the workspace is
        copied to the engine (a remote engine), leave out what its
        ``.gitignore`` files ignore (a bind mount shows everything)."""
        self._on_ask, self._ask_timeout = on_ask, ask_timeout
        options = {k: v for k, v in locals().items() if k not in ("self", "unknown", "on_ask")} | unknown
        options["secret"] = [_secret(s) for s in secret]
        self._options = {k: v for k, v in options.items() if v not in (None, (), [])}
        if "secret" in self._options:
            # Never shown: the repr names each secret and its host only.
            self._options["secret"] = [f"{s['name']}@{s['host']}" if isinstance(s, dict) else s.split("=")[0]
                                       for s in self._options["secret"]]
        # None means the default: left out (a flag such as skip_gitignored takes no null).
        self._native = _native.Sandbox(_json({k: v for k, v in options.items() if v is not None}))

    def __repr__(self) -> str:
        return f"Sandbox({', '.join(f'{k}={v!r}' for k, v in self._options.items())})"

    async def run_async(self, cmd: Command, *, env: Mapping[str, str] | None = None, workdir: str | None = None,
                        timeout: float | str | None = None, stdin: str | bytes | None = None,
                        output_limit: int | str | None = None, on_stdout: Output | None = None,
                        on_stderr: Output | None = None, on_event: Callable[[Event], Any] | None = None,
                        **unknown: Any) -> RunResult:
        """Runs ``cmd`` in a fresh sandbox, removed afterwards. Per-run options
        add to (``env``) or replace the sandbox's; ``workdir`` is below
        /workspace; ``on_event`` gets each :class:`Event` as the proxy decides.
        Cancelling the task removes the container first."""
        options, data = _exec_options(env, workdir, timeout, stdin, output_limit, unknown)
        cancel = _native.Cancel()
        running = asyncio.ensure_future(self._native.run(cmd, options, data, _callback(on_stdout),
                                                         _callback(on_stderr), _callback(on_event, Event._of), cancel,
                                                         self._asker()))
        try:
            return RunResult._of(await asyncio.shield(running))
        except asyncio.CancelledError:
            cancel.cancel()
            with contextlib.suppress(BaseException):
                await running
            raise

    def run(self, cmd: Command, **options: Any) -> RunResult:
        """Blocking :meth:`run_async` (same arguments); Ctrl-C removes the
        container, then raises KeyboardInterrupt."""
        return _block(self.run_async(cmd, **options))

    def _asker(self) -> Callable[[str], str] | None:
        timeout = self._ask_timeout if isinstance(self._ask_timeout, (int, float)) else None
        return _asker(self._on_ask, timeout)

    def session(self) -> Session:
        """A warm sandbox for many commands: ``with sandbox.session() as s:``."""
        return Session(self)

    def pool(self, size: int = 1) -> Pool:
        """``size`` fresh sandboxes started ahead of time: ``with sandbox.pool(2) as p:``."""
        return Pool(self, size)


class _Started:
    """Start/close and the context manager protocols, shared by sessions and pools."""

    _native: Any = None
    _closed_error: type[SandboxError] = SandboxError

    async def _start(self) -> Any:
        raise NotImplementedError

    def _handle(self) -> Any:
        if self._native is None:
            raise self._closed_error("not started (use `with`, or call start())")
        return self._native

    async def start_async(self):
        """Starts it (what ``async with`` does); returns self."""
        self._native = await self._start()
        return self

    def start(self):
        """Starts it (what ``with`` does); returns self."""
        return _block(self.start_async())

    async def close_async(self) -> None:
        """Removes its sandboxes. Idempotent."""
        native, self._native = self._native, None
        if native is not None:
            await native.close()

    def close(self) -> None:
        """Blocking :meth:`close_async`."""
        _block(self.close_async())

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    async def __aenter__(self):
        return await self.start_async()

    async def __aexit__(self, *exc: object) -> None:
        await self.close_async()


class Session(_Started):
    """One sandbox kept warm for many commands (an exec costs milliseconds).
    Files under /workspace are reached from the host side (never through a
    symlink); under /tmp, inside the sandbox."""

    _closed_error = SessionClosedError

    def __init__(self, sandbox: Sandbox):
        self._sandbox = sandbox

    async def _start(self) -> Any:
        return await self._sandbox._native.start(self._sandbox._asker())

    @property
    def id(self) -> str:
        """The sandbox id (the ``agent-sandbox.id`` container label)."""
        return self._handle().id

    async def exec_async(self, cmd: Command, *, env: Mapping[str, str] | None = None, workdir: str | None = None,
                         timeout: float | str | None = None, stdin: str | bytes | None = None,
                         output_limit: int | str | None = None, on_stdout: Output | None = None,
                         on_stderr: Output | None = None, **unknown: Any) -> RunResult:
        """Runs ``cmd`` in the session; several may run at once. Cancelling
        the task kills the command."""
        options, data = _exec_options(env, workdir, timeout, stdin, output_limit, unknown)
        return RunResult._of(await self._handle().exec(cmd, options, data, _callback(on_stdout), _callback(on_stderr)))

    def exec(self, cmd: Command, **options: Any) -> RunResult:
        """Blocking :meth:`exec_async` (same arguments); Ctrl-C kills the command."""
        return _block(self.exec_async(cmd, **options))

    async def write_file_async(self, path: str, data: str | bytes) -> None:
        """Writes text or bytes under /workspace or /tmp (parents created)."""
        await self._handle().write_file(path, data.encode() if isinstance(data, str) else bytes(data))

    def write_file(self, path: str, data: str | bytes) -> None:
        _block(self.write_file_async(path, data))

    async def read_file_async(self, path: str) -> bytes:
        """Reads a file under /workspace or /tmp (at most the file limit)."""
        return await self._handle().read_file(path)

    def read_file(self, path: str) -> bytes:
        return _block(self.read_file_async(path))

    async def list_async(self, path: str = ".") -> list[dict[str, Any]]:
        """A directory's entries as dicts (``name``, ``kind``: file, dir,
        symlink or other, ``size``), sorted by name; at most 10,000."""
        entries, _ = await self._handle().listing(path)
        return [{"name": n, "kind": k, "size": z} for n, k, z in entries]

    def list(self, path: str = ".") -> list[dict[str, Any]]:
        return _block(self.list_async(path))

    async def remove_async(self, path: str) -> None:
        """Removes a file, a symlink (not its target) or an empty directory."""
        await self._handle().remove(path)

    def remove(self, path: str) -> None:
        _block(self.remove_async(path))

    async def sync_back_async(self) -> dict[str, Any]:
        """Copies the workspace back to your directory now, as ``close``
        does at the end (only an engine that does not share this machine's
        files has a copy; with a bind mount there is nothing to do). Returns
        ``written``, ``removed`` and ``conflicts`` (paths changed on both
        sides: yours is kept, the sandbox's is beside it as
        ``NAME.from-sandbox``)."""
        written, removed, conflicts = await self._handle().sync_back()
        return {"written": written, "removed": removed, "conflicts": conflicts}

    def sync_back(self) -> dict[str, Any]:
        return _block(self.sync_back_async())

    async def upload_async(self, local: str | os.PathLike[str], dest: str) -> None:
        """Copies a local directory (links as links; with
        ``skip_gitignored`` what its ``.gitignore`` ignores left out) or a
        tar file into the sandbox directory ``dest`` (under ``/workspace``
        or ``/tmp``; created if missing, never through a link). Written
        inside the sandbox by its own user, with the image's ``tar``."""
        await self._handle().upload(os.fspath(local), dest)

    def upload(self, local: str | os.PathLike[str], dest: str) -> None:
        _block(self.upload_async(local, dest))

    async def download_async(self, path: str, local: str | os.PathLike[str]) -> dict[str, Any]:
        """Copies the sandbox directory ``path`` into the existing local
        directory ``local``: nothing written through a link or outside it;
        a local file that differs is kept and the sandbox's put beside it
        as ``NAME.from-sandbox`` (listed in ``conflicts``). Returns
        ``written``, ``removed`` (always 0) and ``conflicts``."""
        written, removed, conflicts = await self._handle().download(path, os.fspath(local))
        return {"written": written, "removed": removed, "conflicts": conflicts}

    def download(self, path: str, local: str | os.PathLike[str]) -> dict[str, Any]:
        return _block(self.download_async(path, local))

    def allow(self, rule: str) -> None:
        """Allows a host rule from now on (new connections)."""
        self._handle().change_rules("allow", rule)

    def deny(self, rule: str) -> None:
        """Denies a host rule from now on."""
        self._handle().change_rules("deny", rule)

    def remove_rule(self, rule: str) -> None:
        """Removes a rule (allow, deny or CIDR) written exactly so."""
        self._handle().change_rules("remove_rule", rule)

    @property
    def policy(self) -> dict[str, list[str]]:
        """The rules in force, by kind (``allow``, ``deny``, ``allow_cidr``,
        ``deny_cidr``, ``resolve``, ``http``, ``preset``, and each secret as
        ``NAME@HOST``): rules an ask answered ``"sandbox"`` added included."""
        return json.loads(self._handle().policy())

    @property
    def events(self) -> list[Event]:
        """Every network decision of the session so far."""
        return [Event._of(e) for e in self._handle().events()]

    async def spawn_async(self, cmd: Command, *, env: Mapping[str, str] | None = None, workdir: str | None = None,
                          timeout: float | str | None = None, stdin: str | bytes | None = None,
                          output_limit: int | str | None = None, on_stdout: Output | None = None,
                          on_stderr: Output | None = None, **unknown: Any) -> Process:
        """Starts ``cmd`` in the background and returns at once (a dev server,
        a watcher). Its output is kept (the newest ``output_limit`` bytes);
        ``timeout`` applies only if given. It ends with :meth:`Process.kill`,
        its own exit, or the session."""
        options, data = _exec_options(env, workdir, timeout, stdin, output_limit, unknown)
        return Process(await self._handle().spawn(cmd, options, data, _callback(on_stdout), _callback(on_stderr)))

    def spawn(self, cmd: Command, **options: Any) -> Process:
        """Blocking :meth:`spawn_async` (same arguments); returns once it started."""
        return _block(self.spawn_async(cmd, **options))

    @property
    def processes(self) -> list[Process]:
        """Background processes: every running one and the latest ended."""
        return [Process(p) for p in self._handle().processes()]

    async def expose_async(self, port: int, host_port: int | None = None) -> str:
        """Forwards ``127.0.0.1:HOST_PORT`` on the host (a free port unless
        given) to ``port`` inside the sandbox; returns ``"127.0.0.1:PORT"``.
        Closed with :meth:`unexpose` or the session."""
        return await self._handle().expose(port, host_port)

    def expose(self, port: int, host_port: int | None = None) -> str:
        return _block(self.expose_async(port, host_port))

    def unexpose(self, port: int) -> bool:
        """Closes an exposed port's host listener; whether it was exposed."""
        return self._handle().unexpose(port)

    @property
    def exposed(self) -> dict[int, str]:
        """Exposed ports: port inside -> host address."""
        return dict(self._handle().exposed())

    def __repr__(self) -> str:
        return f"Session(id={self._native.id!r})" if self._native else "Session(not started)"


@dataclass(frozen=True)
class ProcessOutput:
    """Output of a background process since the last :meth:`Process.read_output`."""

    stdout_bytes: bytes
    stderr_bytes: bytes
    dropped: int
    """Bytes that were dropped before they were read (more than the output limit in between)."""
    exit_code: int | None
    """The exit code once it ended, else ``None``."""

    @property
    def stdout(self) -> str:
        return self.stdout_bytes.decode("utf-8", "replace")

    @property
    def stderr(self) -> str:
        return self.stderr_bytes.decode("utf-8", "replace")


class Process:
    """A background process of a session (:meth:`Session.spawn`). Iterate it
    (``for pipe, data in proc`` or ``async for``) for its output as
    ``("stdout" | "stderr", bytes)`` from the oldest byte kept until it
    ends. Dropping it does not stop the process."""

    def __init__(self, native: Any):
        self._native = native

    @property
    def id(self) -> str:
        return self._native.id

    @property
    def command(self) -> list[str]:
        return self._native.command

    @property
    def running(self) -> bool:
        return self._native.running

    @property
    def exit_code(self) -> int | None:
        """The exit code once it ended (``None`` while it runs, or if the session ended first)."""
        return self._native.exit_code

    def signal(self, signal: int) -> None:
        """Sends ``signal`` to the process's group."""
        self._native.signal(signal)

    def kill(self) -> None:
        """Kills the process's group (SIGKILL); :meth:`wait` then returns exit code 137."""
        self._native.kill()

    def read_output(self) -> ProcessOutput:
        """The output that arrived since the last call (never blocks)."""
        out, err, dropped, code = self._native.take_output()
        return ProcessOutput(out, err, dropped, code)

    async def wait_async(self) -> RunResult:
        """Waits for the end; the result holds the output kept and the
        network events of its lifetime. SessionClosedError if the session
        ended first."""
        return RunResult._of(await self._native.wait())

    def wait(self) -> RunResult:
        return _block(self.wait_async())

    async def _next(self, cursor: int) -> tuple[str, bytes, int] | None:
        return await self._native.next_chunk(cursor)

    async def __aiter__(self):
        cursor = 0
        while (chunk := await self._next(cursor)) is not None:
            pipe, data, cursor = chunk
            yield pipe, data

    def __iter__(self):
        cursor = 0
        while (chunk := _block(self._next(cursor))) is not None:
            pipe, data, cursor = chunk
            yield pipe, data

    def __repr__(self) -> str:
        return f"Process(id={self.id!r}, command={self.command!r}, exit_code={self.exit_code!r})"


class Pool(_Started):
    """Fresh sandboxes started ahead of time: each ``run`` gets its own,
    already running, and ends it afterwards (nothing it started survives)."""

    _closed_error = PoolClosedError

    def __init__(self, sandbox: Sandbox, size: int = 1):
        self._sandbox, self.size = sandbox, size

    async def _start(self) -> Any:
        return await self._sandbox._native.pool(self.size, self._sandbox._asker())

    async def run_async(self, cmd: Command, *, env: Mapping[str, str] | None = None, workdir: str | None = None,
                        timeout: float | str | None = None, stdin: str | bytes | None = None,
                        output_limit: int | str | None = None, on_stdout: Output | None = None,
                        on_stderr: Output | None = None, **unknown: Any) -> RunResult:
        """Runs ``cmd`` in a fresh sandbox from the pool."""
        options, data = _exec_options(env, workdir, timeout, stdin, output_limit, unknown)
        return RunResult._of(await self._handle().run(cmd, options, data, _callback(on_stdout), _callback(on_stderr)))

    def run(self, cmd: Command, **options: Any) -> RunResult:
        """Blocking :meth:`run_async` (same arguments)."""
        return _block(self.run_async(cmd, **options))

    def __repr__(self) -> str:
        return f"Pool(size={self.size}, {'started' if self._native else 'not started'})"
