"""Shared fixtures: a small synthetic BUSI-layout dataset, and writable copies of it to break."""

from __future__ import annotations

import gc
import os
import shutil
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network
os.environ.setdefault("BUSAI_PROBE", "0")  # no timing probe (nor its cache in ~/.cache) unless a test asks for one
# The suite builds thousands of small torch modules in one process: at the collector's default
# first threshold (700 allocations) it walks that ever larger heap over and over.
gc.set_threshold(50_000, 20, 20)

import pytest  # noqa: E402

from busai.data.synthetic import write_synthetic_dataset  # noqa: E402


@pytest.fixture(scope="session")
def synthetic_dir(tmp_path_factory) -> Path:
    """24 phantoms (11 benign, one with a second mask; 7 malignant; 6 normal) at 64x80.

    Shared by the whole session: copy it (``busi_copy``) before changing anything.
    """
    return write_synthetic_dataset(tmp_path_factory.mktemp("synthetic") / "busi", n=24, seed=0, size=(64, 80))


@pytest.fixture
def busi_copy(synthetic_dir, tmp_path) -> Path:
    """A private copy of the synthetic dataset that a test may damage."""
    return Path(shutil.copytree(synthetic_dir, tmp_path / "busi"))


class Cli:
    """Run ``busai ARGS...`` in-process through ``busai.cli.main`` and capture its output."""

    def __init__(self, capsys) -> None:
        self._capsys = capsys

    def __call__(self, *args) -> tuple[int, str, str]:
        from busai.cli import main

        code = main([str(a) for a in args])
        captured = self._capsys.readouterr()
        return code, captured.out, captured.err

    def fails(self, *args, expect: str) -> str:
        """Assert exit code 2 with one ``error:`` line containing ``expect`` and no traceback."""
        code, _, err = self(*args)
        assert code == 2, err
        assert err.startswith("error: ") and err.count("\n") == 1, err
        assert "Traceback" not in err
        assert expect in err, err
        return err


@pytest.fixture
def cli(capsys) -> Cli:
    return Cli(capsys)


# --------------------------------------------------------------------------- trained tiny runs
# Real run folders written through the public training API (1 epoch, 64 px, random init), shared
# by the predict / export / release / serve tests. Their predictions are meaningless; the files
# and shapes are what those tests check.
def _train_tiny(synthetic_dir: Path, out: Path, task: str, model: str, encoder: str | None) -> Path:
    from busai.config import TrainConfig
    from busai.data.discover import discover_records
    from busai.data.splits import make_splits, write_splits
    from busai.training import train

    splits = out.parent / "splits.json"
    if not splits.exists():
        write_splits(splits, make_splits(discover_records(synthetic_dir), [], val=0.25, test=0.1, seed=0))
    cfg = TrainConfig(
        task=task, model=model, encoder=encoder, weights="none", image_size=64, epochs=1, batch_size=8, data=str(synthetic_dir), splits=str(splits)
    )
    train(cfg, out, quiet=True)
    return out


@pytest.fixture(scope="session")
def tiny_runs(synthetic_dir, tmp_path_factory) -> Path:
    """Folder holding splits.json and the two tiny runs below."""
    return tmp_path_factory.mktemp("tiny_runs")


@pytest.fixture(scope="session")
def seg_run(synthetic_dir, tiny_runs) -> Path:
    """A trained EfficientNet-Lite0 U-Net run folder (64 px)."""
    return _train_tiny(synthetic_dir, tiny_runs / "seg", "seg", "unet", "efficientnet-lite0")


@pytest.fixture(scope="session")
def cls_run(synthetic_dir, tiny_runs) -> Path:
    """A trained EfficientNet-Lite0 classifier run folder (64 px)."""
    return _train_tiny(synthetic_dir, tiny_runs / "cls", "cls", "efficientnet_lite0", None)


@pytest.fixture(scope="session")
def mt_run(synthetic_dir, tiny_runs) -> Path:
    """A trained multitask EfficientNet-Lite0 U-Net run folder (masks and classes, 64 px)."""
    return _train_tiny(synthetic_dir, tiny_runs / "mt", "mt", "unet", "efficientnet-lite0")


@pytest.fixture(scope="session")
def seg_onnx(seg_run, tmp_path_factory):
    """``seg_run`` exported to ONNX with dynamic sizes: (the loaded PyTorch model, its ExportResult)."""
    from busai.export import export_onnx
    from busai.runs import resolve_model

    loaded = resolve_model(seg_run, "seg")
    return loaded, export_onnx(loaded, tmp_path_factory.mktemp("onnx") / "seg.onnx")


# --------------------------------------------------------------------------- test tiers
# `make test-fast` runs `-m "not slow"`. A test on a trained run is slow by construction (the first
# one pays for the training), so those are marked here by fixture, not by hand: a new test on a
# trained run can never land in the fast loop. Other slow tests carry @pytest.mark.slow themselves.
TRAINED_RUNS = {"seg_run", "cls_run", "mt_run"}


def pytest_collection_modifyitems(items) -> None:
    for item in items:
        if TRAINED_RUNS & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)
