"""Write ``model.onnx`` beside each shipped release's ``model.safetensors``, for the torch-free install.

``pip install 'busai[onnx]'`` has no PyTorch: its ``busai predict``, ``busai serve`` and
``busai.load("release")`` run these files in ONNX Runtime. Each is written by busai's own export
(batch norm folded, parity-checked against PyTorch, metadata with preprocessing and calibration);
tests/test_release_onnx.py fails when a file no longer agrees with the safetensors beside it.
Run after changing a release (needs the ``torch`` and ``export`` extras):

    python scripts/release_onnx.py
"""

from __future__ import annotations

import argparse
import dataclasses
import sys

from busai.export import export_onnx
from busai.runs import ONNX_FILE, TASKS, release_dir, resolve_model


def main() -> int:
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()
    failed = False
    for task in TASKS:
        loaded = resolve_model("release", task, backend="torch")
        # The metadata names the packaged folder, not this machine's path to it.
        loaded = dataclasses.replace(loaded, source=f"busai/release/{task}")
        out = release_dir(task) / ONNX_FILE
        result = export_onnx(loaded, out, force=True)
        print(f"{out}: opset {result.opset}, dynamic size {result.dynamic_size}, max |logit difference| vs PyTorch {result.max_abs_diff:.2g}")
        failed |= not result.ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
