"""CLI sub-commands; each module exposes ``register(subparsers)`` and stays a thin layer over the library."""

import shlex


def command_line(args) -> str:
    """The command as typed, recorded in run folders and results so every number can be re-run."""
    return "busai " + shlex.join(args.argv)
