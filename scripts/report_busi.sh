#!/usr/bin/env bash
# The study's report (the paper's numbers beside ours) of the committed BUSI results, into results/report/ (report.md, report.html, figures/).
#   bash scripts/report_busi.sh [DATA_DIR]     (default ../shared/data/Dataset_BUSI_with_GT)
# Reads results/ (what scripts/reproduce_busi.sh and scripts/tune_busi.sh committed) and
# splits/busi.json; DATA_DIR is only audited (counts, duplicate groups, problems), never copied.
set -euo pipefail
cd "$(dirname "$0")/.."
DATA=${1:-../shared/data/Dataset_BUSI_with_GT}
busai data audit "$DATA" --json > results/busi_audit.json.tmp
mv results/busi_audit.json.tmp results/busi_audit.json
python -m study.report results --splits splits/busi.json --audit results/busi_audit.json --sample-splits test \
  --title "busai on BUSI: study report" --out results/report
