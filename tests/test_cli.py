"""The command line's own text: every help page renders (a stray `%` in a help string crashes
argparse with a traceback, which no other test would notice)."""

from __future__ import annotations

import argparse

import pytest

from busai.cli import COMMAND_MODULES, build_parser, main


def _all_parsers(parser: argparse.ArgumentParser, prefix=()):
    yield prefix, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield from _all_parsers(child, prefix + (name,))


PARSERS = list(_all_parsers(build_parser()))


def test_every_command_module_is_registered():
    assert {path[0] for path, _ in PARSERS if len(path) == 1} == set(COMMAND_MODULES)


@pytest.mark.parametrize("path", [path for path, _ in PARSERS], ids=lambda p: " ".join(p) or "busai")
def test_help_renders(path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main([*path, "--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: busai")
    assert "%" not in out.replace("95%", "")  # an unformatted placeholder would leak through


def test_every_option_of_every_command_has_help():
    import argparse

    from busai.cli import build_parser

    missing = []

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction) and not action.help:
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")

    walk(build_parser(), "busai")
    assert missing == []


def test_help_never_imports_torch():
    """`busai --help` and every sub-command's help are answered without importing torch (or the
    models and losses that pull it in): building the parser used to import it, seconds before any output."""
    import subprocess
    import sys

    paths = [list(path) for path, _ in PARSERS]
    script = f"""
import contextlib, io, sys
from busai.cli import main
for path in {paths!r}:
    with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
        main([*path, "--help"])
print(sorted(m for m in ("torch", "segmentation_models_pytorch", "timm", "torchvision", "scipy", "imagehash") if m in sys.modules))
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]", result.stdout
