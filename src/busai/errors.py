"""Typed errors whose message is one line: what is wrong, which file, and what to do.

The CLI prints ``error: <message>`` and exits non-zero for any :class:`BusaiError`,
so the library never needs to know it is being run from a terminal.
"""


class BusaiError(Exception):
    """Base class: a user-fixable problem with a one-line explanation."""

    exit_code = 2


class DataError(BusaiError):
    """A dataset folder, image, mask or split file is missing or malformed."""


class ConfigError(BusaiError):
    """An option or configuration value is invalid (unknown model name, bad range, ...)."""


class CheckpointError(BusaiError):
    """A run folder or checkpoint is missing, incomplete or does not match the model."""
