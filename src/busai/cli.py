"""The ``busai`` console command: parses arguments and calls the library.

Each sub-command lives in ``busai.commands.<name>`` with ``register(subparsers)``; the handler it
sets calls one public library function. Any :class:`BusaiError` becomes one ``error:`` line and
exit code 2, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from busai.errors import BusaiError

# Order is the order shown in `busai --help`.
COMMAND_MODULES = ("data", "models", "train", "evaluate", "calibrate", "report", "collect", "tune", "predict", "export", "serve", "release")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="busai",
        description="Breast-ultrasound lesion segmentation and normal/benign/malignant classification.",
    )
    parser.add_argument("--version", action="version", version=f"busai {_version()}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(f"busai.commands.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"busai.commands.{name}":
                continue  # command not built yet
            raise
        module.register(sub)
    return parser


def _version() -> str:
    from busai import __version__

    return __version__


def continue_hint(args: argparse.Namespace) -> str:
    """How to carry on after Ctrl-C, naming only options the interrupted command has (docs/guarantees.md)."""
    if args.command == "train" and getattr(args, "all_folds", None) is None:
        run_dir = getattr(args, "resume", None) or getattr(args, "out", None)
        return f"continue with `busai train --resume {run_dir}`"
    if args.command == "predict":
        return "re-run the same command with --resume to predict only the images not done yet"
    if args.command == "tune" and getattr(args, "tune_command", None) in ("seg", "cls"):
        return "re-run the same command to continue the study"
    return "re-run the same command"


def _process_settings() -> None:
    """What the command, owning its process, sets and a library call must not: every core for
    torch (busai.runs.best_threads), the inference path measured per machine (busai.machine), and matplotlib drawing to files only; the user's own
    BUSAI_ALL_CORES / BUSAI_PROBE / MPLBACKEND win."""
    import os

    os.environ.setdefault("BUSAI_ALL_CORES", "1")
    os.environ.setdefault("BUSAI_PROBE", "1")  # busai.machine: measure the inference path once per machine
    os.environ.setdefault("MPLBACKEND", "Agg")


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    _process_settings()
    try:
        result = args.handler(args)
    except BusaiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(f"interrupted: everything written so far is kept; {continue_hint(args)}", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
