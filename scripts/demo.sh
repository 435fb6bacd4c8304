#!/usr/bin/env bash
# The main job end to end on built-in synthetic phantoms (no dataset needed), in a few minutes on 2 CPU cores:
# synthesise -> audit -> split -> train + evaluate a segmenter and a classifier -> report.
set -euo pipefail
OUT=${1:-demo_out}
rm -rf "$OUT"
mkdir -p "$OUT"
DATA="$OUT/data"

busai data synth "$DATA" --n 80 --seed 0
busai data audit "$DATA"
busai data split "$DATA" --out "$OUT/splits.json" --seed 0

busai train seg --data "$DATA" --splits "$OUT/splits.json" --out "$OUT/runs/seg-lite0-unet" \
  --model unet --encoder efficientnet-lite0 --image-size 96 --epochs 8 --batch-size 8 --lr 1e-3 --optimizer adamw
busai evaluate "$OUT/runs/seg-lite0-unet" --data "$DATA" --splits "$OUT/splits.json" --split val test --n-boot 200

busai train cls --data "$DATA" --splits "$OUT/splits.json" --out "$OUT/runs/cls-lite0" \
  --model efficientnet_lite0 --image-size 96 --epochs 8 --batch-size 16 --lr 1e-3 --optimizer adamw --focal-gamma 2
busai evaluate "$OUT/runs/cls-lite0" --data "$DATA" --splits "$OUT/splits.json" --split val test --n-boot 200

busai report collect "$OUT/runs/seg-lite0-unet" --out "$OUT/results/segmentation"
busai report collect "$OUT/runs/cls-lite0" --out "$OUT/results/classification"
busai report tables --results "$OUT/results"
echo "demo finished: run folders, metrics.json and figures are in $OUT/runs"
