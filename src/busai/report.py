"""Result summaries and score tables from run folders: nothing is recomputed, everything is read back.

``collect_run`` turns an evaluated run folder into one result dict (with the exact commands that
produced it); ``segmentation_table`` / ``classification_table`` render Markdown score tables for
``busai report`` (:mod:`busai.report_page`), with a :class:`Reference`'s published numbers beside
ours when one is given (the study's paper: ``study/paper.py``).
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

from busai import CLASSES, SPLIT_NAMES
from busai.errors import CheckpointError, read_json
from busai.runs import BEST_CHECKPOINT, FIT, HISTORY, METRICS, model_label, read_metrics, read_run_config

SEG_METRICS = ("pixel_accuracy", "dice", "iou", "auc")


@dataclass(frozen=True)
class Reference:
    """Published numbers printed beside ours in a report (the study passes its paper's, ``study/paper.py``).

    ``busai report`` has none; with one, the score tables gain a column, the split tables the
    reference's counts in parentheses, and section headings name the reference's tables.
    """

    name: str  # "Paper": the extra columns' heading
    segmentation: dict = field(default_factory=dict)  # (encoder, decoder) -> {split: (pixel accuracy, Dice, IoU, AUC)}
    classification: dict = field(default_factory=dict)  # model -> {split: values named by classification_columns}
    classification_columns: str = ""  # what each classification tuple holds, e.g. "F1 / acc / macro F1"
    split_images: dict = field(default_factory=dict)  # split -> images
    split_class_counts: dict = field(default_factory=dict)  # split -> class -> images
    headings: dict = field(default_factory=dict)  # report section key -> the reference's table or figure it matches
    note: str = ""  # added to the score tables' note
    tuned_settings: tuple = ()  # Markdown tables of the reference's tuned settings, shown before our tuning studies


def compact_segmentation(metrics: dict) -> dict:
    """{metric: {"mean": value, "pooled": value, "mean_ci": [lo, hi]}} from an evaluate result, plus
    its CI method (``ci``) and lesion ``detection`` counts where the evaluation recorded them."""
    out = {k: metrics[k] for k in ("ci", "detection", "lesion_dice", "datasets") if k in metrics}
    for name in SEG_METRICS:
        m = metrics.get(name, {})
        mean, pooled = m.get("mean") or {}, m.get("pooled") or {}
        out[name] = {
            "mean": mean.get("value"),
            "mean_ci": [mean.get("ci_low"), mean.get("ci_high")],
            "pooled": pooled.get("value"),
            "pooled_ci": [pooled.get("ci_low"), pooled.get("ci_high")],
        }
    return out


def compact_classification(metrics: dict) -> dict:
    keep = (
        "accuracy",
        "macro_f1",
        "macro_precision",
        "macro_recall",
        "macro_auc",
        "malignant_vs_benign_auc",
        "ece",
        "temperature",
        "per_class",
        "confusion_matrix",
        "ci",
        "datasets",
    )
    return {k: metrics[k] for k in keep if k in metrics}


def collect_run(run_dir: str | Path, name: str | None = None) -> dict:
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    metrics_path = run_dir / METRICS
    if not metrics_path.exists():
        raise CheckpointError(f"{metrics_path}: missing; run `busai evaluate {run_dir} --split train val test` first")
    metrics = read_metrics(run_dir)
    fit = read_fit(run_dir)
    history = read_history(run_dir)
    task = config["model_spec"]["task"]
    compact = compact_segmentation if task == "segmentation" else compact_classification
    return {
        "name": name or run_dir.name,
        "task": task,
        "model": config["model_spec"],
        "weight_source": config.get("weight_source"),
        "train_config": config["train"],
        "image_size": config["preprocessing"]["image_size"],
        "fit": fit,
        "device": config.get("device"),
        # The CPU and the path it took (bf16 autocast or not): epochs per budget depend on both.
        "machine": config.get("machine"),
        "autocast": config.get("autocast"),
        "versions": config.get("versions"),
        "commands": {
            "train": config.get("command"),
            **({"resume": config["resume_commands"]} if config.get("resume_commands") else {}),
            **{f"evaluate_{s}": m.get("command") for s, m in metrics.items()},
        },
        "metrics": {split: {"images": m.get("images"), **compact(m)} for split, m in metrics.items()},
        # Loss and validation score per epoch, for the report's training curves.
        **({"history": history} if history else {}),
    }


def read_fit(run_dir: str | Path) -> dict:
    """``fit.json`` of a run folder ({} when absent); a damaged one is one error line."""
    path = Path(run_dir) / FIT
    if not path.exists():
        return {}
    fix = "repair it, or move it away (the report then lacks the run's stop reason and training time)"
    fit = read_json(path, error=CheckpointError, missing="missing", fix=fix)
    if not isinstance(fit, dict):
        raise CheckpointError(f"{path}: holds a JSON {type(fit).__name__}, not the object `busai train` writes; {fix}")
    return fit


def read_history(run_dir: str | Path) -> list[dict]:
    """``history.csv`` of a run folder as rows of numbers (empty when absent); a damaged one (not
    text, a short or long row, an epoch or loss that is not a number) is one error line."""
    path = Path(run_dir) / HISTORY
    if not path.exists():
        return []
    fix = "repair it, or move it away (the report then lacks the run's training curve)"
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            raw = list(reader)
            header = reader.fieldnames or []
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CheckpointError(f"{path}: cannot be read ({exc.__class__.__name__}); {fix}") from None
    if not {"epoch", "val_loss"} <= set(header):
        raise CheckpointError(f"{path}: has no epoch and val_loss columns (header: {','.join(header)[:80]}); {fix}")
    rows = []
    for line, row in enumerate(raw, start=2):
        if None in row or None in row.values():
            raise CheckpointError(f"{path}: row {line} has {'more' if None in row else 'fewer'} fields than the header; {fix}")
        parsed = {k: _number(v) for k, v in row.items()}
        if not isinstance(parsed["epoch"], int) or isinstance(parsed["val_loss"], (str, bool)):
            raise CheckpointError(f"{path}: row {line}: epoch {row['epoch']!r} or val_loss {row['val_loss']!r} is not a number; {fix}")
        rows.append(parsed)
    return rows


def _number(text: str):
    if text in ("True", "False"):
        return text == "True"
    try:
        return int(text)
    except ValueError:
        try:
            return float(text)
        except ValueError:
            return text


def fmt_value(x, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _ci(entry: dict, key: str) -> str:
    lo, hi = entry.get(f"{key}_ci", [None, None])
    return f"{fmt_value(entry[key])} ({fmt_value(lo)}–{fmt_value(hi)})" if lo is not None else fmt_value(entry.get(key))


def _short_source(source: str | None) -> str:
    if not source:
        return "?"
    if source.startswith("segmentation encoder"):
        return "BUSI seg. encoder"  # a classifier started from a segmentation run's encoder (train split only)
    if source.startswith("file: "):
        # A run's checkpoint is named by its run, the folder's name (training continued from it).
        path = Path(source.removeprefix("file: ").split(" (")[0])
        if path.parent.parent.name == "release":
            return "release weights"
        # The file's name, never its absolute path: that names the machine the run was made on.
        return f"{path.parent.name} weights" if path.name == BEST_CHECKPOINT else f"file: {path.name}"
    return "ImageNet" if source.startswith("imagenet") else "random init" if source.startswith("random") else source


def _epochs_cell(result: dict) -> str:
    """Epochs run and why training stopped, with the wall-clock budget when that was the reason."""
    fit = result.get("fit", {})
    reason = fit.get("stop_reason", "?")
    minutes = result.get("train_config", {}).get("max_minutes")
    if reason == "time_budget" and minutes:
        reason = f"{minutes:g}-min budget"
    return f"{fit.get('epochs_run', '?')} ({reason.replace('_', ' ')})"


def _row_labels(results: list[dict]) -> list[str]:
    """Each result's model label, plus its run name where two results share a model (e.g. another loss or start)."""
    labels = [model_label(r["model"]) for r in results]
    return [f"{label} ({r['name']})" if labels.count(label) > 1 else label for label, r in zip(labels, results)]


GROUP_CI_MARK = "†"  # the split's CIs resample groups: duplicates and, where known, patients (docs/results.md explains)


def _run_rows(result: dict, name: str, theirs: dict | None, cells) -> list[str]:
    """One table row per evaluated split of a run; name, weight source and epoch cap on its first row only;
    the reference's values last when ``theirs`` is not None."""
    head = (name, _short_source(result.get("weight_source")), _epochs_cell(result))
    present = [s for s in SPLIT_NAMES if result["metrics"].get(s)]
    rows = []
    for i, split in enumerate(present):
        metrics = result["metrics"][split]
        shown = head if i == 0 else ("", "", "")
        mark = (
            GROUP_CI_MARK if re.search(r"over \d+ (duplicate )?groups", metrics.get("ci") or "") else ""
        )  # results written before "groups" said "duplicate groups"
        row = f"| {' | '.join(shown)} | {split}{mark} | {cells(metrics)} |"
        if theirs is not None:
            row += " " + (" / ".join(f"{v:.2f}" for v in theirs[split]) if split in theirs else "–") + " |"
        rows.append(row)
    return rows


def _header(columns: list[str], reference: Reference | None, theirs: str) -> list[str]:
    if reference is not None:
        columns = columns + [f"{reference.name}: {theirs}"]
    return ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]


