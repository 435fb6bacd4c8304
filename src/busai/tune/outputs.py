"""A study's outputs: summary.json, best_config.json, trials.csv, Optuna's plots and the best-parameter tables."""

from __future__ import annotations

import csv
import json
import math
import statistics
import warnings
from pathlib import Path
from typing import Any

import optuna
from optuna.trial import TrialState

from busai.errors import ConfigError
from busai.outputs import atomic_path, atomic_write
from busai.runs import write_json
from busai.tune.space import BETAS, DIRECTIONS, OBJECTIVES
from busai.tune.storage import redact


KILLED_REASON = "its worker stopped mid-trial (killed, interrupted or crashed); not counted towards --trials"


def was_killed(trial: optuna.trial.FrozenTrial) -> bool:
    """A FAIL trial the objective did not fail: its worker died or was interrupted while running it.

    Every exception inside the objective records ``fail_reason``; only a trial whose process
    vanished (or met Ctrl-C) reaches FAIL without one.
    """
    return trial.state == TrialState.FAIL and "fail_reason" not in trial.user_attrs


def trial_seconds(trial: optuna.trial.FrozenTrial) -> float | None:
    if trial.datetime_start and trial.datetime_complete:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return None


def write_outputs(
    study: optuna.Study, out_dir: str | Path, *, task: str, storage_url: str, command: str | None = None, stopped_by_failures: bool = False
) -> dict:
    """summary.json, best_config.json, trials.csv and the plots from the study's current state."""

    out_dir = Path(out_dir)
    trials = study.get_trials(deepcopy=False)
    counts = {state.name: sum(t.state == state for t in trials) for state in TrialState}
    counts = {k: v for k, v in counts.items() if v}

    def mean_seconds(state: TrialState) -> float | None:
        seconds = [d for t in trials if t.state == state and (d := trial_seconds(t)) is not None]
        return round(statistics.mean(seconds), 1) if seconds else None

    best = None
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        trial = study.best_trial
        best = {
            "number": trial.number,
            "value": trial.value,
            "params": trial.params,
            "metrics": trial.user_attrs.get("metrics", {}),
            "run_dir": trial.user_attrs.get("run_dir"),
        }
        config = dict(trial.user_attrs["config"])
        config["max_minutes"] = None  # the per-trial time cap is a tuning budget, not part of the configuration
        write_json(out_dir / "best_config.json", config)
    summary = {
        "study": study.study_name,
        "task": task,
        "direction": DIRECTIONS[task],
        "objective": OBJECTIVES[task],
        "storage": redact(storage_url),
        "command": command,
        "trials": {"total": len(trials), **counts},
        "seconds_per_trial": {"complete": mean_seconds(TrialState.COMPLETE), "pruned": mean_seconds(TrialState.PRUNED)},
        "best": best,
        "paper_trial": _paper_trial(trials, best, study.direction),
        "retrain": f"busai train --config {out_dir / 'best_config.json'} --out runs/{study.study_name}-best" if best else None,
        "failures": [{"number": t.number, "reason": _fail_reason(t)} for t in trials if t.state == TrialState.FAIL][:10],
        "stopped_after_consecutive_failures": stopped_by_failures,
        "optuna": optuna.__version__,
    }
    _write_trials_csv(trials, out_dir / "trials.csv")
    summary["plots"] = write_plots(study, out_dir)
    write_json(out_dir / "summary.json", summary)
    return summary


def _fail_reason(trial: optuna.trial.FrozenTrial) -> str | None:
    return KILLED_REASON if was_killed(trial) else trial.user_attrs.get("fail_reason")


def _paper_trial(trials: list, best: dict | None, direction) -> dict | None:
    """The enqueued paper-settings trial and whether the study's best beat it."""
    trial = next((t for t in trials if "paper_settings" in t.user_attrs), None)
    if trial is None:
        return None
    beaten = None
    if trial.state == TrialState.COMPLETE and best is not None:
        beaten = best["number"] != trial.number and (
            best["value"] < trial.value if direction == optuna.study.StudyDirection.MINIMIZE else best["value"] > trial.value
        )
    return {
        "number": trial.number,
        "row": trial.user_attrs["paper_settings"],
        "state": trial.state.name,
        "value": trial.value,
        "params": trial.params,
        "tuned_beats_paper": beaten,
    }


def _write_trials_csv(trials: list, path: Path) -> None:
    """One row per trial (Optuna's trials_dataframe needs pandas, which busai does not depend on)."""
    params = sorted({k for t in trials for k in t.params})
    metrics = list(dict.fromkeys(k for t in trials for k in t.user_attrs.get("metrics", {})))
    fields = ["number", "state", "value", "seconds", "datetime_start", *[f"params_{k}" for k in params], *metrics, "fail_reason"]
    atomic_write(path, lambda tmp: _trials_csv(tmp, trials, fields, params))


