"""The cross-dataset yardstick: how each pair of models does on BUSI and on BUS-UCLM.

    python benchmarks/cross_dataset.py --busi ../shared/data/Dataset_BUSI_with_GT --uclm ../shared/data/BUS-UCLM
    python benchmarks/cross_dataset.py --busi ... --uclm ... --split val     # the selection table

``--split val`` scores every row on the validation images of both datasets, each and pooled: the
table candidates are chosen by (results/cross_dataset_val.*).

Rows are model pairs (segmenter, classifier), each scored with ``busai evaluate`` on the test
split of ``splits/busi-uclm.json`` of every dataset it trained on and on **all** of a dataset it
never saw (external validation). A row whose run folders do not exist yet is listed as not
trained. Writes ``results/cross_dataset.json`` (every metric with its 95% CI over duplicate /
patient groups) and ``results/cross_dataset.md`` (the table). Test splits are scored here and
never used to choose anything: the release is chosen on pooled validation (see docs).
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SPLITS = "splits/busi-uclm.json"
# name, trained on, segmenter, classifier (None: a segmenter-only row), what each is scored on in
# the test table ((dataset, "test" | "all"); None: a candidate of the validation table only, never scored on test).
BOTH_TESTS = [("busi", "test"), ("uclm", "test")]
# The release before issue 19 (BUSI only) is read from runs/release-v1, extracted from git with
#   mkdir -p runs/release-v1 && git archive 69288d7 src/busai/release | tar -x -C runs/release-v1 --strip-components=3
ROWS = [
    ("previous release (BUSI train)", "BUSI", "runs/release-v1/segmentation", "runs/release-v1/classification", [("busi", "test"), ("uclm", "all")]),
    ("BUS-UCLM train", "BUS-UCLM", "runs/xd/seg-uclm-gray", "runs/xd/cls-uclm-gray", [("uclm", "test"), ("busi", "all")]),
    # The scanner-shift recipe on BUSI alone: scored on the scanner it never saw only.
    ("BUSI train, grey + scanner aug", "BUSI", "runs/xd/seg-busi-scanner", "runs/xd/cls-busi-scanner", [("uclm", "all")]),
    # Issue 27's reference recipe on BUSI alone, from ImageNet (scripts/reproduce_seg27.sh ref-busi
    # cls-ref-busi): the row the release-versus-reference rule of docs/cross-dataset.md reads.
    ("BUSI train, reference recipe", "BUSI", "runs/seg27/ref-busi", "runs/seg27/cls-ref-busi", [("uclm", "all")]),
    # ref-busi started from the BUSI-only release instead of ImageNet (the start, one change): a segmenter-only row.
    ("BUSI train, reference recipe from the BUSI-only release", "BUSI", "runs/seg27/ref-busi-v1init", None, [("uclm", "all")]),
    # Issue 27's levers on the release's recipe, judged on the scanner it never saw (segmenter-only rows),
    # against its segmenter re-trained on this machine (the row above's run folder had been lost).
    ("BUSI train, grey + scanner aug, segmenter re-trained", "BUSI", "runs/xd/seg-busi-scanner", None, [("uclm", "all")]),
    ("BUSI train, grey + scanner aug, weight EMA", "BUSI", "runs/seg27/scanner-busi-ema", None, [("uclm", "all")]),
    ("BUSI train, grey + scanner aug, 5 epochs", "BUSI", "runs/seg27/scanner-busi-5ep", None, [("uclm", "all")]),
    # What drives the false outlines (issue 28's normals called lesion): two seeds per lever.
    ("BUSI train, grey + scanner aug, seed 1", "BUSI", "runs/seg27/scanner-busi-s1", None, [("uclm", "all")]),
    ("BUSI train, grey + scanner aug, hard examples", "BUSI", "runs/seg27/scanner-busi-hard", None, [("uclm", "all")]),
    ("BUSI train, grey + scanner aug, hard examples, seed 1", "BUSI", "runs/seg27/scanner-busi-hard-s1", None, [("uclm", "all")]),
    ("BUSI train, grey + scanner aug, top-k presence loss", "BUSI", "runs/seg27/scanner-busi-topk", None, [("uclm", "all")]),
    ("BUSI train, grey + scanner aug, top-k presence loss, seed 1", "BUSI", "runs/seg27/scanner-busi-topk-s1", None, [("uclm", "all")]),
    ("release: both, grey, strong aug", "BUSI + BUS-UCLM", "release", "release", BOTH_TESTS),
    ("both, multitask network", "BUSI + BUS-UCLM", "runs/xd/mt-both-gray", "runs/xd/mt-both-gray", None),
    ("both, classifier with scanner aug", "BUSI + BUS-UCLM", "runs/xd/seg-both-gray", "runs/xd/cls-both-scanner", None),
]


def _model_dirs(seg: str, cls: str) -> dict[str, str] | None:
    from busai.release import release_dir

    models = {task: source for task, source in (("segmentation", seg), ("classification", cls)) if source is not None}
    for task, source in models.items():
        folder = release_dir(task) if source == "release" else ROOT / source
        # A run counts once its training has finished (fit.json): its best checkpoint exists from the first epoch on.
        if not ((folder / "model.safetensors").is_file() or (folder / "fit.json").is_file()):
            return None
        models[task] = str(folder)
    return models


def score_row(name: str, models: dict[str, str], evaluations, data: dict[str, str], out: Path, n_boot: int) -> dict:
    from busai.evaluation import evaluate_model

    row = {"row": name, "models": models, "scores": {}}
    if evaluations == "val":
        both = [f"{d}={data[d]}" for d in ("busi", "uclm")]
        by_task = {}
        for model in dict.fromkeys(models.values()):  # a multitask network is scored once, for both tasks
            results = evaluate_model(model, both, out=out / _slug(name), splits_file=ROOT / SPLITS, split_names=["val"], n_boot=n_boot, figures=False)
            by_task.update({task: results[task] for task, m in models.items() if m == model})
        for key in ("busi/val", "uclm/val", "val"):
            row["scores"][key if "/" in key else "pooled/val"] = {task: _compact(results[key]) for task, results in by_task.items()}
        return row
    for dataset, selection in evaluations:
        key = f"{dataset}/{selection}"
        entry = {}
        for task, model in models.items():
            kwargs = {"all_images": True} if selection == "all" else {"splits_file": ROOT / SPLITS, "split_names": [selection]}
            result = evaluate_model(model, [f"{dataset}={data[dataset]}"], out=out / _slug(name), n_boot=n_boot, figures=False, **kwargs)
            entry[task] = _compact(result[task][key])
        row["scores"][key] = entry
    return row


def _slug(name: str) -> str:
    return "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")


def _compact(result: dict) -> dict:
    if result["task"] == "segmentation":
        d = result["detection"]
        return {
            "images": result["images"],
            "dice": result["dice"]["mean"],
            "iou": result["iou"]["mean"],
            "lesion_dice": result["lesion_dice"],
            "missed_lesions": d["missed_lesions"],
            "lesion_images": d["lesion_images"],
            "false_alarms": d["false_alarms"],
            "lesion_free_images": d["lesion_free_images"],
            "skipped": len(result.get("skipped") or {}),
        }
    cm = result["confusion_matrix"]
    lesion_called_normal = cm[1][0] + cm[2][0]
    return {
        "images": result["images"],
        "accuracy": result["accuracy"],
        "macro_f1": result["macro_f1"],
        "malignant_vs_benign_auc": result["malignant_vs_benign_auc"],
        "normal_recall": result["per_class"]["normal"]["recall"],
        "lesion_called_normal": lesion_called_normal,
        "lesion_images": sum(cm[1]) + sum(cm[2]),
        "skipped": len(result.get("skipped") or {}),
    }


def _ci(m: dict | None) -> str:
    if not m or m.get("value") is None:
        return "–"
    if m.get("ci_low") is None:
        return f"{m['value']:.2f}"
    return f"{m['value']:.2f} ({m['ci_low']:.2f}–{m['ci_high']:.2f})"


def render(rows: list[dict], command: str) -> str:
    head = (
        "| Models (trained on) | Scored on | Dice, all images | Dice, lesion images | IoU | Lesions missed | Normals flagged | "
        "Accuracy | Macro-F1 | Malignant-vs-benign AUC | Normal recall | Lesion scans called normal |"
    )
    lines = [head, "|" + "---|" * 12]
    for row in rows:
        if "scores" not in row:
            lines.append(f"| {row['row']} ({row['trained_on']}) | not trained yet |" + " |" * 10)
            continue
        for key, entry in row["scores"].items():
            s, c = entry["segmentation"], entry.get("classification")
            where = {"test": "test split", "all": "all images (never trained on)", "val": "validation"}[key.split("/")[1]]
            dataset = {"busi": "BUSI", "uclm": "BUS-UCLM", "pooled": "both"}[key.split("/")[0]]
            classifier = (
                f"{_ci(c['accuracy'])} | {_ci(c['macro_f1'])} | {_ci(c['malignant_vs_benign_auc'])} | {c['normal_recall']:.2f} | "
                f"{c['lesion_called_normal']} of {c['lesion_images']} |"
                if c
                else "–" + " | –" * 4 + " |"  # a segmenter-only row
            )
            lines.append(
                f"| {row['row']} ({row['trained_on']}) | {dataset} {where}, {s['images']} images | {_ci(s['dice'])} | {_ci(s['lesion_dice'])} | "
                f"{_ci(s['iou'])} | {s['missed_lesions']} of {s['lesion_images']} | {s['false_alarms']} of {s['lesion_free_images']} | " + classifier
            )
    return (
        f"Command: `{command}`\n\nMean over images with 95% CIs over duplicate / patient groups; BUS-UCLM's 13 scans whose masks are "
        "larger than their images are left out of the 'all images' rows.\n\n" + "\n".join(lines) + "\n"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--busi", required=True)
    parser.add_argument("--uclm", required=True)
    parser.add_argument("--out", default=str(ROOT / "results" / "cross_dataset.json"))
    parser.add_argument("--work", default=str(ROOT / "runs" / "cross_dataset"), help="where per-row metrics and figures go")
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--split", choices=["test", "val"], default="test", help="val: the selection table, both datasets' validation images")
    parser.add_argument(
        "--rows", nargs="+", default=None, metavar="ROW", help="score only these rows (by name); the others keep their scores from the existing output file"
    )
    args = parser.parse_args(argv)
    if args.split == "val" and args.out == parser.get_default("out"):
        args.out = str(ROOT / "results" / "cross_dataset_val.json")
    given = argv if argv is not None else sys.argv[1:]
    # The command that re-scores every row: --rows only saves re-scoring the unchanged ones.
    keep = [a for i, a in enumerate(given) if a != "--rows" and not (args.rows and a in args.rows and "--rows" in given[:i])]
    command = shlex.join(["python", "benchmarks/cross_dataset.py", *keep])
    data = {"busi": args.busi, "uclm": args.uclm}
    previous = {}
    if args.rows and Path(args.out).is_file():
        previous = {row["row"]: row for row in json.loads(Path(args.out).read_text())["rows"]}
    rows = []
    for name, trained_on, seg, cls, evaluations in ROWS:
        if args.split == "test" and evaluations is None:
            continue  # a validation candidate not (yet) released: its test scores are not looked at
        if args.rows and name not in args.rows and name in previous:
            rows.append(previous[name])
            continue
        models = _model_dirs(seg, cls)
        if models is None:
            rows.append({"row": name, "trained_on": trained_on, "models": {"segmentation": seg, "classification": cls}})
            continue
        print(f"scoring {name} ...", file=sys.stderr)
        chosen = "val" if args.split == "val" else evaluations
        rows.append({**score_row(name, models, chosen, data, Path(args.work) / args.split, args.n_boot), "trained_on": trained_on})
    out = Path(args.out)
    payload = {"command": command, "splits": SPLITS, "rows": rows}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(payload, indent=1, default=str) + "\n")
    tmp.replace(out)
    md = out.with_suffix(".md")
    title = "Cross-dataset yardstick" if args.split == "test" else "Cross-dataset candidates on validation (the selection table)"
    md.write_text(f"# {title}\n\n" + render(rows, command))
    print(md.read_text())
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