def segmentation_table(results: list[dict], reference: Reference | None = None) -> str:
    """Markdown score table: Dice/IoU mean over images (95% CI), pixel accuracy and AUC pooled; the reference's values last."""
    columns = ["Encoder:Decoder", "Weights", "Epochs (stop)", "Split", "Pixel acc.", "Dice", "IoU", "AUC", "Lesions missed", "Normals flagged"]
    lines = _header(columns, reference, "acc / Dice / IoU / AUC")

    def cells(m: dict) -> str:
        d = m.get("detection")  # absent from results evaluated before it was recorded
        detection = f"{d['missed_lesions']} of {d['lesion_images']} | {d['false_alarms']} of {d['lesion_free_images']}" if d else "– | –"
        return f"{fmt_value(m['pixel_accuracy']['pooled'], 3)} | {_ci(m['dice'], 'mean')} | {_ci(m['iou'], 'mean')} | {fmt_value(m['auc']['pooled'])} | {detection}"

    ordered = sorted(results, key=lambda r: (r["model"].get("encoder", ""), r["model"]["name"], r["name"]))
    for r, label in zip(ordered, _row_labels(ordered)):
        theirs = None if reference is None else reference.segmentation.get((r["model"].get("encoder"), r["model"]["name"]), {})
        lines += _run_rows(r, label, theirs, cells)
    return "\n".join(lines)


