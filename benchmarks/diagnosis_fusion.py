"""Lesion-centred diagnosis (issue 28): does fusing the segmenter's lesion evidence with the
classifier beat the classifier alone at "lesion or normal"?

    python benchmarks/diagnosis_fusion.py --busi ../shared/data/Dataset_BUSI_with_GT --uclm ../shared/data/BUS-UCLM [--write]

The release segmenter and classifier predict every validation scan of ``splits/busi-uclm.json``
(both datasets; neither model trained on them) through busai's own predict pipeline, so the
features are those ``busai predict`` computes. The fusion (:class:`busai.diagnosis.Fusion`) is then
cross-fitted on those scans, patient-grouped K-fold: each scan's fused answer comes from a fusion
that never saw its patient. The table compares, per dataset and pooled, the classifier alone with
the fusion: lesion scans called normal, normals called lesion, accuracy, macro-F1 and the
lesion-vs-normal AUC (benign vs malignant is the classifier's in both). Test splits are not read.

``--oof SEG CLS`` fits on out-of-fold predictions instead (issue 28 item 3): each fold's runs
``runs/seg27/SEG/fold-I`` and ``runs/seg27/CLS/fold-I`` (``scripts/reproduce_seg27.sh``) predict
that fold's validation scans of ``splits/busi-uclm.json``, so every train + val scan is answered by
models that never saw it, and the fusion is cross-fitted over those 1,200-odd scans rather than 145.
Each fold's rows are kept in ``results/diagnosis_fusion/oof-SEG-CLS/fold-I.json`` (a fold is not
predicted again); writes ``results/diagnosis_fusion_oof.json`` and ``.md``. Fold runs carry no
temperature, so in this mode each cross-fit fits the classifier's temperature first and the fusion
on the tempered probabilities (the table's "classifier, temperature" row, with its ECE).
``--oof SEG CLS --write`` stores both, fitted on every out-of-fold scan, beside the release
classifier (``calibration.json`` and ``diagnosis.json``); it refuses unless the release holds the
train-list runs of those two recipes (``busai release runs/seg27/SEG --task seg`` ...).

``--write`` stores the fusion fitted on all validation scans as the release's diagnosis
(``src/busai/release/classification/diagnosis.json``) with this table's command beside it; whether
predict uses it by default is decided by docs/cross-dataset.md's rule on this table, not here.
Writes ``results/diagnosis_fusion.json`` and ``.md``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SPLITS = ROOT / "splits" / "busi-uclm.json"
CLASSES = ("normal", "benign", "malignant")


def predict_rows(records, seg="release", cls="release") -> list[dict]:
    """Per scan: truth, the classifier's probabilities and the segmenter's largest-component features
    (models ``seg`` and ``cls``: run or release folders, or "release")."""
    import busai
    from busai.pipeline import predict_from_records
    from busai.presence import component_features

    models = [busai.load(seg, task="segmentation"), busai.load(cls, task="classification")]
    return [
        {
            "key": record.key,
            "dataset": record.dataset,
            "group": f"{record.dataset}:{record.group or record.key}",
            "label": record.label,
            "cls": [(pred.classifier_probabilities or pred.probabilities)[c] for c in CLASSES],  # the classifier's own, not a stored fusion's
            "seg": component_features(pred.lesion_probability),
        }
        for record, pred in predict_from_records(models, records, keep_probability=True, gate=False)
    ]


def oof_rows(specs, seg: str, cls: str, cache: Path) -> tuple[list[dict], list[int]]:
    """Out-of-fold rows of the fold runs of recipes ``seg`` and ``cls``, and the folds they cover
    (a fold whose two runs have not both finished is left out, and said so)."""
    from busai.data.splits import load_split_records, read_splits

    splits = read_splits(SPLITS)
    rows, folds = [], []
    for fold in range(len(splits.get("folds") or [])):
        runs = [ROOT / "runs" / "seg27" / name / f"fold-{fold}" for name in (seg, cls)]
        cached = cache / f"fold-{fold}.json"
        if cached.is_file():
            part = json.loads(cached.read_text())
        elif all((run / "fit.json").is_file() for run in runs):
            records = [r for r in load_split_records(specs, splits, "val", fold=fold) if r.label in CLASSES]
            part = predict_rows(records, *runs)
            cached.parent.mkdir(parents=True, exist_ok=True)
            tmp = cached.with_suffix(".tmp")
            tmp.write_text(json.dumps(part) + "\n")
            tmp.replace(cached)
        else:
            unfinished = [str(r.relative_to(ROOT)) for r in runs if not (r / "fit.json").is_file()]
            print(f"fold {fold}: {' and '.join(unfinished)} not finished; left out", file=sys.stderr)
            continue
        rows += part
        folds.append(fold)
    return rows, folds


def log_probs(rows: list[dict]) -> np.ndarray:
    """The classifier's log-probabilities (N, 3): the logits up to a per-scan constant, which
    temperature scaling ignores."""
    return np.log(np.clip(np.array([r["cls"] for r in rows], dtype=float), 1e-12, 1.0))


def features(rows: list[dict], probs: np.ndarray) -> np.ndarray:
    """The fusion's inputs (N, 3) of ``rows`` with the classifier probabilities ``probs``."""
    from busai.diagnosis import lesion_features

    return np.stack([lesion_features(r["seg"], p, CLASSES) for r, p in zip(rows, probs)])


