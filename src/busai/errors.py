"""Typed errors whose message is one line: what is wrong, which file, and what to do.

The CLI prints ``error: <message>`` and exits non-zero for any :class:`BusaiError`,
so the library never needs to know it is being run from a terminal.
"""

import contextlib
from contextvars import ContextVar


class BusaiError(Exception):
    """Base class: a user-fixable problem with a one-line explanation."""

    exit_code = 2


class DataError(BusaiError):
    """A dataset folder, image, mask or split file is missing or malformed."""


class ConfigError(BusaiError):
    """An option or configuration value is invalid (unknown model name, bad range, ...)."""


class CheckpointError(BusaiError):
    """A run folder or checkpoint is missing, incomplete or does not match the model."""


def read_json(path, *, error: "type[BusaiError] | None" = None, missing: str, fix: str):
    """Parse a JSON file, turning the usual failures into one-line ``error`` messages.

    ``missing`` ends the message for an absent file; ``fix`` says what to do about a broken one.
    """
    import json
    from pathlib import Path

    error = error or ConfigError
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise error(f"{path}: {missing}") from None
    except (IsADirectoryError, PermissionError, UnicodeDecodeError) as exc:
        raise error(f"{path}: cannot read the file ({exc.__class__.__name__}); {fix}") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as exc:
        raise error(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno}); {fix}") from None


# Set by the CLI while a command runs, so a message names the option the user typed (--out)
# there and the parameter (out=) from Python: one library, each caller's spelling of the fix.
_CLI: ContextVar[bool] = ContextVar("busai_cli", default=False)


def option(name: str, value: str | None = None, flag: str | None = None) -> str:
    """How an error message names option ``name`` set to ``value`` (None: a switch): ``--name VALUE``
    (or ``flag``) under the CLI, ``name=VALUE`` from Python."""
    if _CLI.get():
        flag = flag or "--" + name.replace("_", "-")
        return flag if value is None else f"{flag} {value}"
    return f"{name}={'True' if value is None else value}"


@contextlib.contextmanager
def cli_context():
    """Run the body as the CLI (see :func:`option`); ``busai.cli.main`` wraps each command in it."""
    token = _CLI.set(True)
    try:
        yield
    finally:
        _CLI.reset(token)
