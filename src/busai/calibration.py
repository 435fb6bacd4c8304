"""Calibrated class probabilities: expected calibration error, reliability bins, temperature scaling.

Temperature scaling (Guo et al., 2017) divides the classifier's logits by one scalar T fitted on
validation images only, by minimising their negative log-likelihood: the ranking of classes (and so
accuracy) is unchanged, only how confident the probabilities are. T is stored beside the model as
``calibration.json`` and applied by every prediction path; raw logits stay available.

Written here rather than taken from a library: scikit-learn's CalibratedClassifierCV wraps its own
estimators, and temperature scaling is a one-parameter fit that scipy solves directly.

The reliability bins, the ECE and the reliability diagram here are the only ones in busai
(``evaluate``, ``calibrate``, the study report and ``benchmarks/release_calibration.py`` all use
them), so every ECE busai prints is on the same :data:`N_BINS` bins.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from busai.errors import ConfigError
from busai.inference import predict_records
from busai.outputs import atomic_path
from busai.runs import BEST_CHECKPOINT, CALIBRATION, RunFolder, write_json

N_BINS = 10  # equal-width bins of the top-class probability; few enough that a 79-image split fills them
# Fewest validation images `busai calibrate` fits on: 5 per ECE bin on average. Below that the ECE
# the fit is judged by is mostly sampling noise (a bin of 3 images moves its gap by a third per
# image), so neither "better" nor "worse" would mean anything. BUSI's and BUS-UCLM's validation
# splits (79 and 66 images) pass; a fold of a small dataset may not.
MIN_IMAGES = 50
T_BOUNDS = (0.05, 20.0)  # the temperature search interval; a fit at either end is refused, not stored


def reliability_bins(probs: np.ndarray, y_true: np.ndarray, n_bins: int = N_BINS) -> list[dict]:
    """Top-label confidence in ``n_bins`` equal-width bins: per bin its count, mean confidence and
    accuracy (the points of a reliability diagram). A confidence of exactly 1 falls in the last bin."""
    probs = np.asarray(probs, dtype=np.float64)
    y_true = np.asarray(y_true)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    index = np.minimum((confidence * n_bins).astype(int), n_bins - 1)
    bins = []
    for b in range(n_bins):
        mine = index == b
        n = int(mine.sum())
        bins.append(
            {
                "low": b / n_bins,
                "high": (b + 1) / n_bins,
                "count": n,
                "confidence": float(confidence[mine].mean()) if n else None,
                "accuracy": float(correct[mine].mean()) if n else None,
            }
        )
    return bins


def expected_calibration_error(probs: np.ndarray, y_true: np.ndarray, n_bins: int = N_BINS) -> float:
    """ECE: the count-weighted mean gap between confidence and accuracy over the reliability bins."""
    bins = reliability_bins(probs, y_true, n_bins)
    total = sum(b["count"] for b in bins)
    if total == 0:
        raise ConfigError("no predictions to compute a calibration error on")
    return float(sum(b["count"] * abs(b["confidence"] - b["accuracy"]) for b in bins if b["count"]) / total)


def fit_temperature(logits: np.ndarray, y_true: np.ndarray) -> float:
    """The T > 0 minimising the mean negative log-likelihood of softmax(logits / T) (searched on log T)."""
    logits = np.asarray(logits, dtype=np.float64)
    y_true = np.asarray(y_true, dtype=np.int64)
    if logits.ndim != 2 or len(logits) != len(y_true) or len(y_true) == 0:
        raise ConfigError(f"logits of shape {logits.shape} do not fit {len(y_true)} labels")

    def nll(log_t: float) -> float:
        return float(-log_softmax(logits / math.exp(log_t), axis=1)[np.arange(len(y_true)), y_true].mean())

    best = minimize_scalar(nll, bounds=(math.log(T_BOUNDS[0]), math.log(T_BOUNDS[1])), method="bounded", options={"xatol": 1e-5})
    return float(math.exp(best.x))


def apply_temperature(logits: np.ndarray, temperature: float) -> np.ndarray:
    return softmax(np.asarray(logits, dtype=np.float64) / temperature, axis=1)


def read_temperature(model_dir: str | Path) -> float:
    """The stored temperature of a run or release folder; 1.0 (uncalibrated) when none is stored (:meth:`RunFolder.temperature`)."""
    return RunFolder(model_dir).temperature()


def reliability_figure(bins_by_name: dict[str, list[dict]], path: Path, title: str) -> str:
    """A reliability diagram as a PNG (written atomically): per entry of ``bins_by_name`` (name ->
    :func:`reliability_bins`), accuracy against mean confidence of each non-empty bin, with the
    bin's image count beside its point."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(4.2, 4.2))
    ax = fig.add_subplot()
    ax.plot([0, 1], [0, 1], color="grey", linestyle="--", linewidth=1, label="perfectly calibrated")
    for name, bins in bins_by_name.items():
        filled = [b for b in bins if b["count"]]
        if filled:
            (line,) = ax.plot([b["confidence"] for b in filled], [b["accuracy"] for b in filled], marker="o", label=name)
            for b in filled:
                ax.annotate(str(b["count"]), (b["confidence"], b["accuracy"]), textcoords="offset points", xytext=(4, 3), fontsize=6, color=line.get_color())
    ax.set_xlim(0, 1.03)
    ax.set_ylim(-0.03, 1.06)
    ax.set_xlabel("confidence (top class)")
    ax.set_ylabel(f"accuracy ({N_BINS} bins; images per bin beside each point)", fontsize=8)
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=7, loc="upper left")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    return str(path)


