"""Exceptions raised by the tokenizer package; all are ValueErrors with messages meant for users."""


class TokenizerError(ValueError):
    """Base class for every error the tokenizer package raises."""


class TokenizerFileError(TokenizerError):
    """A tokenizer file is missing, truncated, or does not have the expected structure."""


class ChatFormatError(TokenizerError):
    """A conversation or tool list cannot be encoded; the message names the offending part."""

    def __init__(self, message: str, *, message_index: int | None = None, param: str | None = None):
        if message_index is not None:
            message = f"messages[{message_index}]: {message}"
        super().__init__(message)
        self.message_index = message_index
        self.param = param
