"""Print the released models' scores as Markdown, from ``src/busai/release/*/scores.json``.

The README and docs/model-card.md paste this output (tests/test_docs.py checks that they hold it
exactly, so the two never drift from the shipped scores):

    python scripts/release_table.py                # the README's short table: test split, with the paper's best
    python scripts/release_table.py --full         # the model card's table: every split and metric
    python scripts/release_table.py --calibration  # the model card's calibration table (results/release_calibration.json)

scores.json holds the packaged models' own scores (scripts/release_scores.py writes them from
`busai evaluate release`); tests/test_docs.py also checks that the calibration benchmark measured
the same accuracy and ECE, so every page shows one set of numbers.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the study package (study/) sits at the repository root, beside src/

from busai import SPLIT_NAMES  # noqa: E402
from study import paper  # noqa: E402

RELEASE = ROOT / "src" / "busai" / "release"
CALIBRATION = ROOT / "results" / "release_calibration.json"


DATASETS = {"busi": "BUSI", "uclm": "BUS-UCLM"}


def _ci(value, low, high) -> str:
    if low is None or high is None:
        return f"{value:.2f}"
    return f"{value:.2f} ({low:.2f}–{high:.2f})"


def _seg(split: dict) -> dict[str, str]:
    cells = {name: _ci(split[key]["mean"], *split[key]["mean_ci"]) for name, key in (("Dice", "dice"), ("IoU", "iou"))}
    if split.get("lesion_dice", {}).get("value") is not None:
        m = split["lesion_dice"]
        cells["Dice, lesion scans"] = _ci(m["value"], m.get("ci_low"), m.get("ci_high"))
    return cells


def _cls(split: dict) -> dict[str, str]:
    cells = {
        name: _ci(split[key]["value"], split[key]["ci_low"], split[key]["ci_high"])
        for name, key in (("accuracy", "accuracy"), ("macro-F1", "macro_f1"), ("macro AUC", "macro_auc"))
    }
    if split.get("malignant_vs_benign_auc", {}).get("value") is not None:
        m = split["malignant_vs_benign_auc"]
        cells["malignant-vs-benign AUC"] = _ci(m["value"], m.get("ci_low"), m.get("ci_high"))
    if split.get("ece") is not None:
        cells["ECE"] = f"{split['ece']:.3f}"
    return cells


def paper_best(task: str, split: str = "test") -> dict[str, float]:
    """The paper's best value per metric on ``split`` over all its models (Tables 4 and 6)."""
    if task == "segmentation":
        rows = [s[split] for s in paper.SEGMENTATION_SCORES.values()]
        return {"Dice": max(r[1] for r in rows), "IoU": max(r[2] for r in rows)}
    rows = [s[split] for s in paper.CLASSIFICATION_SCORES.values()]
    return {"accuracy": max(r[1] for r in rows), "macro-F1": max(r[2] for r in rows)}


def load(task: str) -> dict | None:
    """A packaged model's scores.json; for ``diagnosis``, the classifier's with the scores of the
    answer predict gives (the classifier fused with the segmenter), None when it holds none."""
    if task == "diagnosis":
        s = load("classification")
        return {**s, "splits": s["diagnosis"]} if s.get("diagnosis") else None
    return json.loads((RELEASE / task / "scores.json").read_text())


TASKS = (("segmentation", "_seg"), ("classification", "_cls"), ("diagnosis", "_cls"))


def per_dataset(scores: dict, split: str) -> list[tuple[str, dict]]:
    """(dataset label, metrics) for ``split``: one entry per named dataset (``NAME/split`` keys),
    else the single dataset the model was scored on."""
    named = [(key.split("/")[0], m) for key, m in scores["splits"].items() if key.endswith(f"/{split}")]
    if named:
        return [(DATASETS.get(name, name), m) for name, m in named]
    return [(scores.get("dataset", "BUSI"), scores["splits"][split])]


def short_table() -> str:
    lines = ["| Task | Dataset | Model (run) | Test images | Test score, mean (95% CI) | Paper's best on its test split |", "|---|---|---|---|---|---|"]
    for task, cells in _tasks():
        s = load(task)
        if s is None:
            continue
        model = s["model"]
        label = f"{model['encoder']} {model['name']}" if model.get("encoder") else model["name"]
        if model.get("task") == "multitask":
            label += " (multitask)"
        if task == "diagnosis":
            label += " fused with the segmenter"
        best = paper_best("classification" if task == "diagnosis" else task)
        for dataset, test in per_dataset(s, "test"):
            ours = cells(test)
            shown = [k for k in ours if k in ("Dice", "IoU", "Dice, lesion scans", "accuracy", "macro-F1", "malignant-vs-benign AUC", "ECE")]
            if task == "segmentation":
                d = test["detection"]
                ours["lesions missed"] = f"{d['missed_lesions']} of {d['lesion_images']}"
                shown.append("lesions missed")
            paper_cell = ", ".join(f"{k} {best[k]:.2f}" for k in best) if dataset == "BUSI" else "–"
            lines.append(
                f"| {task} | {dataset} | {label} (`{s['run']}`) | {test['images']} | " + ", ".join(f"{k} {ours[k]}" for k in shown) + f" | {paper_cell} |"
            )
    return "\n".join(lines)


def full_table() -> str:
    out = []
    for task, cells in _tasks():
        s = load(task)
        if s is None:
            continue
        rows = [
            (f"{dataset} {split}", m)
            for split in SPLIT_NAMES
            if split in s["splits"] or any(k.endswith(f"/{split}") for k in s["splits"])
            for dataset, m in per_dataset(s, split)
        ]
        names = list(cells(rows[-1][1])) + (["Lesions missed", "Normals outlined"] if task == "segmentation" else [])
        lines = [f"| {task} | Images | " + " | ".join(names) + " | CI over |", "|---|---|" + "---|" * len(names) + "---|"]
        for where, m in rows:
            ci = m.get("ci", "?").removeprefix("95% percentile bootstrap over ")
            values = cells(m)
            values = [values.get(n, "–") for n in names if n not in ("Lesions missed", "Normals outlined")]
            if task == "segmentation":
                d = m["detection"]
                values += [f"{d['missed_lesions']} of {d['lesion_images']}", f"{d['false_alarms']} of {d['lesion_free_images']}"]
            lines.append(f"| {where} | {m['images']} | " + " | ".join(values) + f" | {ci} |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def _tasks():
    return [(task, globals()[cells]) for task, cells in TASKS]


def calibration_table() -> str:
    """The released classifier's calibration per split and dataset, from benchmarks/release_calibration.py's results."""
    result = json.loads(CALIBRATION.read_text())
    lines = [
        "| Split | Dataset | Images | Accuracy | Mean confidence | ECE, raw | ECE, temperature-scaled | Brier score |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for split in SPLIT_NAMES:
        for name, m in (result.get(split) or {}).items():
            if not isinstance(m, dict):
                continue  # the figure's path
            dataset = "both" if name == "pooled" else DATASETS.get(name, name)
            cells = (m["accuracy"], m["mean_confidence"], m["ece_uncalibrated"], m["ece_10_bins"], m["brier"])
            lines.append(f"| {split} | {dataset} | {m['images']} | " + " | ".join(f"{v:.3f}" for v in cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="every split and metric (the model card's table)")
    parser.add_argument("--calibration", action="store_true", help="the model card's calibration table")
    args = parser.parse_args()
    print(calibration_table() if args.calibration else full_table() if args.full else short_table())


if __name__ == "__main__":
    main()
