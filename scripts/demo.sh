#!/usr/bin/env bash
# The main job end to end on built-in synthetic phantoms (no dataset needed), in a few minutes on 2 CPU cores:
# synthesise -> audit -> split -> train + evaluate a segmenter and a classifier started from its encoder -> predict -> ONNX export -> report.
set -euo pipefail
OUT=${1:-demo_out}
rm -rf "$OUT"
mkdir -p "$OUT"
DATA="$OUT/data"

busai data synth "$DATA" --n 72 --seed 0
busai data audit "$DATA"
busai data split "$DATA" --out "$OUT/splits.json" --seed 0

busai train seg --data "$DATA" --splits "$OUT/splits.json" --out "$OUT/runs/seg-lite0-unet" \
  --model unet --encoder efficientnet-lite0 --image-size 96 --epochs 6 --batch-size 8 --lr 1e-3 --optimizer adamw
busai evaluate "$OUT/runs/seg-lite0-unet" --data "$DATA" --splits "$OUT/splits.json" --split val test --n-boot 200

# The classifier starts from the segmenter's encoder (same split, so no val/test image leaks in).
busai train cls --data "$DATA" --splits "$OUT/splits.json" --out "$OUT/runs/cls-lite0" \
  --model efficientnet_lite0 --weights "$OUT/runs/seg-lite0-unet/checkpoint_best.safetensors" --image-size 96 --epochs 6 --batch-size 16 --lr 1e-3 --optimizer adamw --focal-gamma 2
busai evaluate "$OUT/runs/cls-lite0" --data "$DATA" --splits "$OUT/splits.json" --split val test --n-boot 200


# New scans: fresh phantoms (another seed) through both models; masks, overlays, measurements, CSV/JSON.
busai data synth "$OUT/new_scans" --n 6 --seed 99
busai predict "$OUT/new_scans/benign" "$OUT/new_scans/malignant" --out "$OUT/predictions" \
  --seg "$OUT/runs/seg-lite0-unet" --cls "$OUT/runs/cls-lite0" --pixel-spacing 0.1 --quiet
busai export "$OUT/runs/seg-lite0-unet" --format onnx --out "$OUT/seg-lite0-unet.onnx"
busai predict "$OUT/new_scans/malignant" --out "$OUT/predictions_onnx" --seg "$OUT/seg-lite0-unet.onnx" --cls none --quiet
# The report of both runs: score tables with CIs, figures, training curves (report.md and a self-contained report.html).
busai report "$OUT/runs" --audit "$DATA" --out "$OUT/report"
echo "demo finished: run folders, metrics.json and figures are in $OUT/runs"
echo "report: $OUT/report/report.html"