def fit_tempered_fusion(rows: list[dict], temper: bool = True):
    """(temperature, fusion) fitted on ``rows``: the temperature first (1 without ``temper``), then the
    fusion on the tempered probabilities, as a release ships them."""
    from busai.calibration import apply_temperature, fit_temperature
    from busai.diagnosis import Fusion

    logits = log_probs(rows)
    truth = np.array([CLASSES.index(r["label"]) for r in rows])
    t = fit_temperature(logits, truth) if temper else 1.0
    return t, Fusion.fit(features(rows, apply_temperature(logits, t)), truth != 0, fitted_on="cross-fit")


def cross_fit(rows: list[dict], folds: int, temper: bool, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Out-of-fold answers (N, 3) of the classifier with its temperature and of the fusion, each
    fitted on the other patients only (:func:`fit_tempered_fusion`). With ``temper`` (fold runs,
    which carry no temperature) the temperature is fitted; without, the rows already come from a
    calibrated classifier and T stays 1."""
    from sklearn.model_selection import StratifiedGroupKFold

    from busai.calibration import apply_temperature

    logits = log_probs(rows)
    y = np.array([r["label"] != "normal" for r in rows])
    groups = [r["group"] for r in rows]
    tempered, fused = np.zeros((len(rows), 3)), np.zeros((len(rows), 3))
    for train, held in StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed).split(logits, y, groups):
        t, fusion = fit_tempered_fusion([rows[i] for i in train], temper)
        tempered[held] = apply_temperature(logits[held], t)
        for i in held:
            answer = fusion.diagnose(rows[i]["seg"], tempered[i], CLASSES)
            fused[i] = [answer[c] for c in CLASSES]
    return tempered, fused


def scores(labels: list[str], probs: np.ndarray) -> dict:
    from sklearn.metrics import f1_score, roc_auc_score

    from busai.calibration import expected_calibration_error

    truth = np.array([CLASSES.index(label) for label in labels])
    called = probs.argmax(1)
    lesion, normal = truth != 0, truth == 0
    out = {
        "scans": int(len(truth)),
        "accuracy": float((called == truth).mean()),
        "macro_f1": float(f1_score(truth, called, labels=[c for c in range(3) if (truth == c).any()], average="macro")),
        "lesion_called_normal": float((called[lesion] == 0).mean()) if lesion.any() else None,
        "normal_called_lesion": float((called[normal] != 0).mean()) if normal.any() else None,
        "lesion_auc": float(roc_auc_score(lesion, 1 - probs[:, 0])) if lesion.any() and normal.any() else None,
        "ece": expected_calibration_error(probs, truth),
    }
    return {k: (round(v, 4) if isinstance(v, float) else v) for k, v in out.items()}


def paired(labels: list[str], before: np.ndarray, after: np.ndarray, groups: list[str]) -> dict:
    """Fusion minus classifier, per scan, with a patient-grouped bootstrap 95% CI: correct answers,
    and lesion scans called normal (over lesion scans)."""
    from busai.metrics import mean_with_ci

    truth = np.array([CLASSES.index(label) for label in labels])
    lesion = truth != 0
    correct = (after.argmax(1) == truth).astype(float) - (before.argmax(1) == truth).astype(float)
    missed = (after.argmax(1)[lesion] == 0).astype(float) - (before.argmax(1)[lesion] == 0).astype(float)
    return {
        "accuracy_change": mean_with_ci(correct, groups),
        "lesion_called_normal_change": mean_with_ci(missed, np.asarray(groups)[lesion]),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--busi", required=True)
    parser.add_argument("--uclm", required=True)
    parser.add_argument("--folds", type=int, default=5, help="patient-grouped folds of the cross-fit (default 5)")
    parser.add_argument("--write", action="store_true", help="store the fusion fitted on all validation scans in the release")
    parser.add_argument("--oof", nargs=2, metavar=("SEG", "CLS"), help="fit on the out-of-fold predictions of these fold recipes (runs/seg27/NAME/fold-I)")
    parser.add_argument("--out", default=None, help="results path without suffix (default results/diagnosis_fusion, or results/diagnosis_fusion_oof)")
    args = parser.parse_args(argv)
    args.out = args.out or str(ROOT / "results" / ("diagnosis_fusion_oof" if args.oof else "diagnosis_fusion"))

    from busai.calibration import apply_temperature, fit_temperature, judge_temperature
    from busai.data.sources import parse_data_specs
    from busai.data.splits import load_split_records
    from busai.diagnosis import Fusion
    from busai.release import release_dir
    from busai.runs import CALIBRATION, DIAGNOSIS, machine_info, write_json

    if args.oof and args.write:
        # Out-of-fold coefficients belong to the recipes' pair: they are stored only beside the
        # release models trained by those recipes on the split's train list.
        shipped = {task: json.loads((release_dir(task) / "scores.json").read_text()).get("run") for task in ("segmentation", "classification")}
        if [shipped["segmentation"], shipped["classification"]] != list(args.oof):
            parser.error(
                f"--write: the release holds runs {shipped['segmentation']} and {shipped['classification']}, not {' and '.join(args.oof)}; release those first"
            )
    specs = parse_data_specs([f"busi={args.busi}", f"uclm={args.uclm}"])
    if args.oof:
        rows, folds = oof_rows(specs, *args.oof, ROOT / "results" / "diagnosis_fusion" / f"oof-{args.oof[0]}-{args.oof[1]}")
        if not rows:
            print("no fold has both runs finished", file=sys.stderr)
            return 1
        scored = f"out of fold (folds {', '.join(map(str, folds))} of splits/busi-uclm.json; runs/seg27/{args.oof[0]}, runs/seg27/{args.oof[1]})"
    else:
        rows = predict_rows([r for r in load_split_records(specs, SPLITS, "val") if r.label in CLASSES])
        scored = "val"
    temper = bool(args.oof)  # fold runs carry no temperature; the release classifier's rows are already calibrated
    classifier = np.array([r["cls"] for r in rows])
    tempered, fused = cross_fit(rows, args.folds, temper)
    command = "python benchmarks/diagnosis_fusion.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results = {"command": command, "machine": machine_info(), "split": scored, "cross_fit_folds": args.folds, "rows": {}, "paired": {}}
    for part in ("pooled", "busi", "uclm"):
        idx = [i for i, r in enumerate(rows) if part == "pooled" or r["dataset"] == part]
        labels = [rows[i]["label"] for i in idx]
        answers = {"classifier": classifier[idx], **({"classifier, temperature": tempered[idx]} if temper else {}), "fusion": fused[idx]}
        if temper and part != "pooled":
            # Does a temperature carry to a scanner it was not fitted on? Fitted on the other dataset's scans alone.
            other = [i for i, r in enumerate(rows) if r["dataset"] != part]
            t = fit_temperature(log_probs([rows[i] for i in other]), np.array([CLASSES.index(rows[i]["label"]) for i in other]))
            answers["classifier, temperature of the other dataset"] = apply_temperature(log_probs([rows[i] for i in idx]), t)
        results["rows"][part] = {name: scores(labels, probs) for name, probs in answers.items()}
        results["paired"][part] = paired(labels, classifier[idx], fused[idx], [rows[i]["group"] for i in idx])
    fitted_on = f"release models on the val split of splits/busi-uclm.json ({len(rows)} scans)" if not args.oof else f"{scored}, {len(rows)} scans"
    calibration = None
    if temper:
        truth = np.array([CLASSES.index(r["label"]) for r in rows])
        judged = judge_temperature(log_probs(rows), truth, where=fitted_on)
        if judged.pop("stored"):
            calibration = {"temperature": judged["temperature"], "fitted_on": fitted_on, "images": len(rows), **judged, "command": command}
            results["calibration_all"] = calibration
    probs = apply_temperature(log_probs(rows), calibration["temperature"] if calibration else 1.0) if temper else classifier
    final = Fusion.fit(features(rows, probs), [r["label"] != "normal" for r in rows], fitted_on=fitted_on)
    results["fusion_all_val"] = final.to_dict()
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_json(out.with_suffix(".json"), results)
    out.with_suffix(".md").write_text(table(results) + "\n")
    print(table(results))
    if args.write:
        target = release_dir("classification")
        if args.oof:
            # The fusion was fitted on probabilities with this temperature: they ship together.
            if calibration:
                write_json(target / CALIBRATION, calibration)
            elif (target / CALIBRATION).exists():
                (target / CALIBRATION).unlink()
        write_json(target / DIAGNOSIS, {**final.to_dict(), "segmenter": "../segmentation", "command": command})
        print(f"wrote {target / DIAGNOSIS}" + (f" and {target / CALIBRATION}" if args.oof and calibration else ""))
    return 0


def table(results: dict) -> str:
    def pct(v):
        return "–" if v is None else f"{100 * v:.1f}%"

    lines = [
        f"Scans: {'the validation split' if results['split'] == 'val' else results['split']}; fusion cross-fitted over "
        f"{results['cross_fit_folds']} patient-grouped folds. Command: `{results['command']}`",
        "",
        "| scored on | answer | scans | accuracy | macro-F1 | lesion scans called normal | normals called lesion | lesion-vs-normal AUC | ECE |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for part, answers in results["rows"].items():
        for name, s in answers.items():
            auc = "–" if s["lesion_auc"] is None else f"{s['lesion_auc']:.3f}"
            lines.append(
                f"| {part} | {name} | {s['scans']} | {s['accuracy']:.3f} | {s['macro_f1']:.3f} | {pct(s['lesion_called_normal'])} | "
                f"{pct(s['normal_called_lesion'])} | {auc} | {s['ece']:.3f} |"
            )
    lines += ["", "Fusion minus classifier, patient-grouped bootstrap 95% CI:", "", "| scored on | accuracy | lesion scans called normal |", "|---|---|---|"]
    for part, change in results["paired"].items():
        cells = [f"{c['value']:+.3f} ({c['ci_low']:+.3f} to {c['ci_high']:+.3f})" for c in (change["accuracy_change"], change["lesion_called_normal_change"])]
        lines.append(f"| {part} | {cells[0]} | {cells[1]} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
