"""The errors of agent-sandbox: one class per stable code of the core."""


class SandboxError(Exception):
    """Base class of every agent-sandbox error; ``code`` is the core's stable code."""

    code = "sandbox"

    def __init__(self, message: str, code: str | None = None):
        super().__init__(message)
        self.code = code or type(self).code


class PolicyError(SandboxError):
    """A network rule is malformed (code ``policy``)."""

    code = "policy"


class WorkspaceError(SandboxError):
    """The workspace or a mount cannot be used (code ``workspace``)."""

    code = "workspace"


class DockerUnavailableError(SandboxError):
    """No Docker engine answers (code ``docker_unavailable``)."""

    code = "docker_unavailable"


class EngineTooOldError(SandboxError):
    """The Docker engine is older than 20.10 (code ``engine_too_old``)."""

    code = "engine_too_old"


class ImageNotFoundError(SandboxError):
    """The image is absent and cannot be pulled (code ``image_not_found``)."""

    code = "image_not_found"


class InvalidArgumentError(SandboxError, ValueError, TypeError):
    """An option or argument is unknown or invalid (code ``invalid_argument``)."""

    code = "invalid_argument"


class EngineError(SandboxError):
    """Docker failed during an operation (code ``engine``)."""

    code = "engine"


class CancelledError(SandboxError):
    """The run was cancelled; its container was removed (code ``cancelled``)."""

    code = "cancelled"


class FileError(SandboxError):
    """A session file operation was refused or failed (code ``file``)."""

    code = "file"


class SessionClosedError(SandboxError):
    """The session is closed (code ``session_closed``)."""

    code = "session_closed"


class PoolClosedError(SandboxError):
    """The pool is closed (code ``pool_closed``)."""

    code = "pool_closed"


_BY_CODE = {c.code: c for c in SandboxError.__subclasses__()}


def _from_code(code: str, message: str) -> SandboxError:
    """The error the native module raises for a core error."""
    return _BY_CODE.get(code, SandboxError)(message, code)
