"""``busai report``: one ``report.md`` and one self-contained ``report.html`` over runs.

Inputs are run folders, folders of run folders, results folders (``segmentation/`` and
``classification/`` result files, as ``python -m study.collect`` writes them), single result files
and tuning study folders. Nothing is recomputed except what is drawn: every number is read from the
inputs' metrics, so the report agrees with them by construction.

Sections: dataset audit, split tables, tuned hyper-parameters, weight source and training cost
per run, segmentation and classification tables with CIs, model comparison charts, confusion
matrices, calibration diagrams (where per-image probabilities were kept), training curves and
sample predictions. Given a :class:`~busai.report.Reference` (the study passes its paper's), its
published numbers are printed beside ours. ``report.md`` links its figures under ``figures/``;
``report.html`` embeds them as data URLs.
"""

from __future__ import annotations

import base64
import html
import io
import json
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from busai import CLASSES, SPLIT_NAMES
from busai.errors import ConfigError, DataError
from busai.outputs import atomic_write_text
from busai.report import (
    Reference,
    _ci,
    _epochs_cell,
    _row_labels,
    _short_source,
    classification_table,
    collect_run,
    comparison_rows,
    fmt_ci,
    read_fit,
    read_history,
    segmentation_table,
)
from busai.release import portable_weight_source
from busai.runs import CONFIG, METRICS, SCORES, WEIGHTS, read_metrics, read_run_config

NOTICE = "Research software, not a medical device: nothing here is validated for clinical use."
# Embedded figures are re-encoded no wider than this, so a report of dozens of runs stays small.
MAX_FIGURE_WIDTH = 900


@dataclass
class Entry:
    """One run in the report: its collected result, its figure files and any per-image predictions."""

    result: dict
    figures: dict[str, Path] = field(default_factory=dict)  # "samples_test" -> file
    predictions: dict[str, list[dict]] = field(default_factory=dict)  # split -> classification predictions


@dataclass
class Inputs:
    entries: list[Entry] = field(default_factory=list)
    studies: list[Path] = field(default_factory=list)
    split_files: list[Path] = field(default_factory=list)


# --------------------------------------------------------------------------- gathering inputs
def _is_result(data: dict) -> bool:
    return isinstance(data, dict) and "task" in data and "metrics" in data and "model" in data


def _run_entry(run_dir: Path) -> Entry:
    if (run_dir / METRICS).exists():
        result = collect_run(run_dir)
        metrics = read_metrics(run_dir)
    elif (run_dir / SCORES).is_file() and (run_dir / WEIGHTS).is_file():  # a release folder: its scores.json holds the compact scores
        config = read_run_config(run_dir)
        scores = _read(run_dir / SCORES) or {}
        result = {
            "name": f"release {run_dir.name}" if run_dir.parent.name == "release" else run_dir.name,
            "kind": "release",
            "task": config["model_spec"]["task"],
            "model": config["model_spec"],
            "weight_source": portable_weight_source(config.get("weight_source")),
            "train_config": config["train"],
            "fit": {},
            "machine": config.get("machine"),
            "device": config.get("device"),
            "commands": {"train": config.get("command")},
            "metrics": scores.get("splits") or {},
        }
        metrics = {}
    else:  # trained, not evaluated: training cost and curve only
        config = read_run_config(run_dir)
        fit = read_fit(run_dir)
        result = {
            "name": run_dir.name,
            "task": config["model_spec"]["task"],
            "model": config["model_spec"],
            "weight_source": config.get("weight_source"),
            "train_config": config["train"],
            "fit": fit,
            "machine": config.get("machine"),
            "device": config.get("device"),
            "commands": {"train": config.get("command")},
            "metrics": {},
            "history": read_history(run_dir),
        }
        metrics = {}
    figures = {p.stem: p for p in sorted(run_dir.glob("*.png")) if p.stem != "progress"}
    predictions = {split: m["predictions"] for split, m in metrics.items() if m.get("predictions")}
    return Entry(result, figures, predictions)


def _result_entry(path: Path, data: dict) -> Entry:
    prefix = f"{data['name']}_"
    figures = {p.stem.removeprefix(prefix): p for p in sorted((path.parent / "figures").glob(f"{prefix}*.png"))}
    return Entry(data, figures)


def _read(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError):
        return None


