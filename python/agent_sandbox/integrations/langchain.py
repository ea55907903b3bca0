"""agent-sandbox as a LangChain deepagents backend (``deepagents``, tested
with 0.7): :class:`AgentSandboxBackend` implements ``BaseSandbox``. Commands
run in an agent-sandbox session; file uploads and downloads go through its
host-side file API; deepagents' own ``ls``/``read``/``edit``/``glob``/``grep``
run on top of ``execute`` as the framework defines them (they need
``python3`` in the image).

>>> from deepagents import create_deep_agent                              # doctest: +SKIP
>>> from agent_sandbox import Sandbox
>>> from agent_sandbox.integrations.langchain import AgentSandboxBackend
>>> with Sandbox(workspace=".", allow=["pypi.org"]).session() as session:  # doctest: +SKIP
...     agent = create_deep_agent(model=..., backend=AgentSandboxBackend(session))
...     agent.invoke({"messages": [{"role": "user", "content": "run the tests"}]})

The session stays the caller's: close it (or use ``with``) when done.
"""

from __future__ import annotations

from deepagents.backends.protocol import ExecuteResponse, FileDownloadResponse, FileUploadResponse
from deepagents.backends.sandbox import BaseSandbox

from .. import FileError, Session


def _file_error(e: FileError) -> str:
    text = str(e).lower()
    if "no such file" in text or "not found" in text or "does not exist" in text:
        return "file_not_found"
    if "directory" in text:
        return "is_directory"
    if "outside" in text or "symlink" in text or "refused" in text:
        return "invalid_path"
    return "permission_denied"


class AgentSandboxBackend(BaseSandbox):
    """A deepagents sandbox backend on an agent-sandbox :class:`~agent_sandbox.Session`."""

    def __init__(self, session: Session, *, default_timeout: float | None = 600) -> None:
        self._session = session
        self._timeout = default_timeout

    @property
    def id(self) -> str:
        return self._session.id

    @staticmethod
    def _response(r) -> ExecuteResponse:
        out = r.stdout + ("\n" if r.stdout and r.stderr and not r.stdout.endswith("\n") else "") + r.stderr
        if r.timed_out:
            out += "\n[agent-sandbox: the command timed out and was killed]"
        for e in r.refusals:
            out += f"\n[agent-sandbox: network request to {e.host}:{e.port} refused: {e.reason}]"
        return ExecuteResponse(output=out, exit_code=r.exit_code,
                               truncated=r.stdout_truncated or r.stderr_truncated)

    def execute(self, command: str, *, timeout: int | None = None) -> ExecuteResponse:
        return self._response(self._session.exec(command, timeout=timeout or self._timeout))

    async def aexecute(self, command: str, *, timeout: int | None = None) -> ExecuteResponse:
        return self._response(await self._session.exec_async(command, timeout=timeout or self._timeout))

    def upload_files(self, files: list[tuple[str, bytes]]) -> list[FileUploadResponse]:
        done = []
        for path, data in files:
            if not path.startswith("/"):
                done.append(FileUploadResponse(path=path, error="invalid_path"))
                continue
            try:
                self._session.write_file(path, data)
                done.append(FileUploadResponse(path=path))
            except FileError as e:
                done.append(FileUploadResponse(path=path, error=_file_error(e)))
        return done

    def download_files(self, paths: list[str]) -> list[FileDownloadResponse]:
        done = []
        for path in paths:
            if not path.startswith("/"):
                done.append(FileDownloadResponse(path=path, error="invalid_path"))
                continue
            try:
                done.append(FileDownloadResponse(path=path, content=self._session.read_file(path)))
            except FileError as e:
                done.append(FileDownloadResponse(path=path, error=_file_error(e)))
        return done