def _trials_csv(tmp: Path, trials: list, fields: list[str], params: list[str]) -> None:
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for t in trials:
            writer.writerow(
                {
                    "number": t.number,
                    "state": t.state.name,
                    "value": t.value,
                    "seconds": trial_seconds(t),
                    "datetime_start": t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else None,
                    **{f"params_{k}": t.params.get(k) for k in params},
                    **t.user_attrs.get("metrics", {}),
                    "fail_reason": _fail_reason(t),
                }
            )


def write_plots(study: optuna.Study, out_dir: Path) -> dict[str, str]:
    """Optuna's optimisation history, parameter importances and parallel coordinates as PNG files."""
    import matplotlib.pyplot as plt  # Optuna draws with pyplot; its backend is the caller's (the CLI picks Agg)
    from optuna.visualization import matplotlib as ovm

    complete = [t for t in study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))]
    varying = {k for k in {k for t in complete for k in t.params} if len({repr(t.params.get(k)) for t in complete}) > 1}
    plots = {
        "history.png": (ovm.plot_optimization_history, "no complete trial yet" if not complete else None),
        "importances.png": (ovm.plot_param_importances, None if len(complete) >= 2 and varying else "needs 2 or more complete trials whose parameters differ"),
        "parallel.png": (ovm.plot_parallel_coordinate, "no complete trial yet" if not complete else None),
    }
    written = {}
    for name, (plot, skip) in plots.items():
        if skip:
            written[name] = f"skipped: {skip}"
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # Optuna marks its matplotlib plots experimental
                ax = plot(study)
            fig = (ax.flat[0] if hasattr(ax, "flat") else ax).figure
            fig.set_size_inches(9, 5)
            with atomic_path(out_dir / name) as tmp:
                fig.savefig(tmp, dpi=110, bbox_inches="tight", format="png")
            plt.close(fig)
            written[name] = "written"
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            written[name] = f"skipped: {exc}"
    return written


_SEG_COLUMNS = [
    ("Encoder", "encoder"),
    ("Decoder", "model"),
    ("Learning rate", "lr"),
    ("Weight decay", "weight_decay"),
    ("Batch size", "batch_size"),
    ("Optimizer", "optimizer"),
    ("Image size", "image_size"),
    ("Epochs", "epochs"),
]
_CLS_COLUMNS = [
    ("Model", "model"),
    ("Optimizer", "optimizer"),
    ("Learning rate", "lr"),
    ("Weight decay", "weight_decay"),
    ("FL(α)", "focal_alpha"),
    ("FL(γ)", "focal_gamma"),
    ("Batch size", "batch_size"),
    ("β1", "beta1"),
    ("β2", "beta2"),
]


def best_params_table(study_dirs: list[str | Path]) -> str:
    """Markdown tables of each study's best hyper-parameters, shaped like the paper's Tables 3 and 5."""
    rows: dict[str, list[tuple[dict, dict]]] = {"segmentation": [], "classification": []}
    for folder in study_dirs:
        folder = Path(folder)
        try:
            summary = json.loads((folder / "summary.json").read_text())
        except FileNotFoundError:
            raise ConfigError(f"{folder}: no summary.json; pass a folder written by `busai tune`") from None
        config_path = folder / "best_config.json"
        config = json.loads(config_path.read_text()) if summary.get("best") and config_path.exists() else {}
        rows[summary["task"]].append((summary, config))
    parts = []
    for task, entries in rows.items():
        if not entries:
            continue
        columns = _SEG_COLUMNS if task == "segmentation" else _CLS_COLUMNS
        score = "Val loss" if task == "segmentation" else "Val macro-F1"
        extra = "Val Dice" if task == "segmentation" else "Val accuracy"
        header = ["Study", *[c for c, _ in columns], score, extra, f"{score} with the paper's settings", "Trials (complete / pruned / failed)"]
        lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for summary, config in entries:
            best = summary.get("best") or {}
            cells = [summary["study"], *[_cell(key, config) for _, key in columns]]
            metric = best.get("metrics", {}).get("val_dice" if task == "segmentation" else "val_accuracy")
            t = summary["trials"]
            paper = summary.get("paper_trial") or {}
            paper_value = f"{_fmt(paper.get('value'))} ({paper['state'].lower()})" if paper else "–"
            cells += [_fmt(best.get("value")), _fmt(metric), paper_value, f"{t.get('COMPLETE', 0)} / {t.get('PRUNED', 0)} / {t.get('FAIL', 0)}"]
            lines.append("| " + " | ".join(cells) + " |")
        parts.append("\n".join(lines))
    return "\n\n".join(parts)


def _cell(key: str, config: dict) -> str:
    if not config:
        return "–"
    if key in BETAS:
        betas = config.get("betas")
        return "N/A" if config.get("optimizer") not in ("adam", "adamw") or not betas else _fmt(betas[BETAS.index(key)])
    return _fmt(config.get(key))


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if value and (abs(value) < 1e-2 or abs(value) >= 1e4) else f"{value:.4g}" if not math.isnan(value) else "nan"
    return str(value)
