"""benchmarks/gpu_speed.py times the engine's own training step, not a copy of it (checked on the CPU:
the benchmark's device is a parameter)."""

from __future__ import annotations

import importlib.util
from argparse import Namespace
from pathlib import Path

import busai.engine


def test_gpu_speed_trains_through_the_engine_step(monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_speed", Path(__file__).parents[1] / "benchmarks" / "gpu_speed.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    calls = []
    step = busai.engine.optimizer_step
    monkeypatch.setattr(busai.engine, "optimizer_step", lambda *a: calls.append(a) or step(*a))
    args = Namespace(image_size=32, batch_size=2, warmup=1, steps=2)
    result = bench.measure("cls-lite0", "fp32", args, device="cpu")
    assert len(calls) == 3  # one warm-up and two timed training steps, each the engine's
    assert result["autocast"] == "none" and result["train_images_per_s"] > 0 and result["inference_images_per_s"] > 0
