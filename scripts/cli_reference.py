"""Write docs/cli.md, the CLI reference, from busai's own argument parsers.

    python scripts/cli_reference.py            # rewrite docs/cli.md
    python scripts/cli_reference.py --check    # exit 1 if docs/cli.md is out of date

tests/test_docs.py checks that every command and option of the parsers is documented in docs/cli.md.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from busai.cli import build_parser

DOC = Path(__file__).resolve().parents[1] / "docs" / "cli.md"
INTRO = """# CLI reference

Every `busai` command and option, generated from the parsers by `python scripts/cli_reference.py`
(`busai COMMAND --help` prints the same). Any error is one `error:` line naming the file or option
and the fix, with exit code 2. Walk-through: [getting started](getting-started.md). The study's
own scripts are not `busai` commands; run them from the repository root: `python -m
study.collect RUN... --out DIR` (formerly `busai collect`) and `python -m study.report` (`busai
report` with the paper's numbers beside ours); see [architecture](architecture.md#results-docs-and-the-report).
"""


def commands(parser: argparse.ArgumentParser, prefix: str = "busai"):
    """(command line, parser) for every leaf and intermediate command, in `--help` order."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield f"{prefix} {name}", sub, helps.get(name)
                yield from commands(sub, f"{prefix} {name}")


def options(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if not isinstance(a, argparse._HelpAction | argparse._SubParsersAction | argparse._VersionAction)]


def _cell(text) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ").replace("%%", "%")


def render() -> str:
    lines = [INTRO]
    for command, parser, summary in commands(build_parser()):
        lines += [f"## `{command}`", ""]
        text = parser.description or summary
        if text:
            lines += [_cell(text), ""]
        rows = options(parser)
        if not rows:
            continue
        lines += ["| Argument | Default | Choices | Help |", "|---|---|---|---|"]
        for a in rows:
            name = ", ".join(f"`{o}`" for o in a.option_strings) or f"`{a.metavar or a.dest}`"
            if a.option_strings and a.nargs != 0 and a.metavar:
                meta = " ".join(a.metavar) if isinstance(a.metavar, tuple) else a.metavar
                name += f" {meta}"
            empty = a.default is None or a.default is False or a.default == argparse.SUPPRESS or a.default == []  # not `in`: 0 == False
            default = "–" if empty or a.nargs == 0 else f"`{a.default}`"
            choices = ", ".join(str(c) for c in a.choices) if a.choices else "–"
            lines.append(f"| {name} | {_cell(default)} | {_cell(choices)} | {_cell(a.help or '')} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/cli.md differs from the parsers")
    text = render()
    if parser.parse_args().check:
        return 0 if DOC.read_text() == text else 1
    tmp = DOC.with_name(DOC.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, DOC)
    print(DOC)
    return 0


if __name__ == "__main__":
    sys.exit(main())
