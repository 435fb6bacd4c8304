#!/usr/bin/env bash
# The two budgeted Optuna studies on real BUSI, one after the other, resumably.
#   bash scripts/tune_busi.sh DATA_DIR [seg-lite0-unet] [cls-efficientnet_lite0]   (no NAME: both)
# Each study lives in runs/tune/<name>/ (study.db and trial runs, gitignored); its small outputs
# (summary.json, best_config.json, space.json, trials.csv, plots) are copied to results/tuning/<name>/
# and results/tuning/README.md gets the best-parameter table. Re-running resumes an unfinished study.
#
# CPU budget (2 cores): images at 160 px instead of the paper's 256/288/320 (segmentation) or the
# model's 224 (classification), at most 5 epochs per trial, 6 minutes per trial, BUSAI_TUNE_TRIALS
# (default 20) trials or BUSAI_TUNE_MINUTES (default 30) per study, whichever ends first; the median pruner stops poor
# trials from epoch 3 on. Every override is
# recorded in space.json. Trial 0 replays the paper's tuned settings (--enqueue-paper) under the
# same budget, so summary.json's paper_trial.tuned_beats_paper answers "did tuning beat the paper?".
set -euo pipefail
DATA=${1:?usage: tune_busi.sh DATA_DIR [NAME ...]}
shift
SPLITS=splits/busi.json
MINUTES=${BUSAI_TUNE_MINUTES:-30}
TRIALS=${BUSAI_TUNE_TRIALS:-20}
BUDGET="--trials $TRIALS --timeout $MINUTES --image-size 160 --max-epochs 5 --trial-minutes 6 --pruner median --enqueue-paper"

declare -A ARGS=(
  # Table 3's U-Net study with the offline ImageNet encoder; searches lr, weight decay, batch, optimizer.
  [seg-lite0-unet]="seg --space model=unet --space encoder=efficientnet-lite0"
  # Table 5's search for EfficientNet-Lite0 (paper row used for trial 0: MobileNetV3, the nearest model).
  [cls-efficientnet_lite0]="cls --space model=efficientnet_lite0"
)
NAMES=("$@")
[ ${#NAMES[@]} -gt 0 ] || NAMES=(seg-lite0-unet cls-efficientnet_lite0)

for name in "${NAMES[@]}"; do
  args=${ARGS[$name]:?unknown study name $name}
  out=runs/tune/$name
  echo "== $name"
  # shellcheck disable=SC2086
  busai tune $args --data "$DATA" --splits "$SPLITS" --out "$out" $BUDGET
  mkdir -p "results/tuning/$name"
  for f in summary.json best_config.json space.json trials.csv history.png importances.png parallel.png; do
    if [ -f "$out/$f" ]; then cp "$out/$f" "results/tuning/$name/"; fi
  done
done
{
  echo "# Tuning studies on BUSI"
  echo
  echo "Made by \`bash scripts/tune_busi.sh DATA_DIR\` (each study's exact command is in its summary.json)."
  echo
  busai tune table results/tuning/*/
} > results/tuning/README.md
