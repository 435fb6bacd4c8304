#!/usr/bin/env bash
# The inference-only install of docs/getting-started.md, checked as a user gets it: a new virtual
# environment, `pip install '.[onnx]'` from this clone (no PyTorch), then `busai predict` on a
# synthetic scan with the shipped release models (their model.onnx, in ONNX Runtime). Prints the
# environment's size (`du -sh`), the figure the docs quote. CI runs it after the test suite (.ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-$(command -v python3.11 || command -v python3)}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$PYTHON" -m venv "$tmp/venv"
"$tmp/venv/bin/python" -m pip install -q --upgrade pip
"$tmp/venv/bin/python" -m pip install -q '.[onnx]'
if "$tmp/venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "error: pip install '.[onnx]' installed torch; the base dependencies must stay torch-free" >&2
  exit 1
fi
cd "$tmp"  # away from the clone: the installed package is what runs
venv/bin/python -c "
import numpy as np
from PIL import Image
from busai.data.synthetic import make_phantom
Image.fromarray(make_phantom(np.random.default_rng(0), (180, 240), 'benign')[0]).save('scan.png')
"
venv/bin/busai predict scan.png --out out --quiet
venv/bin/python -c "
import csv
rows = list(csv.DictReader(open('out/predictions.csv')))
assert len(rows) == 1 and rows[0]['label'] in ('normal', 'benign', 'malignant') and rows[0]['mask'], rows
print('onnx-only install: busai predict ok (label', rows[0]['label'] + ', mask', rows[0]['mask'] + ')')
"
echo "size of the onnx-only virtual environment (du -sh after pip install '.[onnx]'): $(du -sh venv | cut -f1)"
