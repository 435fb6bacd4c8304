"""Where a training step's time goes, plain fp32 eager against the default path, by kind of operator.

Answers why one model gains more from bf16 autocast + channels_last than another: matrix-heavy
convolutions run on the CPU's bf16 units (AMX / AVX512-BF16), while depthwise convolutions, batch
norm, activations and the casts autocast adds are bound by memory traffic and gain little. Profiles
``--steps`` steps of each model (after ``--warmup``) with ``torch.profiler`` and sums each
operator's self CPU time into the categories below. Writes ``results/train_profile.json``.

    python benchmarks/train_profile.py --models resnet18:unet efficientnet-lite0:unet
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile
from train_speed import random_batch, training_step  # benchmarks/ is on sys.path when this script runs

from busai.config import TrainConfig
from busai.engine import default_path_name
from busai.runs import best_threads, library_versions, machine_info

CATEGORIES = ("convolution", "depthwise convolution", "batch norm", "activation", "cast / copy", "optimizer", "other")
ACTIVATIONS = ("relu", "hardtanh", "silu", "sigmoid", "threshold", "clamp", "gelu")


def category(event) -> str:
    """The kind of a profiled aten operator; a convolution is depthwise when its weight is (C, 1, k, k)."""
    parent = event.cpu_parent
    while parent is not None:  # every operator an optimizer's step() runs, whatever its name
        if parent.name.startswith("Optimizer.step"):
            return "optimizer"
        parent = parent.cpu_parent
    name, shapes = event.name.lower(), event.input_shapes
    if "conv" in name:
        weights = [s for s in shapes if isinstance(s, list) and len(s) == 4 and s[1] == 1 and s[2] == s[3] and s[2] <= 7]
        return "depthwise convolution" if weights else "convolution"
    if "batch_norm" in name:
        return "batch norm"
    if any(a in name for a in ACTIVATIONS):
        return "activation"
    if any(c in name for c in ("copy", "aten::to", "clone", "contiguous")):
        return "cast / copy"
    return "other"


def profile_path(cfg: TrainConfig, args, x: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Milliseconds of self CPU time per training step in each category."""
    step = training_step(cfg, args, x, y)
    for _ in range(args.warmup):
        step()
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        for _ in range(args.steps):
            step()
    totals = dict.fromkeys(CATEGORIES, 0.0)
    for event in prof.events():
        if event.name.startswith("aten::"):  # self time: a nested operator is not counted twice
            totals[category(event)] += event.self_cpu_time_total / 1000 / args.steps
    return {k: round(v, 1) for k, v in totals.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--models", nargs="+", default=["resnet18:unet", "efficientnet-lite0:unet"], help="ENCODER:DECODER")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--out", default="results/train_profile.json")
    args = parser.parse_args()
    best_threads()
    x, y = random_batch(args.batch_size, args.image_size)
    models = {}
    for spec in args.models:
        args.encoder, args.model = spec.split(":")
        paths = {}
        for path, precision in (("fp32_eager", "fp32"), ("default", "auto")):
            cfg = TrainConfig(task="seg", model=args.model, encoder=args.encoder, precision=precision, device="cpu", optimizer="adam", lr=1e-4)
            paths[path] = profile_path(cfg, args, x, y)
            print(spec, path, paths[path], flush=True)
        models[spec] = paths
    summary = {
        "command": "python benchmarks/train_profile.py " + shlex.join(sys.argv[1:]),
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "unit": "ms of self CPU time per training step (profiled; the profiler adds overhead, so compare shares, not absolute speed)",
        "default_path": default_path_name(training=True),
        "models": models,
        **machine_info(),
        "versions": library_versions(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")


if __name__ == "__main__":
    main()
