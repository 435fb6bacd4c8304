"""One ``results/<task>/<run>.json`` per evaluated run folder: the committed inputs of docs/results.md and the study's report.

From the repository root: ``python -m study.collect runs/seg-unet runs/seg-deeplab --out results/segmentation``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from busai.errors import BusaiError
from busai.report import collect_run
from busai.runs import write_json


def write_results(run_dirs: list[str | Path], out_dir: str | Path) -> list[Path]:
    """``collect_run`` of each run folder, written as ``out_dir/<run name>.json``."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for run_dir in run_dirs:
        summary = collect_run(run_dir)
        path = out_dir / f"{summary['name']}.json"
        write_json(path, summary)
        written.append(path)
    return written


def load_results(folder: str | Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json"))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m study.collect", description=__doc__.splitlines()[0])
    parser.add_argument("run_dirs", nargs="+", metavar="RUN", help="evaluated run folders")
    parser.add_argument("--out", required=True, metavar="DIR", help="results folder, e.g. results/segmentation")
    args = parser.parse_args(argv)
    try:
        for path in write_results(args.run_dirs, args.out):
            print(path)
    except BusaiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main())
