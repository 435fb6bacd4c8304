"""Where the test suite's time goes, from a py-spy profile of the whole run, subprocesses included.

    pip install py-spy            # a profiler outside the project's dependencies
    py-spy record -r 50 --subprocesses -f raw -o suite.folded -- python -m pytest -p no:cacheprovider -q
    python benchmarks/suite_profile.py suite.folded                 # seconds of samples per kind of work
    python benchmarks/suite_profile.py suite.folded --key nn/init.py  # which busai functions lead to a frame
    python benchmarks/suite_profile.py suite.folded --under _load_torch  # the kinds of work inside one function

Each sample goes to the first kind whose frame it contains (the order below), so imports inside an
export count as imports. Seconds are samples / rate, summed over the pytest process and its children.
"""

from __future__ import annotations

import argparse
import collections
import re
from pathlib import Path

KINDS = [  # (kind, a frame's text that marks it), first match wins
    ("imports", "_find_and_load"),
    ("int8 quantization (ONNX Runtime)", "onnxruntime/quantization"),
    ("ONNX export", "torch/onnx"),
    ("ONNX Runtime sessions", "onnxruntime_inference_collection"),
    ("backward passes", "backward"),
    ("figures (matplotlib)", "matplotlib"),
    ("weight initialisation", "nn/init.py"),
    ("batch-norm folding", "fold_batch_norm"),
    ("forward passes", "_call_impl"),
    ("image decoding and writing (Pillow)", "PIL/"),
    ("Optuna", "optuna/"),
]


def samples(path: Path, under: str | None = None):
    """(stack, count) from py-spy's raw format (a command line with newlines spans several lines);
    with ``under``, only the stacks holding a frame that contains it."""
    pending = ""
    for line in path.read_text().splitlines():
        pending += line
        match = re.match(r"(.*) (\d+)$", pending, re.S)
        if not match:
            pending += "\\n"
            continue
        pending = ""
        if under is None or under in match.group(1):
            yield match.group(1), int(match.group(2))


def by_kind(path: Path, rate: float, under: str | None = None) -> dict[str, float]:
    seconds: collections.Counter = collections.Counter()
    for stack, count in samples(path, under):
        kind = next((name for name, mark in KINDS if mark in stack), "other")
        seconds[kind] += count / rate
    return dict(seconds.most_common())


def callers(path: Path, key: str, rate: float, under: str | None = None, depth: int = 2) -> dict[str, float]:
    """The busai frames (innermost ``depth``) above the first frame containing ``key``."""
    seconds: collections.Counter = collections.Counter()
    for stack, count in samples(path, under):
        frames = stack.split(";")
        hit = next((i for i, frame in enumerate(frames) if key in frame), None)
        if hit is None:
            continue
        ours = [frame for frame in frames[:hit] if "busai/" in frame]
        seconds[" <- ".join(reversed(ours[-depth:])) or "(no busai frame)"] += count / rate
    return dict(seconds.most_common(15))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("profile", type=Path, help="py-spy's raw output (-f raw)")
    parser.add_argument("--rate", type=float, default=50, help="samples per second given to py-spy -r (default 50)")
    parser.add_argument("--key", help="show the busai callers of frames containing this text instead")
    parser.add_argument("--under", help="count only the samples with a frame containing this text (e.g. runs.py)")
    args = parser.parse_args()
    table = callers(args.profile, args.key, args.rate, args.under) if args.key else by_kind(args.profile, args.rate, args.under)
    print(f"{sum(table.values()):7.1f} s  all" if not args.key else f"callers of {args.key!r}")
    for name, seconds in table.items():
        print(f"{seconds:7.1f} s  {name}")


if __name__ == "__main__":
    main()
