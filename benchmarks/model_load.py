"""Building a network to load a checkpoint into: with random initialisation (a normal build) against a
skeleton on the meta device (what `busai.runs` loads into), per architecture.

    python benchmarks/model_load.py   # on a quiet machine; writes results/model_load.json

Best of ``--repeats`` builds each, after one warm-up build; the file records the CPU beside the times.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
ARCHITECTURES = [  # (task, name, encoder): the release's and the paper's
    ("seg", "unet", "efficientnet-lite0"),
    ("seg", "unet", "resnet18"),
    ("seg", "unetplusplus", "vgg16"),
    ("seg", "deeplabv3", "mobilenet_v2"),
    ("seg", "unet", "efficientnet-b0"),
    ("cls", "efficientnet_lite0", None),
    ("cls", "resnet18", None),
    ("cls", "densenet121", None),
]


def best_build_seconds(task: str, name: str, encoder: str | None, repeats: int, meta: bool) -> float:
    import torch

    from busai.models import build

    best = float("inf")
    for _ in range(repeats + 1):  # the first is a warm-up
        start = time.perf_counter()
        with torch.device("meta") if meta else torch.device("cpu"):
            build(task, name, encoder=encoder, weights="none")
        best = min(best, time.perf_counter() - start)
    return round(best, 4)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "results" / "model_load.json"))
    args = parser.parse_args(argv)
    from busai.outputs import atomic_write_text
    from busai.runs import machine_info

    rows = []
    for task, name, encoder in ARCHITECTURES:
        normal = best_build_seconds(task, name, encoder, args.repeats, meta=False)
        skeleton = best_build_seconds(task, name, encoder, args.repeats, meta=True)
        rows.append({"task": task, "name": name, "encoder": encoder, "random_init_s": normal, "meta_skeleton_s": skeleton})
        print(f"{task:<4} {name + (' ' + encoder if encoder else ''):<32} random init {normal:.3f} s   meta skeleton {skeleton:.3f} s")
    result = {"command": "python benchmarks/model_load.py", "repeats": args.repeats, "rows": rows, "machine": machine_info()}
    atomic_write_text(Path(args.out), json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
