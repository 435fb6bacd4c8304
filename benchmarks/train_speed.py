"""Training throughput: plain fp32 eager against the engine's default path.

The default path is channels_last, with bf16 autocast where the CPU computes bf16 natively
(``default_path`` in the output says which). On a CPU without native bf16 the forced bf16 path is
timed too, with fewer steps (it is several times slower there), to show why it is not the default.
All paths run in this one process, on the same model architecture, batch and random inputs, with
the same warm-up; each timed window is a fixed number of optimizer steps. Writes
``results/train_speed.json``.

    python benchmarks/train_speed.py --model unet --encoder resnet18 --image-size 256 --batch-size 8
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from busai.config import TrainConfig
from busai.engine import build_optimizer, cpu_has_native_bf16, default_path_name, resolve_precision
from busai.losses import build_segmentation_loss
from busai.models.registry import build
from busai.runs import best_threads, library_versions, machine_info


def random_batch(batch_size: int, image_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The same seeded images and masks for every path and benchmark: speed does not depend on content."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch_size, 3, image_size, image_size, generator=g)
    y = (torch.rand(batch_size, 1, image_size, image_size, generator=g) > 0.8).float()
    return x, y


def training_step(cfg: TrainConfig, args, x: torch.Tensor, y: torch.Tensor, fused: bool | None = None, compiled: bool = False) -> Callable[[], None]:
    """One optimizer step of a fresh model on ``cfg``'s precision path; ``fused`` overrides its optimizer
    choice; ``compiled`` runs the model through ``torch.compile`` (inductor: C++ kernels built by the
    machine's compiler, the first steps pay the build)."""
    torch.manual_seed(0)
    model = build("segmentation", args.model, encoder=args.encoder, weights="none", image_size=args.image_size).module
    precision = resolve_precision(cfg)
    if fused is not None:
        precision.fused_optimizer = fused
    if precision.channels_last:
        model.to(memory_format=torch.channels_last)
    model.train()
    optimizer = build_optimizer(cfg, model.parameters(), fused=precision.fused_optimizer)
    if compiled:
        model = torch.compile(model)
    loss_fn = build_segmentation_loss("dice")
    inputs = precision.to_input(x)

    def step() -> None:
        with precision.autocast():
            out = model(inputs)
        loss = loss_fn(out.float(), y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()

    return step


def images_per_second(
    cfg: TrainConfig, args, x: torch.Tensor, y: torch.Tensor, warmup: int, steps: int, fused: bool | None = None, compiled: bool = False
) -> tuple[float, float]:
    """Training throughput of ``cfg``'s precision path, timed over ``steps`` steps after ``warmup``, and the warm-up's seconds."""
    step = training_step(cfg, args, x, y, fused, compiled)
    start = time.perf_counter()
    for _ in range(warmup):
        step()
    warm = time.perf_counter() - start
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps * x.shape[0] / (time.perf_counter() - start), warm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="unet")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--bf16-steps", type=int, default=2, help="timed steps of forced bf16 where it is not the default (after one warm-up)")
    parser.add_argument("--compile", action="store_true", help="also time the default path under torch.compile (its warm-up includes the build)")
    parser.add_argument("--out", default="results/train_speed.json")
    args = parser.parse_args()
    best_threads()
    x, y = random_batch(args.batch_size, args.image_size)
    # default_unfused: the default path with torch's default optimizer loop, to show what each part adds.
    paths = [
        ("fp32_eager", "fp32", args.warmup, args.steps, None, False),
        ("default_unfused", "auto", args.warmup, args.steps, False, False),
        ("default", "auto", args.warmup, args.steps, None, False),
    ]
    if args.compile:
        paths.append(("default_compiled", "auto", max(args.warmup, 3), args.steps, None, True))
    if not cpu_has_native_bf16() and args.bf16_steps > 0:
        paths.append(("bf16_channels_last", "bf16", 1, args.bf16_steps, None, False))
    results, warmup_seconds = {}, {}
    for name, precision, warmup, steps, fused, compiled in paths:
        cfg = TrainConfig(task="seg", model=args.model, encoder=args.encoder, precision=precision, device="cpu", optimizer="adam", lr=1e-4)
        speed, warm = images_per_second(cfg, args, x, y, warmup, steps, fused, compiled)
        results[name], warmup_seconds[name] = round(speed, 3), round(warm, 1)
        print(f"{name}: {results[name]} images/s (warm-up {warmup_seconds[name]} s)", flush=True)
    summary = {
        # The ISA caps are part of the command: with them a newer CPU runs an older machine's kernels.
        "command": "".join(f"{k}={os.environ[k]} " for k in ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY") if os.environ.get(k))
        + "python benchmarks/train_speed.py "
        + shlex.join(sys.argv[1:]),
        "model": f"{args.encoder}:{args.model}",
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "steps": args.steps,
        "warmup": args.warmup,
        "images_per_second": results,
        "warmup_seconds": warmup_seconds,
        "speedup": round(results["default"] / results["fp32_eager"], 2),
        **({"speedup_compiled": round(results["default_compiled"] / results["fp32_eager"], 2)} if "default_compiled" in results else {}),
        "default_path": default_path_name(training=True),
        **machine_info(),
        "versions": library_versions(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary["images_per_second"]), "speedup", summary["speedup"])


if __name__ == "__main__":
    main()
