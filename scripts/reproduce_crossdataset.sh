#!/usr/bin/env bash
# Train the cross-dataset (BUSI + BUS-UCLM) runs of issue 19, one at a time, resumably.
#   bash scripts/reproduce_crossdataset.sh BUSI_DIR UCLM_DIR [NAME ...]   (no NAME: every run below, in order)
# Split: splits/busi-uclm.json (BUSI's part is splits/busi.json; BUS-UCLM split by patient).
# A finished run (fit.json present) is skipped; an interrupted one is resumed with its budget.
# Runs live in runs/xd/; scoring and the yardstick table: benchmarks/cross_dataset.py.
set -euo pipefail
BUSI=${1:?usage: reproduce_crossdataset.sh BUSI_DIR UCLM_DIR [NAME ...]}
UCLM=${2:?usage: reproduce_crossdataset.sh BUSI_DIR UCLM_DIR [NAME ...]}
shift 2
SPLITS=splits/busi-uclm.json
# "The release" these recipes continue is the BUSI-only one of issue 19's time, not today's packaged
# release (which trained on BUS-UCLM too, so starting from it would leak into every BUS-UCLM score):
#   mkdir -p runs/release-v1 && git archive 69288d7 src/busai/release | tar -x -C runs/release-v1 --strip-components=3
V1=runs/release-v1
[ -f $V1/segmentation/model.safetensors ] || { echo "$V1: missing; extract the BUSI-only release first (see the comment above)" >&2; exit 2; }
BOTH="--data busi=$BUSI --data uclm=$UCLM"

declare -A ARGS=(
  # The release segmenter continued on both datasets' train images, seeing scans as grey (BUS-UCLM's
  # grey map is tinted) with the strong augmentations (gain, gamma, speckle, scale): one recipe for
  # scanner shift, judged on the pooled validation images of both datasets.
  [seg-both-gray]="seg $BOTH --model unet --encoder efficientnet-lite0 --weights $V1/segmentation/model.safetensors --color gray --augment strong --image-size 256 --batch-size 8 --optimizer adamw --lr 1e-4 --weight-decay 1e-4 --loss dice --scheduler cosine --epochs 12"
  # The release classifier continued the same way (class-balanced sampler, focal loss as released).
  [cls-both-gray]="cls $BOTH --model efficientnet_lite0 --weights $V1/classification/model.safetensors --color gray --augment strong --image-size 256 --batch-size 16 --optimizer adamw --lr 1e-4 --weight-decay 1e-4 --focal-alpha 0.5 --focal-gamma 3 --scheduler cosine --epochs 8"
  # BUS-UCLM alone (the yardstick's "trained on the other scanner" row): the same recipe from
  # ImageNet weights (the release has seen BUSI), then the classifier from that segmenter's encoder,
  # as the release classifier was made.
  [seg-uclm-gray]="seg --data uclm=$UCLM --model unet --encoder efficientnet-lite0 --color gray --augment strong --image-size 256 --batch-size 8 --optimizer adamw --lr 3e-4 --weight-decay 1e-4 --loss dice --scheduler cosine --epochs 10"
  # One multitask network instead of the two above, at less training compute than both together:
  # the release segmenter's encoder and decoder plus a new class head on its encoder, same recipe.
  [mt-both-gray]="mt $BOTH --model unet --encoder efficientnet-lite0 --weights $V1/segmentation/model.safetensors --color gray --augment strong --image-size 256 --batch-size 8 --optimizer adamw --lr 1e-4 --weight-decay 1e-4 --loss dice --focal-alpha 0.5 --focal-gamma 3 --class-loss-weight 1 --scheduler cosine --epochs 10"
  # The joint classifier again with the scanner-shift augmentations (tint, framing, burnt-in overlays).
  [cls-both-scanner]="cls $BOTH --model efficientnet_lite0 --weights $V1/classification/model.safetensors --color gray --augment scanner --image-size 256 --batch-size 16 --optimizer adamw --lr 1e-4 --weight-decay 1e-4 --focal-alpha 0.5 --focal-gamma 3 --scheduler cosine --epochs 8"
  # The scanner-shift recipe on BUSI alone, continued from the release (which trained on BUSI only):
  # does grey input plus the scanner augmentations carry a BUSI model to BUS-UCLM, never trained on?
  [seg-busi-scanner]="seg --data busi=$BUSI --model unet --encoder efficientnet-lite0 --weights $V1/segmentation/model.safetensors --color gray --augment scanner --image-size 256 --batch-size 8 --optimizer adamw --lr 1e-4 --weight-decay 1e-4 --loss dice --scheduler cosine --epochs 10"
  [cls-busi-scanner]="cls --data busi=$BUSI --model efficientnet_lite0 --weights $V1/classification/model.safetensors --color gray --augment scanner --image-size 256 --batch-size 16 --optimizer adamw --lr 1e-4 --weight-decay 1e-4 --focal-alpha 0.5 --focal-gamma 3 --scheduler cosine --epochs 8"
  [cls-uclm-gray]="cls --data uclm=$UCLM --model efficientnet_lite0 --weights runs/xd/seg-uclm-gray/checkpoint_best.safetensors --color gray --augment strong --image-size 256 --batch-size 16 --optimizer adamw --lr 3e-4 --weight-decay 1e-4 --focal-alpha 0.5 --focal-gamma 3 --scheduler cosine --epochs 8"
)
declare -A MINUTES=([seg-both-gray]=55 [cls-both-gray]=28 [seg-uclm-gray]=22 [cls-uclm-gray]=14 [mt-both-gray]=65 [cls-both-scanner]=30 [seg-busi-scanner]=18 [cls-busi-scanner]=12)
ORDER=(seg-both-gray cls-both-gray seg-uclm-gray cls-uclm-gray mt-both-gray cls-both-scanner seg-busi-scanner cls-busi-scanner)

names=("$@")
[ ${#names[@]} -eq 0 ] && names=("${ORDER[@]}")
for name in "${names[@]}"; do
  [ -n "${ARGS[$name]+x}" ] || { echo "unknown run $name; choose from ${ORDER[*]}" >&2; exit 2; }
  out=runs/xd/$name
  if [ -f "$out/fit.json" ]; then echo "$name: done"; continue; fi
  if [ -f "$out/checkpoint_last.pt" ]; then
    echo "$name: resuming"; busai train --resume "$out" --quiet
  else
    rm -rf "$out"  # a run that never finished an epoch: restart it
    echo "$name: training"; busai train ${ARGS[$name]} --splits $SPLITS --out "$out" --max-minutes ${MINUTES[$name]} --quiet
  fi
done
