#!/usr/bin/env bash
# Issue 27's segmentation runs (masks that hold on any scanner) and issue 28's classifier runs on the
# same folds (one diagnosis per scan: its fusion is fitted on both models' out-of-fold predictions),
# one at a time, resumably.
#   bash scripts/reproduce_seg27.sh BUSI_DIR UCLM_DIR NAME [FOLD ...]
# NAME picks a recipe below; with FOLDs the recipe trains on those folds of splits/busi-uclm.json
# (patient- and duplicate-grouped, over train+val; test is never used), into runs/seg27/NAME/fold-I;
# without, on the split's train / val lists into runs/seg27/NAME.
# A finished run is skipped; an interrupted or time-capped one is resumed, 60 minutes at a time.
# Out-of-fold scores and the table: python benchmarks/seg_folds.py.
set -euo pipefail
BUSI=${1:?usage: reproduce_seg27.sh BUSI_DIR UCLM_DIR NAME [FOLD ...]}
UCLM=${2:?usage: reproduce_seg27.sh BUSI_DIR UCLM_DIR NAME [FOLD ...]}
NAME=${3:?usage: reproduce_seg27.sh BUSI_DIR UCLM_DIR NAME [FOLD ...]}
shift 3
SPLITS=splits/busi-uclm.json
BOTH="--data busi=$BUSI --data uclm=$UCLM"
# The reference recipe of the issue, in busai's options: EfficientNet-Lite0 U-Net from ImageNet,
# grey 256 px, random resized crops over 45-100% of the scan plus gain / gamma / contrast / noise,
# Dice + BCE, AdamW 3e-4 cosine, 12 epochs, best epoch by validation Dice over lesion scans.
REF="seg $BOTH --model unet --encoder efficientnet-lite0 --weights imagenet --color gray --augment framing --image-size 256 --batch-size 8 --optimizer adamw --lr 3e-4 --weight-decay 1e-4 --loss dice_bce --scheduler cosine --epochs 12 --select lesion_dice"
REF_BUSI="${REF/--data uclm=$UCLM /}"  # the same recipe on BUSI alone
# The release's recipe on BUSI alone (seg-busi-scanner of scripts/reproduce_crossdataset.sh), for
# levers judged on the held-out scanner (all of BUS-UCLM, benchmarks/cross_dataset.py).
SCANNER_BUSI="seg --data busi=$BUSI --model unet --encoder efficientnet-lite0 --weights runs/release-v1/segmentation/model.safetensors --color gray --augment scanner --image-size 256 --batch-size 8 --optimizer adamw --lr 1e-4 --weight-decay 1e-4 --loss dice --scheduler cosine --epochs 10"
declare -A ARGS=(
  [ref]="$REF"
  # The levers, each one change on the reference recipe.
  [ref-ema]="$REF --ema 0.995"
  [ref-balanced]="$REF --dataset-weight busi=1 --dataset-weight uclm=1"
  [ref-320]="${REF/--image-size 256/--image-size 320}"
  [ref-lite2]="${REF/efficientnet-lite0/efficientnet-lite2}"
  # The reference recipe on BUSI alone, scored on all of BUS-UCLM (never trained on) by
  # benchmarks/cross_dataset.py: the one scanner this machine can hold out, beside seg-busi-scanner
  # (the release's start and augmentation on BUSI alone), to find why the release is below the reference.
  [ref-busi]="$REF_BUSI"
  # ref-busi started from the BUSI-only release (extracted into runs/release-v1, see
  # benchmarks/cross_dataset.py) instead of ImageNet: one change, the start, on the held-out scanner.
  [scanner-busi-ema]="$SCANNER_BUSI --ema 0.995"
  # Half the schedule: issue 19's run of this recipe stopped at its time cap after 5 of 10 epochs.
  [scanner-busi-5ep]="${SCANNER_BUSI/--epochs 10/--epochs 5}"
  # What drives false outlines on an unseen scanner's normals, two seeds each (one run is noise here):
  # hard-example draws (a normal scan the model outlines has Dice 0 and comes round more often).
  [scanner-busi-hard]="$SCANNER_BUSI --hard-examples"
  [scanner-busi-hard-s1]="$SCANNER_BUSI --hard-examples --seed 1"
  [scanner-busi-s1]="$SCANNER_BUSI --seed 1"
  # An image-level term: the top 1/256 of a scan's pixel logits pooled into one "lesion present" logit,
  # so a confident false outline on a normal scan costs a wrong image label.
  [scanner-busi-topk]="${SCANNER_BUSI/--loss dice/--loss dice_topk}"
  [scanner-busi-topk-s1]="${SCANNER_BUSI/--loss dice/--loss dice_topk} --seed 1"
  [ref-busi-v1init]="${REF_BUSI/--weights imagenet/--weights runs/release-v1/segmentation/model.safetensors}"
  # Issue 28: the whole-image classifier on the same folds, from ImageNet (the release's encoder saw
  # every fold's images, so starting from it would leak into the out-of-fold predictions), with the
  # reference's grey input and framing crops; focal loss and the class-balanced sampler as the release.
  [cls-ref]="cls $BOTH --model efficientnet_lite0 --weights imagenet --color gray --augment framing --image-size 224 --batch-size 16 --optimizer adamw --lr 3e-4 --weight-decay 1e-4 --focal-alpha 0.5 --focal-gamma 3 --scheduler cosine --epochs 10"
  # Its BUSI-only twin, the classifier of ref-busi's row in benchmarks/cross_dataset.py.
  [cls-ref-busi]="cls --data busi=$BUSI --model efficientnet_lite0 --weights imagenet --color gray --augment framing --image-size 224 --batch-size 16 --optimizer adamw --lr 3e-4 --weight-decay 1e-4 --focal-alpha 0.5 --focal-gamma 3 --scheduler cosine --epochs 10"
)
MINUTES=60
[ -n "${ARGS[$NAME]+x}" ] || { echo "unknown recipe $NAME; choose from ${!ARGS[*]}" >&2; exit 2; }
folds=("$@")
[ ${#folds[@]} -eq 0 ] && folds=(none)
# A run stopped by its time budget before its last epoch has fit.json too: it is continued, in capped
# pieces, until it has run all its epochs (at most 4 pieces, so a run that cannot progress stops the script).
unfinished() {  # true while $1 has not run the epochs its config asks for
  [ ! -f "$1/fit.json" ] && return 0
  python -c "import json, sys; f = json.load(open('$1/fit.json')); c = json.load(open('$1/config.json')); sys.exit(0 if f['epochs_run'] < c['train']['epochs'] else 1)"
}
for fold in "${folds[@]}"; do
  if [ "$fold" = none ]; then out=runs/seg27/$NAME; extra=""; else out=runs/seg27/$NAME/fold-$fold; extra="--fold $fold"; fi
  for piece in 1 2 3 4; do
    unfinished "$out" || { echo "$out: done"; break; }
    if [ -f "$out/checkpoint_last.pt" ]; then
      # The minutes already spent count against --max-minutes: the new cap is those plus one more piece.
      spent=$(python -c "import json; print(int(json.load(open('$out/fit.json'))['seconds'] // 60) if __import__('os').path.exists('$out/fit.json') else 0)")
      echo "$out: resuming"; busai train --resume "$out" --max-minutes $((spent + MINUTES)) --quiet
    else
      # A run that never finished an epoch: restart it. Only its own files go: the recipe's
      # fold-I runs live inside the train-list run's folder and must survive its restart.
      [ -d "$out" ] && find "$out" -maxdepth 1 -type f -delete
      echo "$out: training"; busai train ${ARGS[$NAME]} $extra --splits $SPLITS --out "$out" --max-minutes $MINUTES --quiet
    fi
  done
done