def fit_calibration(run_dir: str | Path, data, splits_file: str | Path, *, force: bool = False) -> dict:
    """Fit the temperature of a classification run on its validation split and write
    ``RUN_DIR/calibration.json`` (atomically) when it does not worsen the validation ECE (else
    nothing is written and ``stored`` is False); refuses a split file other than the run's own, fewer
    than ``MIN_IMAGES`` validation images and a fit at the search bound."""
    from busai.data.splits import load_split_records
    from busai.labels import class_names, scoring_map
    from busai.models.weights import file_sha256

    run_dir = Path(run_dir)
    folder = RunFolder(run_dir)
    spec = folder.spec() or {"task": "unknown"}
    if "classification" not in folder.tasks():
        raise ConfigError(f"{run_dir}: is a {spec['task']} run; temperature scaling calibrates a classifier's class probabilities")
    loaded = folder.load(task="classification", checkpoint=BEST_CHECKPOINT)
    if loaded.config.get("splits_sha256") not in (None, file_sha256(splits_file)):
        raise ConfigError(f"{splits_file}: is not the split file {run_dir} was trained with; fit on that run's own validation images")
    path = run_dir / CALIBRATION
    if path.exists() and not force:
        raise ConfigError(f"{path}: exists; pass --force to refit and replace it")
    index = scoring_map(loaded.config, class_names(loaded.spec))
    records = load_split_records(data, splits_file, "val", fold=loaded.config.get("train", {}).get("fold"))
    records = [r for r in records if r.label in index]  # as in training: images of another class were left out
    if len(records) < MIN_IMAGES:
        raise ConfigError(
            f"{splits_file}: {len(records)} validation images; calibrating needs at least {MIN_IMAGES} (fewer make its ECE noise): "
            "make a split with a larger validation set, or leave the model uncalibrated"
        )
    rows = list(predict_records(loaded, records, calibrated=False))
    y_true = np.array([index[r.label] for r, _ in rows])
    probs = np.stack([p.numpy() for _, p in rows]).astype(np.float64)
    # log p differs from the logits by a per-image constant, which softmax(x / T) ignores.
    result = judge_temperature(np.log(np.clip(probs, 1e-12, 1.0)), y_true, where=str(run_dir))
    result = {"fitted_on": "val", "images": len(records), "splits_sha256": file_sha256(splits_file), **result}
    if result["stored"]:
        write_json(path, {k: v for k, v in result.items() if k != "stored"})
    return result


def judge_temperature(log_probs: np.ndarray, y_true: np.ndarray, where: str = "calibration") -> dict:
    """Fit T and decide whether it is worth storing: a fit at the search bound is refused (T -> 20
    flattens every probability towards 1/3, T -> 0.05 makes them 0 or 1: the validation predictions
    hold no usable confidence); one that raises the validation ECE is not stored (``stored`` False)."""
    temperature = fit_temperature(log_probs, y_true)
    if min(abs(math.log(temperature / bound)) for bound in T_BOUNDS) < 1e-3:
        raise ConfigError(
            f"{where}: temperature {temperature:.3g}: the fit stopped at its bound ({T_BOUNDS[0]:g} to {T_BOUNDS[1]:g}), so the validation predictions "
            "carry no confidence worth rescaling; the model is left uncalibrated (check it is trained, or that the split is its own)"
        )
    before = expected_calibration_error(apply_temperature(log_probs, 1.0), y_true)
    after = expected_calibration_error(apply_temperature(log_probs, temperature), y_true)
    return {"temperature": temperature, "ece_before": before, "ece_after": after, "n_bins": N_BINS, "stored": after <= before}
