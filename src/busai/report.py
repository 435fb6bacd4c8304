"""Tables and result files from run folders: nothing is recomputed, everything is read back.

``collect_run`` turns an evaluated run folder into one ``results/<task>/<name>.json`` with the
exact commands that produced it; ``segmentation_table`` / ``classification_table`` render the
paper-shaped Markdown tables (ours beside the paper's) used by ``busai report``
(:mod:`busai.study_report`) and by ``benchmarks/tables.py`` for docs/results.md.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

from busai import CLASSES, SPLIT_NAMES, paper
from busai.errors import CheckpointError, read_json
from busai.engine import BEST_CHECKPOINT
from busai.runs import model_label, read_metrics, read_run_config, write_json

SEG_METRICS = ("pixel_accuracy", "dice", "iou", "auc")


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
    metrics_path = run_dir / "metrics.json"
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
    path = Path(run_dir) / "fit.json"
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
    path = Path(run_dir) / "history.csv"
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


def write_results(run_dirs: list[str | Path], out_dir: str | Path) -> list[Path]:
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    written = []
    for run_dir in run_dirs:
        summary = collect_run(run_dir)
        path = out_dir / f"{summary['name']}.json"
        write_json(path, summary)
        written.append(path)
    return written


def load_results(folder: str | Path) -> list[dict]:
    return [json.loads(p.read_text()) for p in sorted(Path(folder).glob("*.json"))]


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
        return f"{path.parent.name} weights" if path.name == BEST_CHECKPOINT else f"file: {path}"
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


GROUP_CI_MARK = "†"  # the split's CIs resample duplicate groups (docs/results.md explains)


def _run_rows(result: dict, name: str, theirs: dict, cells) -> list[str]:
    """One table row per evaluated split of a run; name, weight source and epoch cap on its first row only."""
    head = (name, _short_source(result.get("weight_source")), _epochs_cell(result))
    present = [s for s in SPLIT_NAMES if result["metrics"].get(s)]
    rows = []
    for i, split in enumerate(present):
        metrics = result["metrics"][split]
        paper_cell = " / ".join(f"{v:.2f}" for v in theirs[split]) if split in theirs else "–"
        shown = head if i == 0 else ("", "", "")
        mark = GROUP_CI_MARK if "duplicate groups" in (metrics.get("ci") or "") else ""
        rows.append(f"| {' | '.join(shown)} | {split}{mark} | {cells(metrics)} | {paper_cell} |")
    return rows


def segmentation_table(results: list[dict]) -> str:
    """Markdown shaped like the paper's Table 4; ours: Dice/IoU mean over images (95% CI), pixel accuracy and AUC pooled."""
    lines = [
        "| Encoder:Decoder | Weights | Epochs (stop) | Split | Pixel acc. | Dice | IoU | AUC | Lesions missed | Normals flagged | Paper: acc / Dice / IoU / AUC |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]

    def cells(m: dict) -> str:
        d = m.get("detection")  # absent from results evaluated before it was recorded
        detection = f"{d['missed_lesions']} of {d['lesion_images']} | {d['false_alarms']} of {d['lesion_free_images']}" if d else "– | –"
        return f"{fmt_value(m['pixel_accuracy']['pooled'], 3)} | {_ci(m['dice'], 'mean')} | {_ci(m['iou'], 'mean')} | {fmt_value(m['auc']['pooled'])} | {detection}"

    ordered = sorted(results, key=lambda r: (r["model"].get("encoder", ""), r["model"]["name"], r["name"]))
    for r, label in zip(ordered, _row_labels(ordered)):
        key = (r["model"].get("encoder"), r["model"]["name"])
        lines += _run_rows(r, label, paper.SEGMENTATION_SCORES.get(key, {}), cells)
    return "\n".join(lines)


def classification_table(results: list[dict]) -> str:
    """Markdown shaped like the paper's Table 6 headline columns, with 95% CIs and the paper's values."""
    lines = [
        "| Model | Weights | Epochs (stop) | Split | Accuracy | Macro F1 | Macro AUC | Recall N / B / M | Paper: F1 / acc / macro F1 |",
        "|---|---|---|---|---|---|---|---|---|",
    ]

    def cells(m: dict) -> str:
        recalls = " / ".join(fmt_value(m["per_class"][c]["recall"]) for c in CLASSES) if "per_class" in m else "–"
        return f"{fmt_ci(m.get('accuracy'))} | {fmt_ci(m.get('macro_f1'))} | {fmt_ci(m.get('macro_auc'))} | {recalls}"

    ordered = sorted(results, key=lambda r: (r["model"]["name"], r["name"]))
    for r, label in zip(ordered, _row_labels(ordered)):
        lines += _run_rows(r, label, paper.CLASSIFICATION_SCORES.get(r["model"]["name"], {}), cells)
    return "\n".join(lines)


def fmt_ci(entry) -> str:
    if isinstance(entry, dict):
        lo, hi = entry.get("ci_low"), entry.get("ci_high")
        return f"{fmt_value(entry.get('value'))} ({fmt_value(lo)}–{fmt_value(hi)})" if lo is not None else fmt_value(entry.get("value"))
    return fmt_value(entry)


def comparison_rows(results: list[dict], metrics=("accuracy", "macro_f1")) -> list[dict]:
    """One row per (model, split) with headline values, for the paper's Figure 11 chart."""
    rows = []
    for r, label in zip(results, _row_labels(results)):
        for split, m in r["metrics"].items():
            if split not in SPLIT_NAMES:  # e.g. test_tta
                continue
            values = {k: (m[k].get("value") if isinstance(m.get(k), dict) else m.get(k)) for k in metrics}
            rows.append({"model": label, "split": split, **values})
    return rows


def print_metrics(result: dict, key: str | None = None) -> None:
    """A short human summary of one evaluate result."""
    from rich.console import Console
    from rich.table import Table

    split = (key or result["split"]) + (" + flip TTA" if result.get("tta") and not (key or "").endswith("_tta") else "")
    table = Table(
        title=f"{result['task']} · {split} · {result['images']} images · weights: {_short_source(result.get('weight_source'))}",
        caption=f"CI: {result.get('ci')}",
    )
    table.add_column("metric")
    table.add_column("value (95% CI)")
    if result["task"] == "segmentation":
        for name in SEG_METRICS:
            for kind in ("mean", "pooled"):
                table.add_row(f"{name} ({kind})", fmt_ci(result[name][kind]))
        if result.get("lesion_dice"):
            table.add_row("dice over lesion images", fmt_ci(result["lesion_dice"]))
        d = result["detection"]
        table.add_row("lesion images missed", f"{d['missed_lesions']} of {d['lesion_images']}")
        table.add_row("lesion-free images flagged", f"{d['false_alarms']} of {d['lesion_free_images']}")
    else:
        for name in ("accuracy", "macro_f1", "macro_auc", "malignant_vs_benign_auc", "ece"):
            value = result.get(name)
            if value is not None:
                table.add_row(name, fmt_ci(value) if isinstance(value, dict) else f"{value:.3f}")
        for c in CLASSES:
            pc = result["per_class"][c]
            table.add_row(f"{c} P/R/F1", f"{fmt_value(pc['precision'])} / {fmt_value(pc['recall'])} / {fmt_value(pc['f1'])}")
    Console().print(table)
