"""Errors a user sees. The CLI prints their message (no traceback) and exits with status 2."""


class VARestorerError(Exception):
    """A user-facing error: the message says what went wrong and what to do."""


class ConfigError(VARestorerError, ValueError):
    """A recipe, preset or option that is not valid."""


class CheckpointError(VARestorerError):
    """A checkpoint that cannot be found, read or does not fit the model."""


class TrainingStopped(VARestorerError):
    """A run that stopped before ``max_steps``: pre-empted by a signal (its checkpoint written), or
    its loss went non-finite. ``exit_code``: 128 + the signal's number (what schedulers read as
    "terminated"), or 2."""

    def __init__(self, message: str, exit_code: int = 2, label: str = "error"):
        super().__init__(message)
        self.exit_code = exit_code
        self.label = label