EVALUATED_TASKS = ("segmentation", "classification", "diagnosis")  # the folders `busai evaluate --out DIR` writes into


def _evaluation_entries(folder: Path) -> list[Entry]:
    """What ``busai evaluate MODEL --out DIR`` wrote: ``DIR/<task>/metrics.json`` with its figures
    (or one such task folder), one entry per task, its keys the scored sets (``NAME/all`` ...)."""
    from busai.report import compact_classification, compact_segmentation

    task_dirs = [folder] if (folder / METRICS).is_file() else _task_dirs(folder)
    entries = []
    for task_dir in task_dirs:
        metrics = _read(task_dir / METRICS)
        results = {k: m for k, m in (metrics or {}).items() if isinstance(m, dict) and "task" in m}
        if not results:
            raise DataError(f"{task_dir / METRICS}: holds no evaluate results; re-run `busai evaluate MODEL --data DATA --all --out {folder}`")
        first = next(iter(results.values()))
        compact = compact_segmentation if first["task"] == "segmentation" else compact_classification
        result = {
            "name": folder.name if task_dir != folder else task_dir.parent.name,
            "kind": "evaluation",
            "task": first["task"],
            "model": first["model"],
            "model_source": portable_weight_source(first.get("model_source")),
            "weight_source": portable_weight_source(first.get("weight_source")),
            "commands": {f"evaluate_{k}": m.get("command") for k, m in results.items()},
            "metrics": {k: {"images": m.get("images"), "skipped": len(m.get("skipped") or {}), **compact(m)} for k, m in results.items()},
        }
        figures = {p.stem: p for p in sorted(task_dir.glob("*.png"))}
        predictions = {k: m["predictions"] for k, m in results.items() if m.get("predictions")}
        entries.append(Entry(result, figures, predictions))
    return entries


def _task_dirs(folder: Path) -> list[Path]:
    """An evaluate --out folder's task folders (a run folder beside them has its config.json, and is no evaluation)."""
    return [folder / t for t in EVALUATED_TASKS if (folder / t / METRICS).is_file() and not (folder / t / CONFIG).exists()]


def _is_evaluation(path: Path) -> bool:
    if not path.is_dir() or (path / CONFIG).exists():
        return False
    return (path.name in EVALUATED_TASKS and (path / METRICS).is_file()) or bool(_task_dirs(path))


def gather(paths: list[str | Path]) -> Inputs:
    """Sort each path into runs, releases, evaluations, results, studies and split files; an
    unusable path is a DataError. ``release`` names the packaged release folder."""
    from busai.release import RELEASE_DIR

    inputs = Inputs()
    for raw in paths:
        path = Path(raw)
        if str(raw) == "release" and not path.exists():
            path = RELEASE_DIR
        if not path.exists():
            raise DataError(f"{path}: not found; pass run folders, results folders, result files or tuning study folders")
        found = len(inputs.entries) + len(inputs.studies) + len(inputs.split_files)
        if path.is_file():
            data = _read(path)
            if _is_result(data):
                inputs.entries.append(_result_entry(path, data))
            elif isinstance(data, dict) and str(data.get("format", "")).startswith("busai-splits"):
                inputs.split_files.append(path)
        elif (path / CONFIG).exists():
            inputs.entries.append(_run_entry(path))
        elif _is_evaluation(path):
            inputs.entries += _evaluation_entries(path)
        elif (path / "summary.json").exists():
            inputs.studies.append(path)
        else:  # a results folder or a folder of run folders
            for child in sorted(p for p in path.iterdir() if p.is_dir()):
                if (child / CONFIG).exists():
                    inputs.entries.append(_run_entry(child))
            for task in ("segmentation", "classification"):
                for file in sorted((path / task).glob("*.json")):
                    data = _read(file)
                    if _is_result(data):
                        inputs.entries.append(_result_entry(file, data))
            inputs.studies += sorted(p.parent for p in (path / "tuning").glob("*/summary.json"))
        if len(inputs.entries) + len(inputs.studies) + len(inputs.split_files) == found:
            raise DataError(
                f"{path}: holds no run folder, release, evaluate --out folder, result file, tuning study or split file; "
                "pass what `busai train`, `busai evaluate --out`, `python -m study.collect` or `busai tune` wrote"
            )
    return inputs


