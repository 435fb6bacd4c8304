"""CLI sub-commands; each module exposes ``register(subparsers)`` and stays a thin layer over the library."""

import shlex
import sys


def command_line() -> str:
    """The command as typed, recorded in run folders and results so every number can be re-run."""
    return "busai " + shlex.join(sys.argv[1:])
