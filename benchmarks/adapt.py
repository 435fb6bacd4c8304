"""`busai adapt` on a real new site: a BUSI-only model adapted to BUS-UCLM (another hospital and scanner).

    python benchmarks/adapt.py --busi ../shared/data/Dataset_BUSI_with_GT --uclm ../shared/data/BUS-UCLM

The parent is the release before issue 19, trained on BUSI alone (extracted from git with
``mkdir -p runs/release-v1 && git archive 69288d7 src/busai/release | tar -x -C runs/release-v1 --strip-components=3``).
It is adapted to BUS-UCLM's **train** patients of ``splits/busi-uclm.json``: with their labels
hidden (``--labelled 0``: normalisation statistics only), and with N = 10, 25, 50 of their
labelled scans (statistics, then fine-tuning). Each adapted model, and the parent, is scored with
``busai evaluate`` on BUS-UCLM's **test** patients (the new site) and on BUSI's test images (to
show nothing was forgotten); BUS-UCLM's val patients are not used. ``--reference RUN`` (default
``runs/xd/seg-uclm-gray``, where it exists) adds a model trained on all BUS-UCLM train patients,
the yardstick of the few-label target. ``--pseudo-label`` adds one more adaptation without labels,
with self-training on confident pseudo-labels (``busai adapt --labelled 0 --pseudo-label``): the
row that decides whether that step pays.

Writes ``results/adapt.json`` (every score with its 95% CI over patients / duplicate groups, the
seconds each adaptation took) and the curve ``docs/figures/adapt.png``. ``--limit K`` keeps K
images of each list (a quick check that everything runs; its numbers mean nothing) and writes
under ``--work`` only, unless ``--results`` / ``--figure`` are given.
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
SPLITS = "splits/busi-uclm.json"
PARENT = "runs/release-v1/segmentation"
REFERENCE = "runs/xd/seg-uclm-gray"
LABELLED = (0, 10, 25, 50)


def limited_splits(splits_file: Path, limit: int, out: Path) -> Path:
    """A copy of the split file keeping ``limit`` images of each dataset's lists (the check run)."""
    from busai.data.splits import read_splits, write_splits

    splits = read_splits(splits_file)
    for name in ("train", "val", "test"):
        by_dataset: dict[str, list[str]] = {}
        for key in splits[name]:
            by_dataset.setdefault(key.split(":", 1)[0], []).append(key)
        # Evenly spaced over each list, so the few images kept come from several patients.
        splits[name] = [keys[int(i)] for keys in by_dataset.values() for i in np.linspace(0, len(keys) - 1, min(limit, len(keys)))]
    splits.pop("folds", None)
    return write_splits(out, splits, overwrite=True)


def scores(model: str | Path, data: list[str], splits: Path, out: Path, n_boot: int, device: str) -> dict:
    """Dice over lesion scans, mean Dice, lesions missed and lesion-free scans outlined, per dataset's
    test split (busai evaluate). A model whose scores are in ``out`` already (an earlier invocation
    of this script, next to its adaptation, which is not redone either) is read back, not scored again."""
    from busai.evaluation import evaluate_model

    stored = out / "segmentation" / "metrics.json"
    if stored.is_file():
        by_key = json.loads(stored.read_text())
    else:
        (by_key,) = evaluate_model(model, data, splits_file=splits, split_names=["test"], out=out, n_boot=n_boot, figures=False, device=device).values()
    return {
        key.split("/")[0]: {
            "images": r["images"],
            "lesion_dice": r["lesion_dice"],
            "dice": r["dice"]["mean"],
            "missed_lesions": r["detection"]["missed_lesions"],
            "lesion_images": r["detection"]["lesion_images"],
            "normals_outlined": r["detection"]["false_alarms"],
            "lesion_free_images": r["detection"]["lesion_free_images"],
        }
        for key, r in by_key.items()
        if "/" in key
    }


