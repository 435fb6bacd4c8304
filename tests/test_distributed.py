"""Data-parallel training: torchrun with 2 CPU processes (gloo) completes, resumes with 1, and scores like 1 process."""

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from busai.distributed import ShardedSampler, shard

SRC = str(Path(__file__).resolve().parents[1] / "src")


def test_sharded_sampler_splits_one_global_order():
    order = [4, 0, 3, 1, 2]
    ranks = [list(ShardedSampler(order, num_replicas=2, rank_=r)) for r in (0, 1)]
    assert ranks == [[4, 3, 2], [0, 1, 4]]  # rank r takes items r, r + 2, ...; padded by wrapping round
    assert len(ShardedSampler(order, num_replicas=2, rank_=1)) == 3
    # Global batch k of 2 x 2 is batch k of the one-process order.
    assert sorted(ranks[0][:2] + ranks[1][:2]) == sorted(order[:4])
    assert shard(list(range(5)), 2, 1) == [1, 3]


def history(run_dir):
    with (Path(run_dir) / "history.csv").open() as fh:
        return list(csv.DictReader(fh))


def test_cli_gpus_without_cuda(cli, tmp_path):
    if torch.cuda.is_available():
        pytest.skip("checks the error a machine without a GPU gives")
    cli.fails(
        "train",
        "seg",
        "--gpus",
        "2",
        "--out",
        tmp_path / "run",
        expect="--gpus 2: no CUDA GPU is visible; for CPU processes run `torchrun --nproc_per_node 2 -m busai train ...`",
    )


@pytest.mark.slow  # trains or starts processes
def test_two_gloo_processes_train_resume_and_match_one(synthetic_dir, tiny_runs, tmp_path):
    from busai.data.discover import discover_records
    from busai.data.splits import make_splits, write_splits
    from busai.training import resume

    splits = tiny_runs / "splits.json"
    if not splits.exists():
        write_splits(splits, make_splits(discover_records(synthetic_dir), [], val=0.25, test=0.1, seed=0))
    common = [
        "seg",
        "--model",
        "unet",
        "--encoder",
        "efficientnet-lite0",
        "--weights",
        "none",
        "--image-size",
        "32",
        "--epochs",
        "2",
        "--precision",
        "fp32",
        "--device",
        "cpu",
        "--augment",
        "none",
        "--data",
        str(synthetic_dir),
        "--splits",
        str(splits),
        "--quiet",
    ]
    env = {**os.environ, "PYTHONPATH": SRC + os.pathsep + os.environ.get("PYTHONPATH", ""), "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1"}
    two = tmp_path / "two"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            "-m",
            "busai",
            "train",
            *common,
            "--batch-size",
            "4",
            "--out",
            str(two),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert json.loads((two / "fit.json").read_text())["processes"] == 2
    assert len(history(two)) == 2 and (two / "checkpoint_best.safetensors").is_file()
    assert not list(two.glob("*.tmp"))  # one writer: no half-written files left by a second rank

    one = tmp_path / "one"  # the same global batch (2 x 4) in one process
    from busai.cli import main

    assert main(["train", *common, "--batch-size", "8", "--out", str(one)]) == 0
    dice_two, dice_one = float(history(two)[-1]["val_dice"]), float(history(one)[-1]["val_dice"])
    assert abs(dice_two - dice_one) <= 0.01, (dice_two, dice_one)

    result = resume(two, epochs=3, quiet=True)  # a 2-process checkpoint continued by 1 process
    assert result.epochs_run == 3 and [int(r["epoch"]) for r in history(two)] == [1, 2, 3]
