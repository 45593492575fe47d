"""Errors a person can act on: the CLI prints the message (no traceback) and exits with 2."""


class GptzooError(Exception):
    """Base of every error whose message says what is wrong and what to do."""


class ConfigError(GptzooError):
    """A config file, field or override that cannot work."""


class CheckpointError(GptzooError):
    """A run folder or checkpoint that is missing, corrupt or does not match its config."""
