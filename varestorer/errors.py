"""Errors a user sees. The CLI prints their message (no traceback) and exits with status 2."""


class VARestorerError(Exception):
    """A user-facing error: the message says what went wrong and what to do."""


class ConfigError(VARestorerError, ValueError):
    """A recipe, preset or option that is not valid."""


class CheckpointError(VARestorerError):
    """A checkpoint that cannot be found, read or does not fit the model."""