# --------------------------------------------------------------------------- sections
def _heading(title: str, key: str, reference: Reference | None) -> tuple:
    """A section heading, naming the reference's matching table or figure when there is one."""
    named = reference.headings.get(key) if reference else None
    return ("h2", f"{title} ({named})" if named else title)


def audit_section(audit: dict | None) -> list:
    blocks: list = [("h2", "Dataset audit")]
    if audit is None:
        return blocks + [("p", "No audit given: pass `--audit DATA_DIR` (or the JSON of `busai data audit DATA_DIR --json`).")]
    groups = audit.get("duplicate_groups", [])
    rows = [
        "| Item | Value |",
        "|---|---|",
        f"| Folder | `{audit.get('root', '?')}` |",
        f"| Images | {audit['images']} |",
        *[f"| {c} | {n} |" for c, n in audit["counts"].items()],  # the data's labels (BI-RADS ...), as the audit lists them
        f"| Mask files | {audit.get('masks', '?')} |",
        f"| Duplicate groups (exact or near, phash distance <= {audit.get('near_threshold', '?')}) | {len(groups)} ({sum(len(g) for g in groups)} images) |",
        f"| Exact duplicate groups | {len(audit.get('exact_duplicate_groups', []))} |",
        f"| Label conflicts (one image in two classes) | {len(audit.get('conflicts', []))} |",
    ]
    rows += [f"| Problem: {kind} | {n} |" for kind, n in audit.get("problem_counts", {}).items()]
    return blocks + [("table", "\n".join(rows))]


def load_audit(source: str | Path | None) -> dict | None:
    """An audit JSON file, or a dataset folder audited now."""
    if source is None:
        return None
    source = Path(source)
    if source.is_dir():
        from busai.data.audit import audit_dataset

        return audit_dataset(source).to_dict()
    data = _read(source)
    if not isinstance(data, dict) or "counts" not in data:
        raise DataError(f"{source}: not an audit; pass a dataset folder or the output of `busai data audit DIR --json`")
    return data


def split_section(split_files: list[Path], reference: Reference | None = None) -> list:
    blocks: list = [_heading("Data splits", "splits", reference)]
    if not split_files:
        return blocks + [("p", "No split file among the inputs or the runs' configs.")]
    # With a reference, each cell carries its value in parentheses: "ours (theirs)".
    theirs = f" ({reference.name.lower()})" if reference and reference.split_images else ""
    images = reference.split_images if theirs else {}
    class_counts = reference.split_class_counts if theirs else {}
    their_total = sum(images.values())

    def cell(ours, their) -> str:
        return f"{ours} ({their})" if theirs else f"{ours}"

    for path in split_files:
        data = json.loads(path.read_text())
        counts = data.get("counts") or {}
        present = [s for s in SPLIT_NAMES if s in counts]
        blocks.append(("p", f"`{path}`: made with `{data.get('command', '?')}`; duplicates: {data.get('duplicates', '?')}."))
        total = sum(sum(counts[s].values()) for s in present)
        one = [f"| Split | Images and masks{theirs} | Share{theirs} |", "|---|---|---|"]
        for s in present:
            n = sum(counts[s].values())
            share = cell(f"{n / total:.1%}", f"{images[s] / their_total:.1%}" if theirs else "")
            one.append(f"| {s} | {cell(n, images.get(s))} | {share} |")
        two = ["| Class | " + " | ".join(f"{s}{theirs}" for s in present) + " |", "|---|" + "---|" * len(present)]
        for c in dict.fromkeys(c for s in present for c in counts[s]):
            two.append(f"| {c} | " + " | ".join(cell(counts[s].get(c, 0), class_counts.get(s, {}).get(c)) for s in present) + " |")
        two.append("| total | " + " | ".join(cell(sum(counts[s].values()), images.get(s)) for s in present) + " |")
        blocks += [("h3", "Images per split"), ("table", "\n".join(one)), ("h3", "Images per class and split"), ("table", "\n".join(two))]
    return blocks


