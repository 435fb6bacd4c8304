"""The ``busai`` console command: parses arguments and calls the library.

Each sub-command lives in ``busai.commands.<name>`` with ``register(subparsers)``; the handler it
sets calls one public library function. Any :class:`BusaiError` becomes one ``error:`` line and
exit code 2, never a traceback; so does a command that needs PyTorch run where the ``torch`` extra is
not installed (:func:`busai.extras.torch_missing`).
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import sys

from busai.errors import BusaiError, cli_context

# Order is the order shown in `busai --help`.
COMMAND_MODULES = ("data", "models", "train", "evaluate", "calibrate", "report", "tune", "adapt", "predict", "export", "serve", "release")


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


# 128 + SIGPIPE: what a shell reports for a Unix tool whose reader went away (`busai ... | head`).
EXIT_BROKEN_PIPE = 141


class _UserMessages(logging.Handler):
    """The library's log records as the user sees them on stderr: a note (INFO) as ``note: ...``, a
    warning as one bold red unwrapped ``WARNING: ...`` line (greppable; stdout stays clean for --json)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = record.getMessage()
            if record.levelno >= logging.WARNING:
                from rich.console import Console

                # sys.stderr looked up now, not at construction: tests and callers may have swapped it.
                Console(file=sys.stderr, soft_wrap=True).print(f"WARNING: {message}", style="bold red", markup=False, highlight=False)
            else:
                print(f"note: {message}", file=sys.stderr)
        except Exception:
            self.handleError(record)


@contextlib.contextmanager
def user_messages():
    """Show the ``busai`` logger's notes and warnings on stderr while a command runs, then stop."""
    logger = logging.getLogger("busai")
    handler, level = _UserMessages(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def main(argv: list[str] | None = None) -> int:
    """Run one command; output to a closed pipe ends it quietly (no traceback) with ``EXIT_BROKEN_PIPE``."""
    try:
        code = _main(argv)
        sys.stdout.flush()  # here, not at interpreter exit, so a closed pipe is caught below
        return code
    except BrokenPipeError:
        _discard_stdout()
        return EXIT_BROKEN_PIPE


def _discard_stdout() -> None:
    """Point stdout at /dev/null: what is still buffered would fail again when Python exits (the
    recipe of Python's signal module documentation, "Note on SIGPIPE")."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):
        pass  # not a file descriptor (output captured in-process): nothing will be flushed there


def _main(argv: list[str] | None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    _process_settings()
    try:
        with user_messages(), cli_context():
            result = args.handler(args)
    except BusaiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except ImportError as exc:  # a command of the torch extra in an install without it (`pip install 'busai[onnx]'`)
        from busai.extras import torch_missing

        error = torch_missing(exc, f"`busai {args.command}`")
        if error is None:
            raise
        print(f"error: {error}", file=sys.stderr)
        return error.exit_code
    except KeyboardInterrupt:
        print(f"interrupted: everything written so far is kept; {continue_hint(args)}", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
