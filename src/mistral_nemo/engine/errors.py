"""Why the engine refuses a request; each kind maps to its own HTTP status in the server."""

from __future__ import annotations


class RequestError(ValueError):
    """The request itself is invalid (400)."""


class ContextLengthError(RequestError):
    """prompt + max_tokens does not fit the model's context (400)."""


class NeverFitsError(RequestError):
    """The request needs more KV blocks than the whole pool has (400)."""


class QueueFullError(RuntimeError):
    """Too many requests are waiting: the server is overloaded (503)."""
