"""agent-sandbox: run AI agents' commands in a box they cannot leave.

>>> from agent_sandbox import Sandbox
>>> result = Sandbox(workspace=".", allow=["github.com"]).run("git ls-remote https://github.com/x/y")  # doctest: +SKIP
"""

from ._native import (
    CancelledError,
    DockerUnavailableError,
    EngineError,
    EngineTooOldError,
    Event,
    FileError,
    ImageNotFoundError,
    InvalidArgumentError,
    PolicyError,
    Pool,
    PoolClosedError,
    RunResult,
    Sandbox,
    SandboxError,
    Session,
    SessionClosedError,
    WorkspaceError,
    __version__,
)

__all__ = [
    "Sandbox",
    "Session",
    "Pool",
    "RunResult",
    "Event",
    "SandboxError",
    "PolicyError",
    "WorkspaceError",
    "DockerUnavailableError",
    "EngineTooOldError",
    "ImageNotFoundError",
    "InvalidArgumentError",
    "EngineError",
    "CancelledError",
    "FileError",
    "SessionClosedError",
    "PoolClosedError",
    "__version__",
]