def tuning_section(studies: list[Path], reference: Reference | None = None) -> list:
    blocks: list = [_heading("Tuned hyper-parameters", "tuning", reference)]
    if reference and reference.tuned_settings:
        blocks += [("h3", f"{reference.name}: tuned settings"), *[("table", t) for t in reference.tuned_settings], ("h3", "Our studies")]
    if not studies:
        return blocks + [("p", "No tuning study among the inputs (`busai tune` writes one; pass its folder or a results folder holding `tuning/`).")]
    from busai.extras import MissingExtraError

    try:
        from busai.tune import best_params_table
    except MissingExtraError as exc:
        return blocks + [("p", str(exc))]
    blocks.append(("p", "Best trial of each study by its validation objective: " + ", ".join(f"`{p}`" for p in studies) + "."))
    return blocks + [("table", part) for part in best_params_table(studies).split("\n\n")]


def _minutes(result: dict) -> str:
    seconds = result.get("fit", {}).get("seconds")
    return f"{seconds / 60:.1f} min" if seconds else "–"


def _machine(result: dict) -> str:
    m = result.get("machine") or {}
    if m.get("cpu"):
        return f"{m['cpu']}, {m.get('threads', '?')} threads"
    return f"{result['device']} (model not recorded)" if result.get("device") else "not recorded"


def runs_section(entries: list[Entry]) -> list:
    rows = ["| Run | Task | Model | Weights | Epochs (stop) | Best epoch | Training time | Machine | Train command |", "|---|---|---|---|---|---|---|---|---|"]
    results = [e.result for e in entries if e.result.get("kind") != "evaluation"]  # an evaluate --out folder holds no training
    if not results:
        return []
    for r, label in zip(results, _row_labels(results)):
        command = (r.get("commands") or {}).get("train") or "–"
        rows.append(
            f"| {r['name']} | {r['task']} | {label} | {_short_source(r.get('weight_source'))} | {_epochs_cell(r)} | "
            f"{r.get('fit', {}).get('best_epoch', '–')} | {_minutes(r)} | {_machine(r)} | `{command}` |"
        )
    return [("h2", "Runs: weight source and training cost"), ("table", "\n".join(rows))]


def _segmentation_rows(results: list[dict]) -> list[dict]:
    rows = []
    for r, label in zip(results, _row_labels(results)):
        for split in SPLIT_NAMES:
            m = r["metrics"].get(split)
            if m:
                rows.append({"model": label, "split": split, "dice": m["dice"]["mean"], "iou": m["iou"]["mean"]})
    return rows


def score_sections(entries: list[Entry], figures: Path, reference: Reference | None = None) -> list:
    from busai.figures import model_comparison

    # The paper-shaped tables hold the train / val / test splits; other scored sets (NAME/split, all) are per dataset below.
    seg = [e.result for e in entries if e.result["task"] == "segmentation" and set(e.result["metrics"]) & set(SPLIT_NAMES)]
    cls = [e.result for e in entries if e.result["task"] == "classification" and set(e.result["metrics"]) & set(SPLIT_NAMES)]
    note = "Mean over images with a bootstrap 95% CI (†: the CI resamples duplicate groups)." + (f" {reference.note}" if reference and reference.note else "")
    blocks: list = []
    if seg:
        blocks += [
            _heading("Segmentation", "segmentation", reference),
            ("p", note + " Pixel accuracy and AUC are pooled over pixels."),
            ("table", segmentation_table(seg, reference)),
        ]
    if cls:
        blocks += [_heading("Classification", "classification", reference), ("p", note), ("table", classification_table(cls, reference))]
    charts = []
    if seg:
        charts.append(
            (
                "fig",
                Path(model_comparison(_segmentation_rows(seg), figures / "comparison_segmentation.png", metrics=("dice", "iou"))),
                "Segmentation: mean Dice and IoU per model and split",
            )
        )
    if cls:
        charts.append(
            (
                "fig",
                Path(model_comparison(comparison_rows(cls), figures / "comparison_classification.png")),
                "Classification: accuracy and macro-F1 per model and split",
            )
        )
    if charts:
        blocks += [("h2", "Model comparison"), *charts]
    return blocks


def _per_dataset_keys(result: dict) -> list[str]:
    """The scored sets of a result beyond the plain splits: ``NAME/split`` per dataset, ``all`` (--all)."""
    return [k for k in result["metrics"] if k.removesuffix("_tta") not in SPLIT_NAMES]


