"""Print the released models' scores as Markdown, from ``src/busai/release/*/scores.json``.

The README and docs/model-card.md paste this output (tests/test_docs.py checks that they hold it
exactly, so the two never drift from the shipped scores):

    python scripts/release_table.py            # the README's short table: test split, with the paper's best
    python scripts/release_table.py --full     # the model card's table: every split and metric
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from busai import SPLIT_NAMES, paper

RELEASE = Path(__file__).resolve().parents[1] / "src" / "busai" / "release"


def _ci(value, low, high) -> str:
    return f"{value:.2f} ({low:.2f}–{high:.2f})"


def _seg(split: dict) -> dict[str, str]:
    return {name: _ci(split[key]["mean"], *split[key]["mean_ci"]) for name, key in (("Dice", "dice"), ("IoU", "iou"))}


def _cls(split: dict) -> dict[str, str]:
    return {name: _ci(split[key]["value"], split[key]["ci_low"], split[key]["ci_high"])
            for name, key in (("accuracy", "accuracy"), ("macro-F1", "macro_f1"), ("macro AUC", "macro_auc"))}


def paper_best(task: str, split: str = "test") -> dict[str, float]:
    """The paper's best value per metric on ``split`` over all its models (Tables 4 and 6)."""
    if task == "segmentation":
        rows = [s[split] for s in paper.SEGMENTATION_SCORES.values()]
        return {"Dice": max(r[1] for r in rows), "IoU": max(r[2] for r in rows)}
    rows = [s[split] for s in paper.CLASSIFICATION_SCORES.values()]
    return {"accuracy": max(r[1] for r in rows), "macro-F1": max(r[2] for r in rows)}


def load(task: str) -> dict:
    return json.loads((RELEASE / task / "scores.json").read_text())


def short_table() -> str:
    lines = ["| Task | Dataset | Model (run) | Test images | Test score, mean (95% CI) | Paper's best on its test split |", "|---|---|---|---|---|---|"]
    for task, cells in (("segmentation", _seg), ("classification", _cls)):
        s = load(task)
        model = s["model"]
        label = f"{model['encoder']} {model['name']}" if model.get("encoder") else model["name"]
        test = s["splits"]["test"]
        ours = cells(test)
        best = paper_best(task)
        shown = [k for k in ours if k in best]
        lines.append(f"| {task} | {s.get('dataset', 'BUSI')} | {label} (`{s['run']}`) | {test['images']} | "
                     + ", ".join(f"{k} {ours[k]}" for k in shown) + " | " + ", ".join(f"{k} {best[k]:.2f}" for k in shown) + " |")
    return "\n".join(lines)


def full_table() -> str:
    out = []
    for task, cells in (("segmentation", _seg), ("classification", _cls)):
        s = load(task)
        names = list(cells(s["splits"]["test"])) + (["Lesions missed", "Normals outlined"] if task == "segmentation" else [])
        lines = [f"| {task} on {s.get('dataset', 'BUSI')} | Images | " + " | ".join(names) + " | CI over |", "|---|---|" + "---|" * len(names) + "---|"]
        for split in SPLIT_NAMES:
            m = s["splits"][split]
            ci = m.get("ci", "?").removeprefix("95% percentile bootstrap over ")
            values = list(cells(m).values())
            if task == "segmentation":
                d = m["detection"]
                values += [f"{d['missed_lesions']} of {d['lesion_images']}", f"{d['false_alarms']} of {d['lesion_free_images']}"]
            lines.append(f"| {split} | {m['images']} | " + " | ".join(values) + f" | {ci} |")
        out.append("\n".join(lines))
    return "\n\n".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--full", action="store_true", help="every split and metric (the model card's table)")
    print(full_table() if parser.parse_args().full else short_table())


if __name__ == "__main__":
    main()
