"""Figures like the paper's: sample segmentations (Figs 3-5), confusion matrices (6-10),
model comparison (11) and sample classifications (12). All return the written path as a string.
The reliability diagram lives with the bins it draws: :func:`busai.calibration.reliability_figure`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from busai import CLASSES, SPLIT_NAMES
from busai.outputs import atomic_path


def _subplots(nrows: int = 1, ncols: int = 1, *, figsize, **kwargs):
    """pyplot.subplots on a bare Figure: drawn to files only, with no backend chosen or window
    registered, so drawing a figure changes nothing global (pyplot would)."""
    fig = Figure(figsize=figsize)
    return fig, fig.subplots(nrows, ncols, **kwargs)


def _save(fig, path: Path) -> str:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight", format=path.suffix.lstrip(".") or "png")
    return str(path)


def _pick(n_total: int, n: int) -> list[int]:
    """Evenly spaced indices: deterministic, and spread over the split's classes (records are sorted by class)."""
    if n_total <= n:
        return list(range(n_total))
    return [int(round(i)) for i in np.linspace(0, n_total - 1, n)]


def segmentation_samples(samples, path: Path, title: str, n: int = 4) -> str:
    """Rows of (scan, ground truth, predicted contour over the scan) with each row's Dice."""
    from busai.data.discover import read_image
    from busai.metrics import image_overlap

    # Prefer images with a lesion: a normal scan shows nothing to compare.
    lesion = [s for s in samples if s[2].any()] or samples
    chosen = [lesion[i] for i in _pick(len(lesion), n)]
    fig, axes = _subplots(len(chosen), 3, figsize=(9, 3 * len(chosen)), squeeze=False)
    for row, (record, prob, mask, counts) in zip(axes, chosen):
        image = read_image(record.image, mode="L", frame=record.frame)
        row[0].imshow(image, cmap="gray")
        row[0].set_title(record.key, fontsize=8)
        row[1].imshow(mask, cmap="gray")
        row[1].set_title("ground truth", fontsize=8)
        row[2].imshow(image, cmap="gray")
        row[2].contour(mask, levels=[0.5], colors="lime", linewidths=1)
        row[2].contour(prob, levels=[0.5], colors="red", linewidths=1)
        row[2].set_title(f"truth (green) vs prediction (red), Dice {image_overlap(counts)['dice']:.2f}", fontsize=8)
        for ax in row:
            ax.axis("off")
    fig.suptitle(title)
    return _save(fig, path)


def confusion_matrix(matrix: np.ndarray, path: Path, title: str, classes=CLASSES) -> str:
    fig, ax = _subplots(figsize=(4.2, 3.8))
    ax.imshow(matrix, cmap="Blues")
    for (i, j), value in np.ndenumerate(matrix):
        ax.text(j, i, int(value), ha="center", va="center", color="white" if value > matrix.max() / 2 else "black")
    ax.set_xticks(range(len(classes)), classes)
    ax.set_yticks(range(len(classes)), classes)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title, fontsize=9)
    return _save(fig, path)


def classification_samples(rows, path: Path, title: str, n: int = 8, classes=CLASSES) -> str:
    """A grid of scans titled with true and predicted class (green when right, red when wrong)."""
    from busai.data.discover import read_image

    chosen = [rows[i] for i in _pick(len(rows), n)]
    cols = 4
    fig, axes = _subplots((len(chosen) + cols - 1) // cols, cols, figsize=(3 * cols, 3.2 * ((len(chosen) + cols - 1) // cols)), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    for ax, (record, prob) in zip(axes.flat, chosen):
        predicted = classes[int(np.argmax(prob))]
        ax.imshow(read_image(record.image, mode="L", frame=record.frame), cmap="gray")
        ax.set_title(f"true {record.label}\npred {predicted} ({float(np.max(prob)):.2f})", fontsize=8, color="green" if predicted == record.label else "red")
    fig.suptitle(title)
    return _save(fig, path)


def model_comparison(rows: list[dict], path: Path, metrics=("accuracy", "macro_f1")) -> str:
    """Grouped bars of each model's scores on train / val / test (the paper's Figure 11).

    ``rows``: {"model": name, "split": split, metric: value, ...}.
    """
    models = sorted({r["model"] for r in rows})
    splits = [s for s in SPLIT_NAMES if any(r["split"] == s for r in rows)]
    fig, axes = _subplots(1, len(metrics), figsize=(5 * len(metrics), 3.8), squeeze=False)
    width = 0.8 / max(len(splits), 1)
    for ax, metric in zip(axes[0], metrics):
        for k, split in enumerate(splits):
            values = [next((r.get(metric, np.nan) for r in rows if r["model"] == m and r["split"] == split), np.nan) for m in models]
            ax.bar(np.arange(len(models)) + k * width, values, width, label=split)
        ax.set_xticks(np.arange(len(models)) + width * (len(splits) - 1) / 2, models, rotation=30, ha="right")
        ax.set_ylim(0, 1)
        ax.set_title(metric)
        ax.legend(fontsize=8)
    return _save(fig, path)


def training_curve(history: list[dict], path: Path, title: str = "") -> str:
    """Loss (train and validation) and the validation scores per epoch, best epoch marked.

    Drawn on a bare ``Figure`` (no pyplot, no backend switch) because the training loop calls it
    after every epoch; written atomically so a reader never sees half a file.
    """
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in history]
    scores = [k for k in history[0] if k.startswith("val_") and k != "val_loss"] if history else []
    fig = Figure(figsize=(9, 3.4))
    loss_ax, score_ax = fig.subplots(1, 2)
    for key, label in (("train_loss", "train"), ("val_loss", "validation")):
        loss_ax.plot(epochs, [row.get(key) for row in history], marker=".", label=label)
    for key in scores:
        score_ax.plot(epochs, [row.get(key) for row in history], marker=".", label=key.removeprefix("val_"))
    best = [row["epoch"] for row in history if row.get("best") in (True, "True")]
    from matplotlib.ticker import MaxNLocator

    for ax in (loss_ax, score_ax):
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        if best:
            ax.axvline(best[-1], color="grey", linestyle=":", linewidth=1)
        ax.set_xlabel("epoch")
        ax.legend(fontsize=8)
    loss_ax.set_title("loss (dotted: best checkpoint)", fontsize=9)
    score_ax.set_title("validation scores", fontsize=9)
    if title:
        fig.suptitle(title, fontsize=10)
    # Fixed margins, not tight_layout: that lays the figure out by drawing it once more, for every epoch's redraw.
    fig.subplots_adjust(left=0.08, right=0.98, bottom=0.15, top=0.8 if title else 0.9, wspace=0.2)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=90, format="png")
    return str(path)