def dataset_section(entries: list[Entry]) -> list:
    """Scores per dataset with 95% CIs: external validation (``busai evaluate --all --out``) and the
    per-dataset rows of runs and releases scored on several datasets."""
    seg_rows = [
        "| Model | Weights | Scored on | Images | Dice (95% CI) | IoU (95% CI) | Dice over lesion scans | Lesions missed | Normals flagged |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    cls_rows = [
        "| Model | Weights | Scored on | Images | Accuracy (95% CI) | Macro F1 (95% CI) | Macro AUC (95% CI) | Malignant vs benign AUC | ECE |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    results = [e.result for e in entries]
    for r, label in zip(results, _row_labels(results)):
        if r["task"] == "diagnosis":  # the classifier fused with the segmenter: what predict answers
            label = f"{label} (diagnosis)"
        for key in _per_dataset_keys(r):
            m = r["metrics"][key]
            images = f"{m.get('images', '–')}" + (f" ({m['skipped']} skipped)" if m.get("skipped") else "")
            head = f"| {label} | {_short_source(r.get('weight_source'))} | {key} | {images} |"
            if r["task"] == "segmentation":
                d = m.get("detection")
                found = f"{d['missed_lesions']} of {d['lesion_images']} | {d['false_alarms']} of {d['lesion_free_images']}" if d else "– | –"
                seg_rows.append(f"{head} {_ci(m['dice'], 'mean')} | {_ci(m['iou'], 'mean')} | {fmt_ci(m.get('lesion_dice'))} | {found} |")
            else:
                ece = m.get("ece")
                cells = [fmt_ci(m.get(k)) for k in ("accuracy", "macro_f1", "macro_auc", "malignant_vs_benign_auc")]
                cls_rows.append(f"{head} {' | '.join(cells)} | {'–' if ece is None else f'{ece:.3f}'} |")
    blocks: list = []
    if len(seg_rows) > 2:
        blocks += [("h3", "Segmentation"), ("table", "\n".join(seg_rows))]
    if len(cls_rows) > 2:
        blocks += [("h3", "Classification"), ("table", "\n".join(cls_rows))]
    for e in entries:
        if e.result.get("kind") == "evaluation":
            for stem, path in e.figures.items():
                if not stem.startswith("reliability"):  # calibration diagrams are drawn in their own section
                    blocks.append(("fig", path, f"{e.result['name']} ({e.result['task']}): {stem.replace('_', ' ')}"))
    if not blocks:
        return []
    note = (
        "Each dataset scored on its own (`NAME/split`, or `NAME/all` for every image of a dataset the model never trained on, "
        "external validation); a key without a name pools the datasets. Bootstrap 95% CIs over images or their patient and duplicate groups."
    )
    return [("h2", "Scores per dataset (external validation)"), ("p", note), *blocks]


def confusion_section(entries: list[Entry], figures: Path, reference: Reference | None = None) -> list:
    from busai.figures import confusion_matrix

    blocks: list = []
    for e in entries:
        r = e.result
        for split in SPLIT_NAMES:
            matrix = r["metrics"].get(split, {}).get("confusion_matrix") if r["task"] == "classification" else None
            if matrix:
                classes = r["metrics"][split].get("classes") or CLASSES
                path = confusion_matrix(np.array(matrix), figures / f"{r['name']}_confusion_{split}.png", title=f"{r['name']}: {split}", classes=classes)
                blocks.append(("fig", Path(path), f"{r['name']}, {split}: rows true class, columns predicted"))
    return [_heading("Confusion matrices", "confusion", reference), *blocks] if blocks else []


def calibration_section(entries: list[Entry], figures: Path) -> list:
    from busai.calibration import N_BINS, expected_calibration_error, reliability_bins, reliability_figure

    blocks: list = []
    rows = [f"| Run | Split | Images | ECE ({N_BINS} bins) |", "|---|---|---|---|"]
    for e in entries:
        for split, predictions in e.predictions.items():
            classes = [key[2:] for key in predictions[0] if key.startswith("p_")]  # the model's classes, in output order
            probs = np.array([[p[f"p_{c}"] for c in classes] for p in predictions])
            labels = np.array([classes.index(p["label"]) for p in predictions])
            name = e.result["name"]
            ece = expected_calibration_error(probs, labels)
            path = reliability_figure(
                {f"{split} (ECE {ece:.3f})": reliability_bins(probs, labels)}, figures / f"{name}_calibration_{split}.png", title=f"{name}: {split}"
            )
            rows.append(f"| {name} | {split} | {len(predictions)} | {ece:.3f} |")
            blocks.append(("fig", Path(path), f"{name}, {split}: accuracy against confidence"))
        for key, path in e.figures.items():
            if key.startswith("calibration"):
                blocks.append(("fig", path, f"{e.result['name']}: {key}"))
    head: list = [("h2", "Calibration")]
    if not blocks:
        return head + [
            ("p", "No per-image probabilities in these inputs: run folders evaluated with `busai evaluate` keep them, collected result files do not.")
        ]
    return head + ([("table", "\n".join(rows))] if len(rows) > 2 else []) + blocks


def curve_section(entries: list[Entry], figures: Path) -> list:
    from busai.figures import training_curve

    blocks: list = []
    missing = []
    for e in entries:
        history = e.result.get("history")
        if e.result.get("kind") in ("evaluation", "release"):
            continue  # no training in an evaluate --out folder; a release folder keeps no history
        if history:
            path = training_curve(history, figures / f"{e.result['name']}_training.png", title=e.result["name"])
            blocks.append(("fig", Path(path), f"{e.result['name']}: loss and validation scores per epoch"))
        else:
            missing.append(e.result["name"])
    if missing:
        blocks.append(
            (
                "p",
                "No per-epoch history in the inputs for: "
                + ", ".join(f"`{n}`" for n in missing)
                + " (result files collected before busai kept it; the run folder's `history.csv` has it).",
            )
        )
    return [("h2", "Training curves"), *blocks] if blocks else []


def sample_section(entries: list[Entry], splits: tuple[str, ...], reference: Reference | None = None) -> list:
    blocks: list = []
    for e in entries:
        for split in splits:
            path = e.figures.get(f"samples_{split}")
            if path:
                blocks.append(("fig", path, f"{e.result['name']}, {split}: sample predictions"))
    return [_heading("Sample predictions", "samples", reference), *blocks] if blocks else []


# --------------------------------------------------------------------------- rendering
def _inline_html(text: str) -> str:
    parts = re.split(r"(`[^`]*`)", text)
    return "".join(f"<code>{html.escape(p[1:-1])}</code>" if p.startswith("`") and p.endswith("`") and len(p) > 1 else html.escape(p) for p in parts)


def _table_html(table: str) -> str:
    lines = [line for line in table.strip().splitlines() if line.strip()]
    if not lines or not lines[0].startswith("|"):
        return f"<p>{_inline_html(table)}</p>"
    rows = [[c.strip() for c in line.strip().strip("|").split("|")] for line in lines]
    head, body = rows[0], [r for r in rows[2:]]
    out = ["<table><thead><tr>", *[f"<th>{_inline_html(c)}</th>" for c in head], "</tr></thead><tbody>"]
    for r in body:
        out += ["<tr>", *[f"<td>{_inline_html(c)}</td>" for c in r], "</tr>"]
    return "".join(out + ["</tbody></table>"])


def _data_url(path: Path) -> str:
    """The figure as a data URL, re-encoded no wider than MAX_FIGURE_WIDTH to keep the page small."""
    from PIL import Image

    with Image.open(path) as image:
        if image.width <= MAX_FIGURE_WIDTH and path.stat().st_size < 150_000:
            return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode()
        image = image.convert("RGB")
        if image.width > MAX_FIGURE_WIDTH:
            image = image.resize((MAX_FIGURE_WIDTH, round(image.height * MAX_FIGURE_WIDTH / image.width)), Image.Resampling.LANCZOS)
        buffer = io.BytesIO()
        image.save(buffer, "JPEG", quality=80)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode()


STYLE = (
    "body{font-family:system-ui,sans-serif;max-width:1200px;margin:2em auto;padding:0 1em;color:#222}"
    "table{border-collapse:collapse;margin:1em 0;font-size:13px}td,th{border:1px solid #ccc;padding:3px 6px;text-align:left}"
    "th{background:#f3f3f3}code{background:#f5f5f5;padding:0 3px;font-size:12px}figure{margin:1em 0}img{max-width:100%}"
    ".notice{background:#fff4d6;border:1px solid #e0c060;padding:.6em 1em}"
)


def render_markdown(blocks: list, out: Path) -> str:
    lines = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2", "h3"):
            lines += ["#" * int(kind[1]) + " " + rest[0], ""]
        elif kind in ("p", "table"):
            lines += [rest[0], ""]
        elif kind == "fig":
            lines += [f"![{rest[1]}]({os.path.relpath(rest[0], out)})", ""]
    return "\n".join(lines).rstrip() + "\n"


def render_html(blocks: list, title: str) -> str:
    body = []
    for kind, *rest in blocks:
        if kind in ("h1", "h2", "h3"):
            body.append(f"<{kind}>{_inline_html(rest[0])}</{kind}>")
        elif kind == "p":
            cls = ' class="notice"' if rest[0] == NOTICE else ""
            body.append(f"<p{cls}>{_inline_html(rest[0])}</p>")
        elif kind == "table":
            body.append(_table_html(rest[0]))
        elif kind == "fig":
            body.append(f'<figure><img src="{_data_url(rest[0])}" alt="{html.escape(rest[1])}"><figcaption>{_inline_html(rest[1])}</figcaption></figure>')
    return (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>'
        f"<style>{STYLE}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )


def _split_files(inputs: Inputs, extra: list[str | Path]) -> list[Path]:
    """The split files given, plus those the runs name (their own ``splits.json`` or the train config's)."""
    found = [Path(p) for p in extra] + inputs.split_files
    for e in inputs.entries:
        path = (e.result.get("train_config") or {}).get("splits")
        if path and Path(path).exists():
            found.append(Path(path))
    unique, seen = [], set()
    for path in found:
        if not path.exists():
            raise DataError(f"{path}: split file not found; pass the file given to `busai train --splits`")
        key = path.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(path)
    return unique


def write_report(
    paths: list[str | Path],
    out: str | Path,
    *,
    audit: str | Path | None = None,
    splits: list[str | Path] = (),
    title: str = "busai report",
    command: str | None = None,
    sample_splits: tuple[str, ...] = ("test",),
    reference: Reference | None = None,
) -> dict[str, Path]:
    """Write ``report.md``, ``report.html`` and ``figures/`` into ``out``; returns their paths.

    ``reference``: published numbers to print beside ours (``study/paper.py`` has the paper's)."""
    out = Path(out)
    if out.is_file() or (out.is_dir() and any(out.iterdir()) and not (out / "report.md").exists()):
        # Rewriting a previous report is fine; filling a folder of other files (a run, a checkout) is not.
        raise ConfigError(f"--out {out}: exists and is not a busai report folder; choose a new or empty folder")
    inputs = gather(paths)
    if not inputs.entries and not inputs.studies:
        raise DataError("nothing to report: the inputs hold no run or tuning study")
    unknown = [s for s in sample_splits if s not in SPLIT_NAMES]
    if unknown:
        raise ConfigError(f"--sample-splits {' '.join(unknown)}: unknown; choose from {', '.join(SPLIT_NAMES)}")
    figures = out / "figures"
    figures.mkdir(parents=True, exist_ok=True)
    entries = sorted(inputs.entries, key=lambda e: (e.result["task"] != "segmentation", e.result["name"]))
    blocks: list = [("h1", title), ("p", NOTICE)]
    if command:
        blocks.append(("p", f"Written by `{command}` from " + ", ".join(f"`{p}`" for p in paths) + "."))
    blocks += audit_section(load_audit(audit))
    blocks += split_section(_split_files(inputs, list(splits)), reference)
    blocks += tuning_section(inputs.studies, reference)
    if entries:
        blocks += runs_section(entries)
        blocks += score_sections(entries, figures, reference)
        blocks += dataset_section(entries)
        blocks += confusion_section(entries, figures, reference)
        blocks += calibration_section(entries, figures)
        blocks += curve_section(entries, figures)
        blocks += sample_section(entries, sample_splits, reference)
    md, page = out / "report.md", out / "report.html"
    atomic_write_text(md, render_markdown(blocks, out))
    atomic_write_text(page, render_html(blocks, title))
    return {"markdown": md, "html": page, "figures": figures}


__all__ = ["NOTICE", "Entry", "Inputs", "gather", "load_audit", "render_html", "render_markdown", "write_report"]