def figure(rows: list[dict], parent: dict, reference: dict | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    pseudo = [r for r in rows if r.get("pseudo_label")]
    rows = [r for r in rows if not r.get("pseudo_label")]
    xs = [r["labelled"] for r in rows]
    for dataset, colour, name in (("uclm", "tab:blue", "BUS-UCLM test (the new site)"), ("busi", "tab:orange", "BUSI test (the parent's own)")):
        values = [r["scores"][dataset]["lesion_dice"] for r in rows]
        mid = [v["value"] for v in values]
        err = [[m - v["ci_low"] for m, v in zip(mid, values)], [v["ci_high"] - m for m, v in zip(mid, values)]]
        ax.errorbar(xs, mid, yerr=err, marker="o", capsize=3, color=colour, label=f"adapted, {name}")
        for r in pseudo:
            v = r["scores"][dataset]["lesion_dice"]
            err = [[v["value"] - v["ci_low"]], [v["ci_high"] - v["value"]]]
            ax.errorbar([0], [v["value"]], yerr=err, marker="s", capsize=3, color=colour, mfc="none", label=f"self-trained (--pseudo-label), {name}")
        ax.axhline(parent[dataset]["lesion_dice"]["value"], color=colour, linestyle="--", linewidth=1, label=f"unadapted, {name}")
    if reference and "uclm" in reference:
        ax.axhline(reference["uclm"]["lesion_dice"]["value"], color="tab:green", linestyle=":", label="trained on all BUS-UCLM train, BUS-UCLM test")
    ax.set_xticks(xs)
    ax.set_xticklabels(["0\n(statistics only)" if x == 0 else str(x) for x in xs])
    ax.set_xlabel("labelled BUS-UCLM scans")
    ax.set_ylabel("Dice over lesion scans (95% CI)")
    ax.set_title("A BUSI-only segmenter adapted to BUS-UCLM (busai adapt)")
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busi", required=True, help="BUSI folder")
    parser.add_argument("--uclm", required=True, help="BUS-UCLM folder")
    parser.add_argument("--model", default=PARENT, help=f"the BUSI-only parent (default {PARENT})")
    parser.add_argument("--reference", default=REFERENCE, help=f"a model trained on all BUS-UCLM train patients (default {REFERENCE}, if present)")
    parser.add_argument("--splits", default=SPLITS)
    parser.add_argument("--labelled", type=int, nargs="+", default=list(LABELLED), help="labelled scans per adaptation (0: statistics only)")
    parser.add_argument("--pseudo-label", action="store_true", help="also adapt without labels with self-training on pseudo-labels")
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--limit", type=int, default=None, help="keep K images per list: a check that it runs, not a result")
    parser.add_argument("--work", default="runs/adapt-bench", help="folder for the adapted runs (default runs/adapt-bench)")
    parser.add_argument("--results", default=None, help="results JSON (default results/adapt.json; under --work with --limit)")
    parser.add_argument("--figure", default=None, help="the curve (default docs/figures/adapt.png; under --work with --limit)")
    args = parser.parse_args(argv)

    from busai.adaptation import adapt
    from busai.runs import best_threads, write_json

    best_threads()
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    splits = Path(args.splits) if args.limit is None else limited_splits(Path(args.splits), args.limit, work / "splits.json")
    results_path = Path(args.results or (work / "adapt.json" if args.limit else ROOT / "results" / "adapt.json"))
    figure_path = Path(args.figure or (work / "adapt.png" if args.limit else ROOT / "docs" / "figures" / "adapt.png"))
    data = [f"busi={args.busi}", f"uclm={args.uclm}"]

    print(f"scoring the parent {args.model}", file=sys.stderr)
    parent = scores(args.model, data, splits, work / "parent-scores", args.n_boot, args.device)
    reference = None
    if args.reference and Path(args.reference).is_dir():
        reference = scores(args.reference, [f"uclm={args.uclm}"], splits, work / "reference-scores", args.n_boot, args.device)
    rows = []
    for n, pseudo in [(n, False) for n in args.labelled] + ([(0, True)] if args.pseudo_label else []):
        run = work / ("pseudo-label" if pseudo else f"labelled-{n}")
        print(f"adapting with {n} labelled scans{' and pseudo-labels' if pseudo else ''} into {run}", file=sys.stderr)
        if not (run / "adapt.json").is_file():
            started = time.monotonic()
            adapt(
                args.model,
                f"uclm={args.uclm}",
                run,
                splits=splits,
                labelled=n,
                epochs=args.epochs,
                seed=args.seed,
                device=args.device,
                n_boot=args.n_boot,
                pseudo_label=pseudo,
            )
            seconds = round(time.monotonic() - started, 1)
        else:  # done by an earlier, interrupted invocation
            seconds = json.loads((run / "adapt.json").read_text()).get("seconds")
        report = json.loads((run / "adapt.json").read_text())
        report["seconds"] = seconds
        write_json(run / "adapt.json", report)
        rows.append(
            {
                "labelled": n,
                "pseudo_label": report.get("pseudo_label"),
                "run": str(run),
                "seconds": seconds,
                "adaptation_images": report["site"]["adaptation_images"],
                "bn_shift": report["bn_shift"],
                "scores": scores(run, data, splits, work / f"{run.name}-scores", args.n_boot, args.device),
            }
        )

    def delta(row: dict, dataset: str) -> float:
        return round(row["scores"][dataset]["lesion_dice"]["value"] - parent[dataset]["lesion_dice"]["value"], 4)

    unlabelled = next((r for r in rows if r["labelled"] == 0 and not r["pseudo_label"]), None)
    self_trained = next((r for r in rows if r["pseudo_label"]), None)
    n25 = next((r for r in rows if r["labelled"] == 25), None)
    targets = {
        "unlabelled_uclm_lesion_dice_gain": delta(unlabelled, "uclm") if unlabelled else None,
        "unlabelled_uclm_missed_change": unlabelled["scores"]["uclm"]["missed_lesions"] - parent["uclm"]["missed_lesions"] if unlabelled else None,
        "unlabelled_busi_lesion_dice_change": delta(unlabelled, "busi") if unlabelled else None,
        "unlabelled_uclm_normals_outlined_change": unlabelled["scores"]["uclm"]["normals_outlined"] - parent["uclm"]["normals_outlined"]
        if unlabelled
        else None,
        "pseudo_label_uclm_lesion_dice_gain": delta(self_trained, "uclm") if self_trained else None,
        "pseudo_label_busi_lesion_dice_change": delta(self_trained, "busi") if self_trained else None,
        "labelled_25_share_of_reference": (
            round(n25["scores"]["uclm"]["lesion_dice"]["value"] / reference["uclm"]["lesion_dice"]["value"], 4) if n25 and reference else None
        ),
    }
    result = {
        "command": "python " + shlex.join([str(Path(sys.argv[0]).as_posix()), *(argv if argv is not None else sys.argv[1:])]),
        "limit": args.limit,
        "parent": {"model": args.model, "scores": parent},
        "reference": {"model": args.reference, "scores": reference} if reference else None,
        "rows": rows,
        "targets": targets,
        "figure": str(figure_path),
    }
    results_path.parent.mkdir(parents=True, exist_ok=True)
    write_json(results_path, result)
    figure(rows, parent, reference, figure_path)
    print(json.dumps(targets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
