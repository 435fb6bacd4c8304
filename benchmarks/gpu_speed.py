"""Training and inference images per second on a CUDA GPU: fp32 vs bf16 autocast, channels_last, torch.compile.

For each model (default: the released segmenter, EfficientNet-Lite0 U-Net at 256 px, and the
released classifier, EfficientNet-Lite0 at 256 px, plus the paper's ResNet-18 U-Net) and each
variant, on one seeded random batch:

- ``fp32``: contiguous memory, no autocast (torch's defaults);
- ``bf16``: bf16 autocast (fp16 with a GradScaler where the GPU lacks bf16), contiguous;
- ``bf16_channels_last``: the engine's default GPU path;
- ``bf16_channels_last_compile``: the same under ``torch.compile`` (its compile time is reported
  apart and left out of the rate).

Training: the engine's own step (``busai.engine.forward_loss`` and ``optimizer_step``, which
``busai train`` runs): forward under autocast, the task's default loss (Dice, or focal for the
classifier), backward and a fused Adam step; inference: forward under ``inference_mode``. Each rate is images over the wall time of ``--steps`` steps after
``--warmup`` steps, with ``torch.cuda.synchronize`` around the window. Writes
``results/gpu_speed.json`` with the device name; without CUDA it prints one line and writes nothing.

    python benchmarks/gpu_speed.py
    python benchmarks/gpu_speed.py --batch-size 32 --steps 50 --variants fp32 bf16_channels_last
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import torch

MODELS = {
    "seg-lite0-unet": ("segmentation", "unet", "efficientnet-lite0"),
    "seg-resnet18-unet": ("segmentation", "unet", "resnet18"),
    "cls-lite0": ("classification", "efficientnet_lite0", None),
}
VARIANTS = ("fp32", "bf16", "bf16_channels_last", "bf16_channels_last_compile")


def half_dtype(device: torch.device) -> torch.dtype:
    if device.type != "cuda":
        return torch.bfloat16
    return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16


def measure(model_key: str, variant: str, args, device: str = "cuda") -> dict:
    """Rates of one model and variant; ``device`` is "cuda" but for the CPU smoke test."""
    from busai.config import TrainConfig
    from busai.engine import Precision, build_optimizer, forward_loss, optimizer_step
    from busai.models.registry import build
    from busai.tasks import adapter_for

    task, name, encoder = MODELS[model_key]
    device = torch.device(device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    torch.manual_seed(0)
    cfg = TrainConfig(task=task)  # the engine's defaults: Adam, Dice (segmentation) or focal loss (classification)
    model = build(task, name, encoder=encoder, weights="none", image_size=args.image_size).module.to(device)
    precision = Precision(device, None if variant == "fp32" else half_dtype(device), "channels_last" in variant, fused_optimizer=True)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    g = torch.Generator().manual_seed(0)
    x = precision.to_input(torch.randn(args.batch_size, 3, args.image_size, args.image_size, generator=g))
    if task == "segmentation":
        batch = {"mask": (torch.rand(args.batch_size, 1, args.image_size, args.image_size, generator=g) > 0.8).float().to(device)}
    else:
        batch = {"label": torch.randint(0, 3, (args.batch_size,), generator=g).to(device)}
    adapter = adapter_for(cfg)

    runner = model
    compile_seconds = None
    if variant.endswith("compile"):
        runner = torch.compile(model)
    optimizer = build_optimizer(cfg, model.parameters(), fused=True)
    scaler = torch.amp.GradScaler("cuda") if precision.autocast_dtype == torch.float16 else None  # as busai.engine.fit makes it

    def train_step():  # the engine's own training step (busai.engine._run_epoch calls the same two functions)
        _, loss = forward_loss(runner, x, batch, adapter, precision)
        optimizer_step(loss, optimizer, scaler)

    def infer_step():
        with torch.inference_mode(), precision.autocast():
            runner(x)

    def rate(step, training: bool) -> float:
        model.train(training)
        for _ in range(args.warmup):
            step()
        sync()
        start = time.perf_counter()
        for _ in range(args.steps):
            step()
        sync()
        return round(args.batch_size * args.steps / (time.perf_counter() - start), 1)

    if variant.endswith("compile"):
        start = time.perf_counter()
        model.train(True)
        train_step()
        model.train(False)
        infer_step()
        sync()
        compile_seconds = round(time.perf_counter() - start, 1)
    result = {"train_images_per_s": rate(train_step, True), "inference_images_per_s": rate(infer_step, False)}
    if compile_seconds is not None:
        result["compile_seconds"] = compile_seconds
    result["autocast"] = str(precision.autocast_dtype).removeprefix("torch.") if precision.autocast_dtype else "none"
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", nargs="+", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--variants", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--image-size", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--out", default="results/gpu_speed.json")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_speed: no CUDA GPU is visible; nothing measured, nothing written (run it on a machine with a GPU)")
        return 0
    torch.backends.cudnn.benchmark = True
    results: dict = {}
    for model_key in args.models:
        results[model_key] = {}
        for variant in args.variants:
            try:
                results[model_key][variant] = measure(model_key, variant, args)
            except Exception as exc:  # noqa: BLE001  one failing variant (e.g. compile without a compiler) must not lose the others
                results[model_key][variant] = {"error": f"{type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}"}
            print(f"{model_key} {variant}: {results[model_key][variant]}", flush=True)
            torch.cuda.empty_cache()
    from busai.runs import library_versions

    summary = {
        "command": "python benchmarks/gpu_speed.py " + shlex.join(sys.argv[1:]),
        "device": torch.cuda.get_device_name(0),
        "capability": ".".join(map(str, torch.cuda.get_device_capability(0))),
        "bf16_supported": torch.cuda.is_bf16_supported(),
        "cuda": torch.version.cuda,
        "image_size": args.image_size,
        "batch_size": args.batch_size,
        "warmup": args.warmup,
        "steps": args.steps,
        "results": results,
        "versions": library_versions(),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text(json.dumps(summary, indent=2) + "\n")
    tmp.replace(out)
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
