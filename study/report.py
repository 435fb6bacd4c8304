"""``busai report`` with the paper's numbers beside ours: its Tables 1-6 and figure references.

Takes the options of ``busai report`` (run ``python -m study.report --help``):

    python -m study.report results --splits splits/busi.json --audit results/busi_audit.json --out report/
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys

from busai.cli import user_messages
from busai.commands.report import DESCRIPTION, add_arguments, report
from busai.errors import BusaiError
from study.paper import reference


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = argparse.ArgumentParser(prog="python -m study.report", description=DESCRIPTION + " The paper's numbers are printed beside ours.")
    add_arguments(parser)
    args = parser.parse_args(argv)
    os.environ.setdefault("MPLBACKEND", "Agg")  # figures to files only, as `busai` sets for its commands
    args.recorded_command = "python -m study.report " + shlex.join(argv)
    try:
        with user_messages():
            return report(args, reference=reference())
    except BusaiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(main())
