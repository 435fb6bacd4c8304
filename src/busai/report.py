"""Tables and result files from run folders: nothing is recomputed, everything is read back.

``collect_run`` turns an evaluated run folder into one ``results/<task>/<name>.json`` with the
exact commands that produced it; ``segmentation_table`` / ``classification_table`` render the
paper-shaped Markdown tables (ours beside the paper's) that ``update_readme`` writes between
marker comments, so README figures are never typed by hand.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from busai import CLASSES, SPLIT_NAMES, paper
from busai.errors import CheckpointError
from busai.engine import BEST_CHECKPOINT
from busai.runs import model_label, read_run_config, write_json

SEG_METRICS = ("pixel_accuracy", "dice", "iou", "auc")


def compact_segmentation(metrics: dict) -> dict:
    """{metric: {"mean": value, "pooled": value, "mean_ci": [lo, hi]}} from an evaluate result, plus
    its CI method (``ci``) and lesion ``detection`` counts where the evaluation recorded them."""
    out = {k: metrics[k] for k in ("ci", "detection") if k in metrics}
    for name in SEG_METRICS:
        m = metrics.get(name, {})
        mean, pooled = m.get("mean") or {}, m.get("pooled") or {}
        out[name] = {"mean": mean.get("value"), "mean_ci": [mean.get("ci_low"), mean.get("ci_high")],
                     "pooled": pooled.get("value"), "pooled_ci": [pooled.get("ci_low"), pooled.get("ci_high")]}
    return out


def compact_classification(metrics: dict) -> dict:
    keep = ("accuracy", "macro_f1", "macro_precision", "macro_recall", "macro_auc", "per_class", "confusion_matrix", "ci")
    return {k: metrics[k] for k in keep if k in metrics}


def collect_run(run_dir: str | Path, name: str | None = None) -> dict:
    run_dir = Path(run_dir)
    config = read_run_config(run_dir)
    metrics_path = run_dir / "metrics.json"
    if not metrics_path.exists():
        raise CheckpointError(f"{metrics_path}: missing; run `busai evaluate {run_dir} --split train val test` first")
    metrics = json.loads(metrics_path.read_text())
    fit = json.loads((run_dir / "fit.json").read_text()) if (run_dir / "fit.json").exists() else {}
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
    }


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


def _fmt(x, digits: int = 2) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def _ci(entry: dict, key: str) -> str:
    lo, hi = entry.get(f"{key}_ci", [None, None])
    return f"{_fmt(entry[key])} ({_fmt(lo)}–{_fmt(hi)})" if lo is not None else _fmt(entry.get(key))


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


GROUP_CI_MARK = "†"  # the split's CIs resample duplicate groups (README explains)


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
        return f"{_fmt(m['pixel_accuracy']['pooled'], 3)} | {_ci(m['dice'], 'mean')} | {_ci(m['iou'], 'mean')} | {_fmt(m['auc']['pooled'])} | {detection}"

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
        recalls = " / ".join(_fmt(m["per_class"][c]["recall"]) for c in CLASSES) if "per_class" in m else "–"
        return f"{_metric_ci(m.get('accuracy'))} | {_metric_ci(m.get('macro_f1'))} | {_metric_ci(m.get('macro_auc'))} | {recalls}"

    ordered = sorted(results, key=lambda r: (r["model"]["name"], r["name"]))
    for r, label in zip(ordered, _row_labels(ordered)):
        lines += _run_rows(r, label, paper.CLASSIFICATION_SCORES.get(r["model"]["name"], {}), cells)
    return "\n".join(lines)


def _metric_ci(entry) -> str:
    if isinstance(entry, dict):
        lo, hi = entry.get("ci_low"), entry.get("ci_high")
        return f"{_fmt(entry.get('value'))} ({_fmt(lo)}–{_fmt(hi)})" if lo is not None else _fmt(entry.get("value"))
    return _fmt(entry)


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


def leakage_table(results_dir: str | Path) -> str:
    """Markdown of ``split_leakage.json`` (benchmarks/split_leakage.py): one recipe trained on the
    duplicate-aware split and on an image-by-image one; held-out mean Dice, on the leaky split also
    for its images with and without a duplicate in train. Empty when the file is absent."""
    path = Path(results_dir) / "split_leakage.json"
    if not path.exists():
        return ""
    r = json.loads(path.read_text())
    split_name = {"group": "duplicate groups kept in one split", "ignore": "image by image (duplicates ignored)"}
    lines = ["| Run | Epochs (best) | Split file | Split made | Held out | Images | All: mean Dice | Duplicate in train: Dice (images) | No duplicate in train: Dice (images) | Dice 0 |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for run in (r["control"], r["leaky"]):
        fit = run["fit"]
        for split in ("val", "test"):
            row = run[split]
            lines.append(f"| {Path(run['run']).name} | {fit['epochs_run']} ({fit['best_epoch']}) | `{run['splits']}` | {split_name.get(run['duplicates'], run['duplicates'])} | {split} | {row['all']['images']} | "
                         f"{_metric_ci(row['all']['mean_dice'])} | {_subset_cell(row, 'leaked')} | {_subset_cell(row, 'not_leaked')} | {row['all']['dice_zero']} |")
    return "\n".join(lines + ["", f"Command: `{r['command']}`"])


def missed_table(results_dir: str | Path) -> str:
    """Markdown of ``missed_lesions.json`` (benchmarks/missed_lesions.py): per split, the lesions the
    segmenter misses outright, and how many of those scans the classifier calls normal. Empty when
    the file is absent."""
    path = Path(results_dir) / "missed_lesions.json"
    if not path.exists():
        return ""
    r = json.loads(path.read_text())
    lines = ["| Split | Lesion images | Missed (benign / malignant) | Missed, each duplicate group once | Median lesion area: missed / found | Classifier says normal: missed scans | Classifier says normal: all lesion scans | Missed but flagged for review |",
             "|---|---|---|---|---|---|---|---|"]
    for split in SPLIT_NAMES:
        if split not in r:
            continue
        row = r[split]
        area = row["median_lesion_area"]
        lines.append(f"| {split} | {row['lesion_images']} | {row['missed']} ({row['missed_by_class']['benign']} / {row['missed_by_class']['malignant']}) | "
                     f"{row['missed_groups']} | {_fmt(area['missed'], 3)} / {_fmt(area['found'], 3)} | {row['missed_called_normal']} of {row['missed']} | "
                     f"{row['all_lesions_called_normal']} of {row['lesion_images']} | {row['missed_flagged']} of {row['missed']} |")
    return "\n".join(lines + ["", f"Models: segmentation `{r['segmentation_model']}`, classification `{r['classification_model']}`. Command: `{r['command']}`"])


def _subset_cell(row: dict, subset: str) -> str:
    if subset not in row:
        return "–"
    return f"{_metric_ci(row[subset]['mean_dice'])} ({row[subset]['images']})"


def update_readme(readme: str | Path, marker: str, content: str) -> None:
    """Replace the text between ``<!-- marker:start -->`` and ``<!-- marker:end -->``."""
    readme = Path(readme)
    text = readme.read_text()
    pattern = re.compile(rf"(<!-- {re.escape(marker)}:start -->\n).*?(<!-- {re.escape(marker)}:end -->)", re.S)
    if not pattern.search(text):
        raise CheckpointError(f"{readme}: no <!-- {marker}:start --> / <!-- {marker}:end --> markers; add them where the table goes")
    readme.write_text(pattern.sub(lambda m: m.group(1) + content + "\n" + m.group(2), text))


def print_metrics(result: dict, key: str | None = None) -> None:
    """A short human summary of one evaluate result."""
    from rich.console import Console
    from rich.table import Table

    split = (key or result["split"]) + (" + flip TTA" if result.get("tta") and not (key or "").endswith("_tta") else "")
    table = Table(title=f"{result['task']} · {split} · {result['images']} images · weights: {_short_source(result.get('weight_source'))}",
                  caption=f"CI: {result.get('ci')}")
    table.add_column("metric")
    table.add_column("value (95% CI)")
    if result["task"] == "segmentation":
        for name in SEG_METRICS:
            for kind in ("mean", "pooled"):
                table.add_row(f"{name} ({kind})", _metric_ci(result[name][kind]))
        if result.get("lesion_dice"):
            table.add_row("dice over lesion images", _metric_ci(result["lesion_dice"]))
        d = result["detection"]
        table.add_row("lesion images missed", f"{d['missed_lesions']} of {d['lesion_images']}")
        table.add_row("lesion-free images flagged", f"{d['false_alarms']} of {d['lesion_free_images']}")
    else:
        for name in ("accuracy", "macro_f1", "macro_auc", "malignant_vs_benign_auc"):
            if result.get(name) is not None:
                table.add_row(name, _metric_ci(result.get(name)))
        for c in CLASSES:
            pc = result["per_class"][c]
            table.add_row(f"{c} P/R/F1", f"{_fmt(pc['precision'])} / {_fmt(pc['recall'])} / {_fmt(pc['f1'])}")
    Console().print(table)


def _cpu_cell(result: dict) -> str:
    native = {True: "native bf16", False: "no native bf16"}.get(result.get("cpu_native_bf16"), "bf16 support not recorded")
    return f"{result.get('cpu', '?')}, {result.get('threads', '?')} threads ({native})"


def speed_table(results_dir: str | Path) -> str:
    """Markdown of the committed speed benchmarks (train_speed*.json, inference_speed.json), with their commands.

    Each row names the CPU and the path the default resolved to there: bf16 autocast only pays
    on a CPU that computes bf16 natively (see ``engine.cpu_has_native_bf16``).
    """
    root = Path(results_dir)
    lines = ["| Benchmark | Model | Size × batch | CPU | fp32 eager | busai default | Default path | Default, unfused optimizer | Forced bf16 | ONNX Runtime | Speed-up (default) | Command |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for path in sorted(root.glob("train_speed*.json")):
        r = json.loads(path.read_text())
        ips = r["images_per_second"]
        bf16, unfused = (f"{ips[k]:.2f} img/s" if k in ips else "–" for k in ("bf16_channels_last", "default_unfused"))
        lines.append(f"| training | {r['model']} | {r['image_size']} × {r['batch_size']} | {_cpu_cell(r)} | {ips['fp32_eager']:.2f} img/s | "
                     f"{ips['default']:.2f} img/s | {r.get('default_path', '?')} | {unfused} | {bf16} | – | {r['speedup']:.2f}× | `{r['command']}` |")
    path = root / "inference_speed.json"
    if path.exists():
        r = json.loads(path.read_text())
        ms = {k: v["ms_per_image_median"] for k, v in r["results"].items()}
        model = f"{r['model'].get('encoder')}:{r['model']['name']}"
        lines.append(f"| inference | {model} | {r['image_size']} × {r['batch_size']} | {_cpu_cell(r)} | {ms['fp32_eager']:.1f} ms/img | "
                     f"{ms['default']:.1f} ms/img | {r.get('default_path', '?')} | – | – | {ms.get('onnxruntime', float('nan')):.1f} ms/img | "
                     f"{r['speedup_vs_fp32_eager']['default']:.2f}× | `{r['command']}` |")
    path = root / "fast_path_quality.json"
    if path.exists():  # does the fast path train as well? (benchmarks/fast_path_quality.py)
        r = json.loads(path.read_text())
        c, slow, fast = r["config"], r["fp32"], r["bf16_channels_last"]
        lines += ["", "| Same training, two paths | Model | Size × batch | Epochs | fp32 eager: val Dice at best epoch | bf16 autocast + channels_last: val Dice at best epoch | Difference | Epoch-time ratio | Command |",
                  "|---|---|---|---|---|---|---|---|---|",
                  f"| seed {c['seed']} | {c['encoder']}:{c['model']} | {c['image_size']} × {c['batch_size']} | {c['epochs']} | "
                  f"{slow['val_dice_at_best']:.3f} (epoch {slow['best_epoch']}) | {fast['val_dice_at_best']:.3f} (epoch {fast['best_epoch']}) | "
                  f"{r['val_dice_difference']:+.3f} | {r['epoch_time_ratio']:.2f}× | `{r['command']}` |"]
    path = root / "train_profile.json"
    if path.exists():  # where a training step's time goes, by kind of operator (benchmarks/train_profile.py)
        lines += ["", _profile_table(json.loads(path.read_text()))]
    return "\n".join(lines)


def _profile_table(r: dict) -> str:
    lines = ["| Model | Operators | fp32 eager: ms / step (share) | busai default: ms / step (share) | Speed-up |", "|---|---|---|---|---|"]
    for model, paths in r["models"].items():
        slow, fast = paths["fp32_eager"], paths["default"]
        rows = [(kind, slow[kind], fast[kind], f"{slow[kind] / fast[kind]:.2f}×" if fast[kind] > 0 else "–") for kind in slow]
        # No speed-up for the whole step: the profiler slows the two paths unequally; the timed rows above give it.
        rows.append(("all", sum(slow.values()), sum(fast.values()), "–"))
        for i, (kind, a, b, speedup) in enumerate(rows):
            lines.append(f"| {model if i == 0 else ''} | {kind} | {a:.0f} ({a / rows[-1][1]:.0%}) | {b:.0f} ({b / rows[-1][2]:.0%}) | {speedup} |")
    return "\n".join(lines) + f"\n\nCommand: `{r['command']}` ({r['cpu']}, {r['threads']} threads; {r['unit']})"