def classification_table(results: list[dict], reference: Reference | None = None) -> str:
    """Markdown score table with 95% CIs; the reference's values last."""
    columns = ["Model", "Weights", "Epochs (stop)", "Split", "Accuracy", "Macro F1", "Macro AUC", "Recall N / B / M"]
    lines = _header(columns, reference, reference.classification_columns if reference else "")

    def cells(m: dict) -> str:
        classes = m.get("classes") or CLASSES
        recalls = " / ".join(fmt_value(m["per_class"][c]["recall"]) for c in classes) if "per_class" in m else "–"
        if tuple(classes) != CLASSES and "per_class" in m:  # another label set: name the classes the recalls are of
            recalls += f" ({' / '.join(classes)})"
        return f"{fmt_ci(m.get('accuracy'))} | {fmt_ci(m.get('macro_f1'))} | {fmt_ci(m.get('macro_auc'))} | {recalls}"

    ordered = sorted(results, key=lambda r: (r["model"]["name"], r["name"]))
    for r, label in zip(ordered, _row_labels(ordered)):
        theirs = None if reference is None else reference.classification.get(r["model"]["name"], {})
        lines += _run_rows(r, label, theirs, cells)
    return "\n".join(lines)


def fmt_ci(entry) -> str:
    if isinstance(entry, dict):
        lo, hi = entry.get("ci_low"), entry.get("ci_high")
        return f"{fmt_value(entry.get('value'))} ({fmt_value(lo)}–{fmt_value(hi)})" if lo is not None else fmt_value(entry.get("value"))
    return fmt_value(entry)


def comparison_rows(results: list[dict], metrics=("accuracy", "macro_f1")) -> list[dict]:
    """One row per (model, split) with headline values, for the model comparison chart."""
    rows = []
    for r, label in zip(results, _row_labels(results)):
        for split, m in r["metrics"].items():
            if split not in SPLIT_NAMES:  # e.g. test_tta
                continue
            values = {k: (m[k].get("value") if isinstance(m.get(k), dict) else m.get(k)) for k in metrics}
            rows.append({"model": label, "split": split, **values})
    return rows
