"""Rewrite the packaged models' scores.json from an evaluation of the packaged models themselves.

The README, the model card (scripts/release_table.py) and `busai evaluate release` then show the
same numbers: those of the shipped fp16 weights with their stored temperature, computed in fp32 (the
reference any machine reproduces; a CPU with native bf16 predicts in bf16 and may differ by an image).

    busai evaluate release --data busi=../shared/data/Dataset_BUSI_with_GT --data uclm=../shared/data/BUS-UCLM \\
        --splits splits/busi-uclm.json --split val test --precision fp32 --out /tmp/release-scores --no-figures
    python scripts/release_scores.py /tmp/release-scores
    python scripts/release_table.py          # paste into README.md; --full and --calibration into docs/model-card.md
"""

from __future__ import annotations

import argparse

from busai.release import rescore_release


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("evaluation", help="the --out folder of `busai evaluate release`")
    for path in rescore_release(parser.parse_args().evaluation):
        print(path)


if __name__ == "__main__":
    main()
