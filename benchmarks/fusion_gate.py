"""Should the diagnosis empty the mask of a scan it calls normal? (issue 27's presence rule, with
the classifier's evidence as well as the segmenter's.)

    python benchmarks/fusion_gate.py ref cls-ref

Reads the committed out-of-fold rows of a segmentation recipe (``results/seg_folds/SEG/fold-I.csv``,
from ``benchmarks/seg_folds.py``) and of the pair's diagnosis (``results/diagnosis_fusion/oof-SEG-CLS/``,
from ``benchmarks/diagnosis_fusion.py --oof``); no model runs. For each fold, the temperature and the
fusion are fitted on the other four folds' scans, and a scan whose fused ``p(lesion)`` falls below the
gate has its mask emptied (a lesion scan then scores Dice 0 and counts as missed, a normal one scores
1). Fold means and sds of Dice over lesion scans, lesions missed and normals outlined, ungated and at
each gate, as ``benchmarks/seg_folds.py`` reports them. Writes ``results/fusion_gate.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace


ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
from diagnosis_fusion import features, fit_tempered_fusion, log_probs  # noqa: E402
from seg_folds import fold_scores, mean_sd, read_rows, with_rule  # noqa: E402

CLASSES = ("normal", "benign", "malignant")
GATES = (0.3, 0.4, 0.5, 0.6, 0.7)
KEYS = ("lesion_dice", "missed", "normals_outlined", "dice_all")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("seg", help="segmentation recipe (results/seg_folds/SEG)")
    parser.add_argument("cls", help="classifier recipe of the pair (results/diagnosis_fusion/oof-SEG-CLS)")
    parser.add_argument("--out", default=str(ROOT / "results" / "fusion_gate.json"))
    args = parser.parse_args(argv)

    from busai.calibration import apply_temperature
    from busai.runs import write_json

    seg, cls = {}, {}
    for path in sorted((ROOT / "results" / "seg_folds" / args.seg).glob("fold-*.csv")):
        fold = int(path.stem.split("-")[1])
        fused = ROOT / "results" / "diagnosis_fusion" / f"oof-{args.seg}-{args.cls}" / f"{path.stem}.json"
        if fused.is_file():
            seg[fold] = read_rows(path)[0]
            cls[fold] = {r["key"]: r for r in json.loads(fused.read_text())}
    if len(seg) < 2:
        print(f"needs out-of-fold rows of {args.seg} and {args.seg}+{args.cls} for two folds or more", file=sys.stderr)
        return 1

    p_lesion = {}  # key -> fused p(lesion) from the temperature and fusion fitted on the other folds
    for fold in seg:
        t, fusion = fit_tempered_fusion([r for other, rows in cls.items() if other != fold for r in rows.values()])
        held = list(cls[fold].values())
        probs = apply_temperature(log_probs(held), t)
        p_lesion.update(zip((r["key"] for r in held), fusion.p_lesion(features(held, probs))))

    def gated(rows, gate):  # scored as seg_folds scores the presence rule, the gate in its place
        return with_rule(rows, SimpleNamespace(keeps=lambda r: p_lesion.get(r["key"], 1.0) >= gate))

    results = {"command": "python benchmarks/fusion_gate.py " + " ".join(sys.argv[1:] if argv is None else argv), "folds": sorted(seg), "gates": {}}
    for gate in (None, *GATES):
        per_fold = [fold_scores(rows if gate is None else gated(rows, gate)) for rows in seg.values()]
        results["gates"]["ungated" if gate is None else f"{gate:g}"] = {k: mean_sd([s[k] for s in per_fold]) for k in KEYS}
    write_json(Path(args.out), results)
    for name, s in results["gates"].items():
        print(f"{name:>8}: " + ", ".join(f"{k} {v['mean']:.3f} ± {v['sd']:.3f}" for k, v in s.items()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
