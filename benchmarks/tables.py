"""Render every committed result table into docs/results.md, between its marker comments.

The study's tables live in the docs, not in the package or the README: this script reads the
committed files in ``results/`` (nothing is recomputed) and rewrites the text between
``<!-- NAME:start -->`` and ``<!-- NAME:end -->`` in ``docs/results.md``:

- ``seg-table`` / ``cls-table``: the score tables with the paper's Tables 4 and 6 beside ours (``busai.report``, ``study.paper``);
- ``tune-table``: the tuning studies' best hyper-parameters (``busai.tune.best_params_table``);
- ``speed-table``, ``leak-table``, ``missed-table``: the benchmarks' own JSON, rendered here.

It also draws the classifier comparison chart (``results/classification/figures/model_comparison.png``).

    python benchmarks/tables.py                      # rewrite docs/results.md
    python benchmarks/tables.py --print              # print the tables instead
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # the study package (study/) sits at the repository root, beside src/

from busai import SPLIT_NAMES  # noqa: E402
from busai.errors import BusaiError, CheckpointError  # noqa: E402
from busai.report import classification_table, comparison_rows, fmt_ci, fmt_value, segmentation_table  # noqa: E402
from study.collect import load_results  # noqa: E402
from study.paper import reference  # noqa: E402


def _benchmark_result(results_dir: str | Path, name: str) -> dict | None:
    """The committed JSON ``name`` of a benchmark under ``results_dir``, or None where it has not been run."""
    path = Path(results_dir) / name
    return json.loads(path.read_text()) if path.is_file() else None


def leakage_table(results_dir: str | Path) -> str:
    """Markdown of ``split_leakage.json`` (benchmarks/split_leakage.py): one recipe trained on the
    duplicate-aware split and on an image-by-image one; held-out mean Dice, on the leaky split also
    for its images with and without a duplicate in train. Empty when the file is absent."""
    r = _benchmark_result(results_dir, "split_leakage.json")
    if r is None:
        return ""
    split_name = {"group": "duplicate groups kept in one split", "ignore": "image by image (duplicates ignored)"}
    lines = [
        "| Run | Epochs (best) | Split file | Split made | Held out | Images | All: mean Dice | Duplicate in train: Dice (images) | No duplicate in train: Dice (images) | Dice 0 |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for run in (r["control"], r["leaky"]):
        fit = run["fit"]
        for split in ("val", "test"):
            row = run[split]
            lines.append(
                f"| {Path(run['run']).name} | {fit['epochs_run']} ({fit['best_epoch']}) | `{run['splits']}` | {split_name.get(run['duplicates'], run['duplicates'])} | {split} | {row['all']['images']} | "
                f"{fmt_ci(row['all']['mean_dice'])} | {_subset_cell(row, 'leaked')} | {_subset_cell(row, 'not_leaked')} | {row['all']['dice_zero']} |"
            )
    return "\n".join(lines + ["", f"Command: `{r['command']}`"])


def _subset_cell(row: dict, subset: str) -> str:
    if subset not in row:
        return "–"
    return f"{fmt_ci(row[subset]['mean_dice'])} ({row[subset]['images']})"


def missed_table(results_dir: str | Path) -> str:
    """Markdown of ``missed_lesions.json`` (benchmarks/missed_lesions.py): per split, the lesions the
    segmenter misses outright, and how many of those scans the classifier calls normal. Empty when
    the file is absent."""
    r = _benchmark_result(results_dir, "missed_lesions.json")
    if r is None:
        return ""
    lines = [
        "| Split | Lesion images | Missed (benign / malignant) | Missed, each duplicate group once | Median lesion area: missed / found | Classifier says normal: missed scans | Classifier says normal: all lesion scans | Missed but flagged for review |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for split in SPLIT_NAMES:
        if split not in r:
            continue
        row = r[split]
        area = row["median_lesion_area"]
        lines.append(
            f"| {split} | {row['lesion_images']} | {row['missed']} ({row['missed_by_class']['benign']} / {row['missed_by_class']['malignant']}) | "
            f"{row['missed_groups']} | {fmt_value(area['missed'], 3)} / {fmt_value(area['found'], 3)} | {row['missed_called_normal']} of {row['missed']} | "
            f"{row['all_lesions_called_normal']} of {row['lesion_images']} | {row['missed_flagged']} of {row['missed']} |"
        )
    return "\n".join(lines + ["", f"Models: segmentation `{r['segmentation_model']}`, classification `{r['classification_model']}`. Command: `{r['command']}`"])


def _cpu_cell(result: dict) -> str:
    native = {True: "native bf16", False: "no native bf16"}.get(result.get("cpu_native_bf16"), "bf16 support not recorded")
    cap = f"; ONEDNN_MAX_CPU_ISA={result['isa_cap']}" if result.get("isa_cap") else ""
    return f"{result.get('cpu', '?')}, {result.get('threads', '?')} threads ({native}{cap})"


def speed_table(results_dir: str | Path) -> str:
    """Markdown of the committed speed benchmarks (train_speed*.json, inference_speed.json,
    fast_path_quality.json, train_profile.json), with their commands.

    Each row names the CPU and the path the default resolved to there: bf16 autocast only pays
    on a CPU that computes bf16 natively (see ``engine.cpu_has_native_bf16``).
    """
    root = Path(results_dir)
    lines = [
        "| Benchmark | Model | Size × batch | CPU | fp32 eager | busai default | Default path | Default, unfused optimizer | Default + torch.compile | Forced bf16 | ONNX Runtime | Speed-up (default) | Command |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for path in sorted(root.glob("train_speed*.json")):
        r = json.loads(path.read_text())
        ips = r["images_per_second"]
        bf16, unfused, compiled = (f"{ips[k]:.2f} img/s" if k in ips else "–" for k in ("bf16_channels_last", "default_unfused", "default_compiled"))
        lines.append(
            f"| training | {r['model']} | {r['image_size']} × {r['batch_size']} | {_cpu_cell(r)} | {ips['fp32_eager']:.2f} img/s | "
            f"{ips['default']:.2f} img/s | {r.get('default_path', '?')} | {unfused} | {compiled} | {bf16} | – | {r['speedup']:.2f}× | `{r['command']}` |"
        )
    r = _benchmark_result(root, "inference_speed.json")
    if r is not None:
        ms = {k: v["ms_per_image_median"] for k, v in r["results"].items()}
        model = f"{r['model'].get('encoder')}:{r['model']['name']}"
        lines.append(
            f"| inference | {model} | {r['image_size']} × {r['batch_size']} | {_cpu_cell(r)} | {ms['fp32_eager']:.1f} ms/img | "
            f"{ms['default']:.1f} ms/img | {r.get('default_path', '?')} | – | – | – | {ms.get('onnxruntime', float('nan')):.1f} ms/img | "
            f"{r['speedup_vs_fp32_eager']['default']:.2f}× | `{r['command']}` |"
        )
    r = _benchmark_result(root, "fast_path_quality.json")
    if r is not None:  # does the fast path train as well? (benchmarks/fast_path_quality.py)
        c, slow, fast = r["config"], r["fp32"], r["bf16_channels_last"]
        lines += [
            "",
            "| Same training, two paths | Model | Size × batch | Epochs | fp32 eager: val Dice at best epoch | bf16 autocast + channels_last: val Dice at best epoch | Difference | Epoch-time ratio | Command |",
            "|---|---|---|---|---|---|---|---|---|",
            f"| seed {c['seed']} | {c['encoder']}:{c['model']} | {c['image_size']} × {c['batch_size']} | {c['epochs']} | "
            f"{slow['val_dice_at_best']:.3f} (epoch {slow['best_epoch']}) | {fast['val_dice_at_best']:.3f} (epoch {fast['best_epoch']}) | "
            f"{r['val_dice_difference']:+.3f} | {r['epoch_time_ratio']:.2f}× | `{r['command']}` |",
        ]
    r = _benchmark_result(root, "train_profile.json")
    if r is not None:  # where a training step's time goes, by kind of operator (benchmarks/train_profile.py)
        lines += ["", profile_table(r)]
    return "\n".join(lines)


def throughput_table(results_dir: str | Path) -> str:
    """Markdown of each predict_throughput*.json (one per machine or ISA cap): images per second of
    `busai predict` per path, with its command."""
    tables = [_throughput_table(json.loads(p.read_text())) for p in sorted(Path(results_dir).glob("predict_throughput*.json"))]
    return "\n\n".join(tables)


def _throughput_table(r: dict) -> str:
    m = r["machine"]
    cap = f" capped at {m['isa_cap']} (ONEDNN_MAX_CPU_ISA)" if m.get("isa_cap") else ""
    lines = [
        f"`{r['command']}`: both release models on {r['images']} scans; {m['cpu']}{cap}, {m['threads']} threads, "
        f"load average {', '.join(str(x) for x in m['load_average'])} at the end; model GFLOPs per image "
        + ", ".join(f"{k} {v}" for k, v in r["model_gflops_per_image"].items()),
        "",
        "| path | images/s | against one scan at a time | against the issue-33 baseline | share of the fp32 FLOP limit |",
        "|---|---|---|---|---|",
    ]
    for name, p in r["paths"].items():
        against_baseline = f"x{p['speedup_over_issue_baseline']:.2f}" if "speedup_over_issue_baseline" in p else "–"
        lines.append(f"| {name} | {p['images_per_second']:.2f} | x{p['speedup_over_before']:.2f} | {against_baseline} | {p['fraction_of_flop_limit']:.0%} |")
    alone = r.get("models_only")
    if alone:  # the two networks alone, against the FLOP limit of each precision the machine computes natively
        shares = ", ".join(f"{share:.0%} of the {dtype} limit" for dtype, share in alone["fraction_of_flop_limit"].items())
        lines += [
            "",
            f"The two networks alone (batches of 8, {alone['images']} scans prepared before the clock): {alone['images_per_second']:.2f} images/s, {shares}.",
        ]
    if m.get("cpu_flags"):
        lines += ["", f"CPU flags: {' '.join(m['cpu_flags'])}."]
    return "\n".join(lines)


def startup_table(results_dir: str | Path) -> str:
    """Markdown of startup.json: seconds to answer `--help`, to import busai and to predict one scan, each in a fresh process."""
    r = _benchmark_result(results_dir, "startup.json")
    if r is None:
        return ""
    lines = [
        f"`{r['command']}`: best of {r['repeats']} fresh processes; {_cpu_cell(r['machine'])}, CPU flags {' '.join(r['machine'].get('cpu_flags', [])) or 'not recorded'}",
        "",
        "| command | seconds |",
        "|---|---|",
    ]
    lines += [f"| `{name}` | {seconds:.2f} |" for name, seconds in r["seconds"].items()]
    return "\n".join(lines)


def adapt_table(results_dir: str | Path) -> str:
    """Markdown of adapt.json: the BUSI-only parent and each adaptation to BUS-UCLM, scored on both test splits."""
    r = _benchmark_result(results_dir, "adapt.json")
    if r is None:
        return ""

    def ci(v: dict) -> str:
        return f"{v['value']:.3f} [{v['ci_low']:.3f}, {v['ci_high']:.3f}]"

    def cells(scores: dict) -> str:
        return " | ".join(
            f"{ci(s['lesion_dice'])} | {s['missed_lesions']} of {s['lesion_images']} | {s['normals_outlined']} of {s['lesion_free_images']} | {s['dice']['value']:.3f}"
            for s in (scores["uclm"], scores["busi"])
        )

    lines = [
        f"`{r['command']}`; 95% CIs over patients / duplicate groups",
        "",
        "| model | BUS-UCLM test: Dice, lesion scans | lesions missed | normals outlined | Dice, all scans "
        "| BUSI test: Dice, lesion scans | lesions missed | normals outlined | Dice, all scans | seconds |",
        "|---|---|---|---|---|---|---|---|---|---|",
        f"| unadapted (BUSI only) | {cells(r['parent']['scores'])} | – |",
    ]
    for row in r["rows"]:
        name = (
            "self-trained on pseudo-labels (`--pseudo-label`)"
            if row.get("pseudo_label")
            else ("statistics only" if row["labelled"] == 0 else f"{row['labelled']} labelled scans")
        )
        lines.append(f"| {name} | {cells(row['scores'])} | {row['seconds']:.0f} |")
    if r.get("reference"):
        uclm = r["reference"]["scores"]["uclm"]
        lines.append(
            f"| trained on all BUS-UCLM train patients (yardstick) | {ci(uclm['lesion_dice'])} | {uclm['missed_lesions']} of {uclm['lesion_images']} "
            f"| {uclm['normals_outlined']} of {uclm['lesion_free_images']} | {uclm['dice']['value']:.3f} | – | – | – | – | – |"
        )
    return "\n".join(lines)


def profile_table(r: dict) -> str:
    lines = ["| Model | Operators | fp32 eager: ms / step (share) | busai default: ms / step (share) | Speed-up |", "|---|---|---|---|---|"]
    for model, paths in r["models"].items():
        slow, fast = paths["fp32_eager"], paths["default"]
        rows = [(kind, slow[kind], fast[kind], f"{slow[kind] / fast[kind]:.2f}×" if fast[kind] > 0 else "–") for kind in slow]
        # No speed-up for the whole step: the profiler slows the two paths unequally; the timed rows give it.
        rows.append(("all", sum(slow.values()), sum(fast.values()), "–"))
        for i, (kind, a, b, speedup) in enumerate(rows):
            lines.append(f"| {model if i == 0 else ''} | {kind} | {a:.0f} ({a / rows[-1][1]:.0%}) | {b:.0f} ({b / rows[-1][2]:.0%}) | {speedup} |")
    return "\n".join(lines) + f"\n\nCommand: `{r['command']}` ({r['cpu']}, {r['threads']} threads; {r['unit']})"


def replace_between_markers(doc: str | Path, marker: str, content: str) -> None:
    """Replace the text between ``<!-- marker:start -->`` and ``<!-- marker:end -->`` (atomically)."""
    doc = Path(doc)
    text = doc.read_text()
    pattern = re.compile(rf"(<!-- {re.escape(marker)}:start -->\n).*?(<!-- {re.escape(marker)}:end -->)", re.S)
    if not pattern.search(text):
        raise CheckpointError(f"{doc}: no <!-- {marker}:start --> / <!-- {marker}:end --> markers; add them where the table goes")
    tmp = doc.with_name(doc.name + ".tmp")
    tmp.write_text(pattern.sub(lambda m: m.group(1) + content + "\n" + m.group(2), text))
    os.replace(tmp, doc)


def render(results: Path, *, chart: bool = True) -> dict[str, str]:
    """Every table, by marker name; a table whose results are absent is left out. ``chart`` also
    redraws the classifier comparison chart into the results folder."""
    from busai.figures import model_comparison

    classification = load_results(results / "classification")
    if classification and chart:  # the paper's Figure 11: every classifier on train / val / test
        print(model_comparison(comparison_rows(classification), results / "classification" / "figures" / "model_comparison.png"), file=sys.stderr)
    paper = reference()
    rendered = {
        "seg-table": segmentation_table(load_results(results / "segmentation"), paper),
        "cls-table": classification_table(classification, paper),
        "speed-table": speed_table(results),
        "leak-table": leakage_table(results),
        "missed-table": missed_table(results),
        "throughput-table": throughput_table(results),
        "startup-table": startup_table(results),
        "adapt-table": adapt_table(results),
    }
    studies = sorted(p.parent for p in (results / "tuning").glob("*/summary.json"))
    if studies:  # Optuna is imported only when there are studies to show
        from busai.tune import best_params_table

        rendered["tune-table"] = best_params_table(studies)
    return {marker: table for marker, table in rendered.items() if table.count("\n") > 1}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--results", type=Path, default=ROOT / "results", help="folder holding segmentation/, classification/, tuning/ and the benchmarks' JSON"
    )
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "results.md", help="Markdown file with the table markers (default docs/results.md)")
    parser.add_argument("--print", action="store_true", help="print the tables instead of rewriting --doc")
    args = parser.parse_args(argv)
    try:
        for marker, table in render(args.results).items():
            if args.print:
                print(f"<!-- {marker} -->\n{table}\n")
            else:
                replace_between_markers(args.doc, marker, table)
    except BusaiError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
