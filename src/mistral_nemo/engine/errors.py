"""Why the engine refuses a request. Each error carries what an API answer needs: `param` (the
field at fault, or None) and `code` (a stable machine-readable reason, or None), so a server maps
errors by type and these attributes, never by reading the message."""

from __future__ import annotations


class RequestError(ValueError):
    """The request itself is invalid (a client error)."""

    default_code: str | None = None

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message)
        self.param = param
        self.code = code if code is not None else self.default_code


class ContextLengthError(RequestError):
    """prompt + max_tokens does not fit the model's context."""

    default_code = "context_length_exceeded"


class NeverFitsError(RequestError):
    """The request needs more KV blocks than the whole pool has."""


class QueueFullError(RuntimeError):
    """Too many requests are waiting: the engine is overloaded (retry later)."""

    def __init__(self, message: str, *, code: str = "overloaded") -> None:
        super().__init__(message)
        self.param: str | None = None
        self.code = code
