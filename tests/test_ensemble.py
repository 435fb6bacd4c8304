"""Ensembles: members' probabilities averaged, saved and loaded back with equal outputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import busai
from busai.ensemble import EnsembleLoaded, load_ensemble, save_ensemble
from busai.errors import CheckpointError


def _batch(model, n=3, seed=0):
    rng = np.random.default_rng(seed)
    return torch.stack([model.preprocess(rng.integers(0, 255, (64, 80), dtype=np.uint8)) for _ in range(n)])


def test_ensemble_averages_member_probabilities(seg_run, mt_run, synthetic_dir):
    a, b = busai.load(seg_run, device="cpu"), busai.load(mt_run, task="seg", device="cpu")
    x = _batch(a)
    expected = (a.probabilities(x, precision="fp32") + b.probabilities(x, precision="fp32")) / 2
    ensemble = busai.Model(EnsembleLoaded([a.loaded, b.loaded], source="two"))
    assert torch.allclose(ensemble.probabilities(x, precision="fp32"), expected, atol=1e-5)
    scan = next(iter(sorted((synthetic_dir / "benign").glob("*).png"))))
    prediction = ensemble.predict(scan)
    assert prediction.mask.shape == (prediction.height, prediction.width)


def test_ensemble_save_and_load_give_equal_outputs(seg_run, mt_run, tmp_path):
    a, b = busai.load(seg_run, device="cpu"), busai.load(mt_run, task="seg", device="cpu")
    folder = save_ensemble([a, b], tmp_path / "ens")
    loaded = busai.Model(load_ensemble(folder))
    x = _batch(a)
    before = busai.Model(EnsembleLoaded([a.loaded, b.loaded], source="two")).probabilities(x, precision="fp32")
    assert torch.allclose(loaded.probabilities(x, precision="fp32"), before, atol=1e-6)
    with pytest.raises(CheckpointError, match="already exists"):
        save_ensemble([a, b], folder)


def test_ensemble_refuses_mixed_members(seg_run, cls_run):
    seg, cls = busai.load(seg_run, device="cpu"), busai.load(cls_run, device="cpu")
    with pytest.raises(CheckpointError, match="members must share one task"):
        EnsembleLoaded([seg.loaded, cls.loaded], source="mixed")
