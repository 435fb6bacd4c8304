"""The shipped ``model.onnx`` of each release answers as the ``model.safetensors`` beside it (scripts/release_onnx.py writes them)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from busai.backends import METADATA_KEY, load_onnx
from busai.data.synthetic import make_phantom
from busai.runs import CALIBRATION, ONNX_FILE, RELEASE_DIR, resolve_model


@pytest.mark.parametrize("task", ["segmentation", "classification"])
def test_shipped_onnx_agrees_with_the_shipped_weights(task):
    torch_model = resolve_model("release", task, backend="torch")
    assert (RELEASE_DIR / task / ONNX_FILE).is_file(), "the release has no model.onnx: write it with `python scripts/release_onnx.py`"
    onnx_model = load_onnx(RELEASE_DIR / task / ONNX_FILE)
    assert onnx_model.spec == torch_model.spec and onnx_model.preprocessing == torch_model.preprocessing
    scans = [make_phantom(np.random.default_rng(seed), (180, 240), label)[0] for seed, label in enumerate(("benign", "malignant", "normal"))]
    batch = torch.stack([torch_model.preprocessing.tensor(np.repeat(s[..., None], 3, axis=2)) for s in scans])
    with torch.inference_mode():
        expected = torch_model.module(batch)
    got = onnx_model.logits(batch)
    assert float((got - expected).abs().max()) < 1e-3  # export.PARITY_TOLERANCE: kernel order only
    if task == "segmentation":
        assert torch.equal(got > 0, expected > 0) or float(((got > 0) != (expected > 0)).float().mean()) < 1e-4
    else:
        assert torch.equal(got.argmax(1), expected.argmax(1))
        stored = json.loads(onnx_model.module.metadata[METADATA_KEY])["temperature"]
        assert stored == json.loads((RELEASE_DIR / task / CALIBRATION).read_text())["temperature"]
