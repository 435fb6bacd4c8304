"""Hyper-parameter search with Optuna: the paper's search spaces as data, and studies whose trials
are ordinary ``busai.training.train`` runs.

A space maps a :class:`~busai.config.TrainConfig` key to a spec ``{"type": ..., ...}``:
``loguniform`` / ``uniform`` (``low``, ``high``), ``int`` (``low``, ``high``), ``categorical``
(``choices``) or ``fixed`` (``value``). ``when: {key: [values]}`` makes a parameter conditional
on an earlier one (Adam's betas), and ``note`` says why an entry differs from the paper.

A study folder holds ``study.db`` (the default storage), ``space.json``, ``summary.json``,
``best_config.json`` (a config for ``busai train --config``), ``trials.csv``, the plots
``history.png`` / ``importances.png`` / ``parallel.png`` and ``trials/trial_NNNN/`` run folders.

Objectives: segmentation minimises the trial's lowest validation loss (the paper's objective);
classification maximises validation macro-F1 at the epoch with the lowest validation loss, i.e.
the F1 of the checkpoint ``busai train`` keeps (the paper scores trials by macro-F1; taking the
maximum over epochs instead would reward a lucky epoch on a ~80-image validation split).
"""

from __future__ import annotations

import copy
import csv
import random
import time
import json
import math
import os
import statistics
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
import sqlalchemy.exc
from optuna.trial import TrialState

from busai.config import TASK_ALIASES, TrainConfig
from busai import paper
from busai.errors import ConfigError, read_json

# The paper's spaces (section 2.5). Keys are TrainConfig keys, so a sampled point is a run config.
SEGMENTATION_SPACE: dict[str, dict] = {
    "model": {"type": "categorical", "choices": ["unet", "unetplusplus", "deeplabv3"]},  # the decoder; the paper ran one study per decoder
    "encoder": {"type": "categorical", "choices": ["resnet18", "efficientnet-b0", "mobilenet_v2", "vgg16", "efficientnet-lite0"]},
    "lr": {"type": "loguniform", "low": 1e-5, "high": 1e-3},
    "weight_decay": {"type": "loguniform", "low": 1e-5, "high": 1e-3},
    "batch_size": {"type": "categorical", "choices": [4, 8, 16]},
    "optimizer": {"type": "categorical", "choices": ["adam", "adamw", "rmsprop", "sgd", "adagrad"]},
    "image_size": {"type": "categorical", "choices": [256, 288, 320]},
    "epochs": {"type": "int", "low": 10, "high": 100},
}
_ADAM = {"optimizer": ["adam", "adamw"]}
CLASSIFICATION_SPACE: dict[str, dict] = {
    "model": {"type": "categorical", "choices": ["resnet18", "densenet121", "inception_v3", "mobilenet_v3_large", "googlenet", "efficientnet_lite0"]},
    "lr": {"type": "loguniform", "low": 1e-5, "high": 1e-1},
    "batch_size": {"type": "categorical", "choices": [8, 16, 32]},
    "weight_decay": {"type": "loguniform", "low": 1e-5, "high": 1e-1},
    "focal_alpha": {"type": "uniform", "low": 0.3, "high": 0.75},
    "focal_gamma": {"type": "uniform", "low": 3.0, "high": 5.0},
    "optimizer": {"type": "categorical", "choices": ["sgd", "adam", "rmsprop", "adamw"]},
    # The paper gives no beta ranges; these hold its Table 5 values and torch's defaults.
    "beta1": {"type": "uniform", "low": 0.8, "high": 0.95, "when": _ADAM},
    "beta2": {"type": "uniform", "low": 0.9, "high": 0.999, "when": _ADAM},
    "epochs": {"type": "fixed", "value": 100},  # paper: 100 epochs per trial, early stopping after 10
}
SPACES = {"segmentation": SEGMENTATION_SPACE, "classification": CLASSIFICATION_SPACE}

# The paper's tuned settings (Table 3 per decoder, Table 5 per model, from busai.paper) in this
# space's keys. `--enqueue-paper` runs the row as a study's first trial, so "did tuning beat the
# paper's settings?" is answered under the same budget. Table 3's U-Net++ weight decay (1.09011)
# lies outside the paper's own range and is stored as None there: left to the sampler.
def _space_row(settings: dict) -> dict:
    row = {k: v for k, v in settings.items() if v is not None and k != "betas"}
    if settings.get("betas"):
        row["beta1"], row["beta2"] = settings["betas"]
    return row


PAPER_SETTINGS = {
    "segmentation": {decoder: _space_row(s) for (_encoder, decoder), s in paper.SEGMENTATION_SETTINGS.items()},
    "classification": {name: _space_row(s) for name, s in paper.CLASSIFICATION_SETTINGS.items()},
}
# Models the paper did not tune borrow the row of their nearest paper model (same family).
PAPER_SETTINGS_STANDIN = {"efficientnet_lite0": "mobilenet_v3_large"}
DIRECTIONS = {"segmentation": "minimize", "classification": "maximize"}
OBJECTIVES = {
    "segmentation": "lowest validation loss (Dice loss) of the trial",
    "classification": "validation macro-F1 at the epoch with the lowest validation loss",
}
PRUNERS = ("median", "hyperband", "patience")
TRIAL_PATIENCE = 10  # the paper: a trial stops after 10 epochs without a lower validation loss
_TYPES = ("loguniform", "uniform", "int", "categorical", "fixed")
_BETAS = ("beta1", "beta2")  # sampled separately, stored as TrainConfig.betas
_MAX_CONSECUTIVE_FAILURES = 3  # a setup that fails every trial stops instead of burning the budget


# ---------------------------------------------------------------------------------------- spaces


def default_space(task: str) -> dict[str, dict]:
    return copy.deepcopy(SPACES[_task(task)])


def _task(task: str) -> str:
    name = TASK_ALIASES.get(str(task).lower())
    if name is None:
        raise ConfigError(f"task '{task}': unknown; use seg or cls")
    return name


def narrow_space(space: dict[str, dict], overrides: dict[str, Any], source: str = "--space") -> dict[str, dict]:
    """A copy of ``space`` narrowed by ``overrides`` (key -> value); values must stay inside the space.

    A value is ``"LOW:HIGH"`` (or ``[LOW, HIGH]``) for a numeric range, ``"A,B"`` (or a list) for a
    subset of choices, or one value, which fixes the parameter. Keys may use dashes.
    """
    space = copy.deepcopy(space)
    for raw_key, value in overrides.items():
        key = str(raw_key).strip().replace("-", "_")
        where = f"{source} {raw_key}={_show(value)}"
        if key not in space:
            raise ConfigError(f"{where}: unknown parameter; choose from {', '.join(space)}")
        spec = space[key]
        space[key] = _narrow_one(spec, value, where)
    return space


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _narrow_one(spec: dict, value: Any, where: str) -> dict:
    kind = spec["type"]
    keep = {k: spec[k] for k in ("when", "note") if k in spec}
    if kind == "fixed":
        raise ConfigError(f"{where}: fixed at {spec['value']} in this space; change it with --max-epochs / --image-size or --config")
    if kind == "categorical":
        items = value if isinstance(value, list) else [v for v in str(value).split(",") if v.strip()]
        if not items:
            raise ConfigError(f"{where}: no choices given; pass e.g. {spec['choices'][0]}")
        chosen = []
        for item in items:
            match = next((c for c in spec["choices"] if str(c) == str(item).strip()), None)
            if match is None:
                raise ConfigError(f"{where}: '{item}' is not in the space; choose from {', '.join(map(str, spec['choices']))}")
            if match not in chosen:
                chosen.append(match)
        if len(chosen) == 1:
            return {"type": "fixed", "value": chosen[0], **keep}
        return {"type": "categorical", "choices": chosen, **keep}
    # numeric: loguniform, uniform, int
    cast = int if kind == "int" else float
    if isinstance(value, list):
        parts = value
    elif isinstance(value, (int, float)):
        parts = [value]
    else:
        parts = str(value).split(":")
    if len(parts) not in (1, 2):
        raise ConfigError(f"{where}: expected LOW:HIGH or one value")
    try:
        bounds = [int(str(p).strip()) if cast is int else float(p) for p in parts]  # int("10.5") refuses a fraction
        if not all(math.isfinite(b) for b in bounds):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: not {'an integer' if cast is int else 'a number'}; write e.g. {spec['low']}:{spec['high']}") from None
    low, high = bounds[0], bounds[-1]
    if low > high:
        raise ConfigError(f"{where}: low {low} is above high {high}; write LOW:HIGH")
    if low < spec["low"] or high > spec["high"]:
        raise ConfigError(f"{where}: outside the space {spec['low']}..{spec['high']}; narrow within it")
    if low == high:
        return {"type": "fixed", "value": low, **keep}
    return {**spec, "low": low, "high": high}


def read_space_file(path: str | Path) -> dict[str, Any]:
    """A JSON object of overrides in :func:`narrow_space`'s syntax, e.g. ``{"lr": "1e-4:1e-3", "encoder": ["resnet18"]}``."""
    data = read_json(path, missing='space file not found; pass a JSON file like {"lr": "1e-4:1e-3"}', fix="fix the file")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must hold a JSON object of parameter -> range or choices")
    return data


def parse_space_flags(flags: list[str]) -> dict[str, str]:
    """``["lr=1e-4:1e-3", "encoder=resnet18,vgg16"]`` -> ``{"lr": "1e-4:1e-3", ...}``."""
    overrides = {}
    for flag in flags:
        key, sep, value = flag.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(f"--space {flag}: expected KEY=VALUE, e.g. --space lr=1e-4:1e-3 or --space encoder=resnet18,vgg16")
        overrides[key.strip()] = value.strip()
    return overrides


def apply_budget(space: dict[str, dict], *, image_size: int | None = None, max_epochs: int | None = None) -> dict[str, dict]:
    """CPU-budget overrides, which may leave the paper's ranges: fixed image size, capped epochs (noted in the spec)."""
    space = copy.deepcopy(space)
    if image_size is not None:
        if image_size < 32:
            raise ConfigError(f"--image-size {image_size}: too small; use 32 or more")
        was = space.get("image_size")
        space["image_size"] = {"type": "fixed", "value": int(image_size), "note": f"--image-size (CPU budget; the space had {_describe(was) if was else 'the model default'})"}
    if max_epochs is not None:
        if max_epochs < 1:
            raise ConfigError(f"--max-epochs {max_epochs}: must be 1 or more")
        spec = space["epochs"]
        note = f"--max-epochs {max_epochs} (CPU budget; the space had {_describe(spec)})"
        if spec["type"] == "fixed":
            space["epochs"] = {"type": "fixed", "value": min(spec["value"], max_epochs), "note": note}
        elif spec["high"] > max_epochs:
            low = min(spec["low"], max_epochs)
            space["epochs"] = {"type": "fixed", "value": max_epochs, "note": note} if low == max_epochs else {**spec, "low": low, "high": max_epochs, "note": note}
    return space


def _describe(spec: dict) -> str:
    kind = spec["type"]
    if kind == "fixed":
        return f"{spec['value']}"
    if kind == "categorical":
        return "{" + ", ".join(map(str, spec["choices"])) + "}"
    return f"{kind} {spec['low']:g}..{spec['high']:g}"


def build_space(task: str, *, space_file: str | Path | None = None, space_flags: list[str] = (),
                image_size: int | None = None, max_epochs: int | None = None) -> dict[str, dict]:
    """The task's paper space, narrowed by a file then by ``--space`` flags, then the CPU-budget overrides."""
    space = default_space(task)
    if space_file:
        space = narrow_space(space, read_space_file(space_file), source=str(space_file))
    if space_flags:
        space = narrow_space(space, parse_space_flags(list(space_flags)))
    return apply_budget(space, image_size=image_size, max_epochs=max_epochs)


def describe_space(space: dict[str, dict]) -> list[str]:
    """One line per parameter, for printing with the study."""
    width = max(map(len, space))
    lines = []
    for key, spec in space.items():
        extra = ""
        if "when" in spec:
            extra += " when " + ", ".join(f"{k} in {{{', '.join(v)}}}" for k, v in spec["when"].items())
        if "note" in spec:
            extra += f"  [{spec['note']}]"
        lines.append(f"{key:<{width}}  {_describe(spec)}{extra}")
    return lines


def validate_space(space: dict[str, dict], source: str = "space") -> None:
    for key, spec in space.items():
        if spec.get("type") not in _TYPES:
            raise ConfigError(f"{source}: parameter '{key}' has type {spec.get('type')!r}; use one of {', '.join(_TYPES)}")


def suggest_config(trial: optuna.trial.BaseTrial, space: dict[str, dict], base: TrainConfig) -> TrainConfig:
    """Sample one point of ``space`` with ``trial`` on top of ``base``; returns a validated TrainConfig."""
    values = base.to_dict()
    betas: dict[str, float] = {}
    for key, spec in space.items():
        if any(values.get(k) not in allowed for k, allowed in spec.get("when", {}).items()):
            continue
        kind = spec["type"]
        if kind == "fixed":
            value = spec["value"]
        elif kind == "categorical":
            value = trial.suggest_categorical(key, spec["choices"])
        elif kind == "int":
            value = trial.suggest_int(key, spec["low"], spec["high"])
        else:
            value = trial.suggest_float(key, spec["low"], spec["high"], log=kind == "loguniform")
        if key in _BETAS:
            betas[key] = value
        else:
            values[key] = value
    if betas:
        default = base.betas or (0.9, 0.999)
        values["betas"] = (betas.get("beta1", default[0]), betas.get("beta2", default[1]))
    return TrainConfig.from_dict(values, source="search space")


# ---------------------------------------------------------------------------------------- study


@dataclass
class StudySummary:
    study: str
    task: str
    out_dir: str
    summary: dict = field(default_factory=dict)

    @property
    def best_value(self) -> float | None:
        best = self.summary.get("best")
        return best["value"] if best else None

    def to_dict(self) -> dict:
        return self.summary


def objective_value(task: str, history: list[dict]) -> float:
    """The study objective from a trial's history rows so far (see the module docstring)."""
    best = min(history, key=lambda row: row["val_loss"])  # first minimum, as the engine keeps it
    return float(best["val_loss"] if task == "segmentation" else best["val_macro_f1"])


def make_pruner(name: str, space: dict[str, dict]) -> optuna.pruners.BasePruner:
    """median / hyperband prune against other trials; patience only stops a trial after 10 flat
    epochs (the engine's early stopping), keeping it COMPLETE with its best value.

    Optuna's PatientPruner is not used for "patience": without a wrapped pruner it would mark every
    trial that has plateaued as PRUNED, dropping its (often best) value from the study.
    """
    if name == "median":
        return optuna.pruners.MedianPruner(n_startup_trials=4, n_warmup_steps=3)
    if name == "hyperband":
        epochs = space["epochs"]
        max_epochs = epochs["value"] if epochs["type"] == "fixed" else epochs["high"]
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs, reduction_factor=3)
    if name == "patience":
        return optuna.pruners.NopPruner()
    raise ConfigError(f"--pruner {name}: unknown; choose one of {', '.join(PRUNERS)}")


def default_storage(out_dir: str | Path) -> str:
    return f"sqlite:///{Path(out_dir).resolve() / 'study.db'}"


def _storage(url: str) -> optuna.storages.RDBStorage:
    # The heartbeat marks a trial whose worker died as FAIL, so a re-run resumes cleanly.
    engine_kwargs = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for _ in range(5):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeat: experimental since 2.9
                return optuna.storages.RDBStorage(url, engine_kwargs=engine_kwargs, heartbeat_interval=30, grace_period=120)
        except sqlalchemy.exc.DatabaseError as exc:
            # Workers starting together on an empty database race to create its tables (optuna#1092):
            # the loser finds them on a retry. A server that is down fails every attempt.
            error = exc
            time.sleep(0.2 + random.random() * 0.5)
        except Exception as exc:  # bad URL, missing driver
            error = exc
            break
    raise ConfigError(f"--storage {redact(url)}: cannot open ({type(error).__name__}: {str(error).splitlines()[0]}); "
                      "check the URL, that the server runs and that its driver (e.g. psycopg2-binary) is installed")


def redact(url: str) -> str:
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:
        return url


class _StopAfterFailures:
    """Stop this worker after N failed trials in a row: a broken setup fails every trial."""

    def __init__(self, limit: int):
        self.limit, self.count = limit, 0
        self.stopped = False

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        self.count = self.count + 1 if trial.state == TrialState.FAIL else 0
        if self.count >= self.limit:
            self.stopped = True
            study.stop()


def run_study(
    task: str,
    data: str | Path,
    splits: str | Path,
    *,
    out_dir: str | Path,
    trials: int,
    timeout_minutes: float | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    space: dict[str, dict] | None = None,
    base: TrainConfig | None = None,
    trial_minutes: float | None = None,
    trial_patience: int = TRIAL_PATIENCE,
    pruner: str = "median",
    enqueue_paper: bool = False,
    seed: int | None = 0,
    command: str | None = None,
    on_trial: Callable[[dict], None] | None = None,
) -> StudySummary:
    """Run (or resume) a study until it holds ``trials`` trials or ``timeout_minutes`` pass.

    ``space`` comes from :func:`build_space` (default: the paper's); ``trial_minutes`` caps each
    trial's wall clock and ``trial_patience`` is its early stopping, both set on ``base``.
    ``enqueue_paper`` makes the paper's settings for the study's model the first trial.

    Every trial is one ``busai.training.train`` run in ``out_dir/trials/trial_NNNN``. Re-running
    with the same study name and storage resumes; trials in any state (complete, pruned, failed)
    count towards ``trials``. Workers sharing a storage should get different ``seed`` values.
    """
    from busai.runs import write_json

    task = _task(task)
    out_dir = Path(out_dir)
    space = space if space is not None else default_space(task)
    validate_space(space)
    paper = paper_trial_params(task, space) if enqueue_paper else None
    if trials < 1:
        raise ConfigError(f"--trials {trials}: must be 1 or more")
    if timeout_minutes is not None and timeout_minutes <= 0:
        raise ConfigError(f"--timeout {timeout_minutes}: must be positive minutes")
    _check_inputs(data, splits)
    base = copy.deepcopy(base) if base is not None else TrainConfig(task=task)
    if base.task != task:
        raise ConfigError(f"--config: is a {base.task} config but the study is {task}; pass a matching config")
    base.data, base.splits = str(data), str(splits)
    base.patience, base.max_minutes = trial_patience, trial_minutes

    out_dir.mkdir(parents=True, exist_ok=True)
    storage_url = storage or default_storage(out_dir)
    study_name = study_name or out_dir.resolve().name
    study = optuna.create_study(
        storage=_storage(storage_url), study_name=study_name, direction=DIRECTIONS[task],
        pruner=make_pruner(pruner, space), load_if_exists=True,
    )
    _check_same_study(study, task, space, storage_url)
    existing = len(study.get_trials(deepcopy=False))
    if existing == 0 and any((out_dir / "trials").glob("trial_*")):
        raise ConfigError(f"{out_dir / 'trials'}: holds trial runs of another study; use a new --out folder or delete it")
    # Offsetting by the trials already there keeps a resumed study from replaying its first samples.
    # constant_liar keeps parallel workers from sampling next to each other's running trials.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.sampler = optuna.samplers.TPESampler(seed=None if seed is None else seed + existing, constant_liar=True)
    write_json(out_dir / "space.json", {"task": task, "space": space, "pruner": pruner, "trial_patience": trial_patience,
                                        "trial_minutes": trial_minutes, "base": base.to_dict()})

    if paper and existing == 0:
        params, row = paper
        study.enqueue_trial(params, user_attrs={"paper_settings": row})

    stopper = _StopAfterFailures(_MAX_CONSECUTIVE_FAILURES)
    callbacks = [optuna.study.MaxTrialsCallback(trials, states=None), stopper]
    if on_trial is not None:
        callbacks.append(lambda s, t: on_trial(_trial_record(s, t)))
    try:
        if existing < trials:
            study.optimize(
                _objective(task, space, base, out_dir, command), n_trials=trials - existing,
                timeout=timeout_minutes * 60 if timeout_minutes else None, catch=(Exception,), callbacks=callbacks,
            )
    finally:  # an interrupted study still leaves its summary and plots
        summary = write_outputs(study, out_dir, task=task, storage_url=storage_url, command=command, stopped_by_failures=stopper.stopped)
    return StudySummary(study_name, task, str(out_dir), summary)


def paper_trial_params(task: str, space: dict[str, dict]) -> tuple[dict, str]:
    """The paper's row for the space's (fixed) model, restricted to values the space can sample."""
    model = space.get("model", {})
    if model.get("type") != "fixed":
        raise ConfigError("--enqueue-paper: needs one model (the paper tuned each separately); add e.g. --space model=unet")
    name = model["value"]
    row = PAPER_SETTINGS_STANDIN.get(name, name)
    settings = PAPER_SETTINGS[task].get(row)
    if settings is None:
        raise ConfigError(f"--enqueue-paper: the paper has no tuned settings for {name}; drop the option")
    return {k: v for k, v in settings.items() if k in space and _samples(space[k], v)}, row


def _samples(spec: dict, value: Any) -> bool:
    if spec["type"] == "categorical":
        return value in spec["choices"]
    return spec["type"] != "fixed" and spec["low"] <= value <= spec["high"]


def _check_inputs(data, splits) -> None:
    from busai.data.splits import read_splits
    from busai.errors import DataError

    if not Path(data).is_dir():
        raise DataError(f"--data {data}: folder not found; pass the dataset folder")
    read_splits(splits)  # raises a one-line error for a missing or malformed file


def _check_same_study(study: optuna.Study, task: str, space: dict, storage_url: str) -> None:
    stored = study.user_attrs
    if not stored:
        try:
            study.set_user_attr("task", task)
            study.set_user_attr("space", space)
            return
        except sqlalchemy.exc.IntegrityError:  # another worker wrote them first: compare with theirs
            stored = study.user_attrs
    if stored.get("task") != task or stored.get("space") != json.loads(json.dumps(space)):
        raise ConfigError(
            f"--study {study.study_name}: already exists in {redact(storage_url)} with a different task or search space; "
            "re-run with the same --space/--image-size/--max-epochs options, or pass a new --study"
        )


def _objective(task: str, space: dict, base: TrainConfig, out_dir: Path, command: str | None):
    from busai import training

    def objective(trial: optuna.Trial) -> float:
        cfg = suggest_config(trial, space, base)
        run_dir = out_dir / "trials" / f"trial_{trial.number:04d}"
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("config", cfg.to_dict())
        rows: list[dict] = []

        def on_epoch(epoch: int, row: dict) -> None:
            rows.append(row)
            trial.report(objective_value(task, rows), epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(f"pruned after epoch {epoch}")

        try:
            training.train(cfg, run_dir, quiet=True, on_epoch=on_epoch, command=command)
        except optuna.TrialPruned:
            raise
        except Exception as exc:  # recorded with the FAIL state; Optuna 5 keeps no reason itself
            trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}"[:500])
            raise
        finally:
            if rows:
                _record_best_epoch(trial, rows)
            (run_dir / "checkpoint_last.pt").unlink(missing_ok=True)  # trials are re-run, never resumed
        return objective_value(task, rows)

    return objective


def _record_best_epoch(trial: optuna.Trial, rows: list[dict]) -> None:
    """One user attribute (one storage write): epochs run and the validation scores of the best epoch."""
    best = min(rows, key=lambda row: row["val_loss"])
    metrics = {"epochs_run": len(rows), "best_epoch": best["epoch"], **{k: v for k, v in best.items() if k.startswith("val_")}}
    trial.set_user_attr("metrics", metrics)


def _duration(trial: optuna.trial.FrozenTrial) -> float | None:
    if trial.datetime_start and trial.datetime_complete:
        return (trial.datetime_complete - trial.datetime_start).total_seconds()
    return None


def _trial_record(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict:
    try:
        best = study.best_trial
        best_number, best_value = best.number, best.value
    except ValueError:
        best_number = best_value = None
    return {
        "number": trial.number, "state": trial.state.name, "value": trial.value, "params": trial.params,
        "seconds": _duration(trial), "epochs_run": trial.user_attrs.get("metrics", {}).get("epochs_run"),
        "fail_reason": trial.user_attrs.get("fail_reason"), "best_number": best_number, "best_value": best_value,
    }


# ---------------------------------------------------------------------------------------- outputs


def write_outputs(study: optuna.Study, out_dir: str | Path, *, task: str, storage_url: str, command: str | None = None,
                  stopped_by_failures: bool = False) -> dict:
    """summary.json, best_config.json, trials.csv and the plots from the study's current state."""
    from busai.runs import write_json

    out_dir = Path(out_dir)
    trials = study.get_trials(deepcopy=False)
    counts = {state.name: sum(t.state == state for t in trials) for state in TrialState}
    counts = {k: v for k, v in counts.items() if v}

    def mean_seconds(state: TrialState) -> float | None:
        seconds = [d for t in trials if t.state == state and (d := _duration(t)) is not None]
        return round(statistics.mean(seconds), 1) if seconds else None

    best = None
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if complete:
        trial = study.best_trial
        best = {"number": trial.number, "value": trial.value, "params": trial.params,
                "metrics": trial.user_attrs.get("metrics", {}),
                "run_dir": trial.user_attrs.get("run_dir")}
        config = dict(trial.user_attrs["config"])
        config["max_minutes"] = None  # the per-trial time cap is a tuning budget, not part of the configuration
        write_json(out_dir / "best_config.json", config)
    summary = {
        "study": study.study_name, "task": task, "direction": DIRECTIONS[task], "objective": OBJECTIVES[task],
        "storage": redact(storage_url), "command": command,
        "trials": {"total": len(trials), **counts},
        "seconds_per_trial": {"complete": mean_seconds(TrialState.COMPLETE), "pruned": mean_seconds(TrialState.PRUNED)},
        "best": best,
        "paper_trial": _paper_trial(trials, best, study.direction),
        "retrain": f"busai train --config {out_dir / 'best_config.json'} --out runs/{study.study_name}-best" if best else None,
        "failures": [{"number": t.number, "reason": t.user_attrs.get("fail_reason")} for t in trials if t.state == TrialState.FAIL][:10],
        "stopped_after_consecutive_failures": stopped_by_failures,
        "optuna": optuna.__version__,
    }
    _write_trials_csv(trials, out_dir / "trials.csv")
    summary["plots"] = write_plots(study, out_dir)
    write_json(out_dir / "summary.json", summary)
    return summary


def _paper_trial(trials: list, best: dict | None, direction) -> dict | None:
    """The enqueued paper-settings trial and whether the study's best beat it."""
    trial = next((t for t in trials if "paper_settings" in t.user_attrs), None)
    if trial is None:
        return None
    beaten = None
    if trial.state == TrialState.COMPLETE and best is not None:
        beaten = best["number"] != trial.number and (
            best["value"] < trial.value if direction == optuna.study.StudyDirection.MINIMIZE else best["value"] > trial.value)
    return {"number": trial.number, "row": trial.user_attrs["paper_settings"], "state": trial.state.name, "value": trial.value,
            "params": trial.params, "tuned_beats_paper": beaten}


def _write_trials_csv(trials: list, path: Path) -> None:
    """One row per trial (Optuna's trials_dataframe needs pandas, which busai does not depend on)."""
    params = sorted({k for t in trials for k in t.params})
    metrics = list(dict.fromkeys(k for t in trials for k in t.user_attrs.get("metrics", {})))
    fields = ["number", "state", "value", "seconds", "datetime_start", *[f"params_{k}" for k in params], *metrics, "fail_reason"]
    tmp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with tmp.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=fields)
        writer.writeheader()
        for t in trials:
            writer.writerow({
                "number": t.number, "state": t.state.name, "value": t.value, "seconds": _duration(t),
                "datetime_start": t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else None,
                **{f"params_{k}": t.params.get(k) for k in params}, **t.user_attrs.get("metrics", {}),
                "fail_reason": t.user_attrs.get("fail_reason"),
            })
    tmp.replace(path)


def write_plots(study: optuna.Study, out_dir: Path) -> dict[str, str]:
    """Optuna's optimisation history, parameter importances and parallel coordinates as PNG files."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
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
            tmp = out_dir / f"{name}.{os.getpid()}.tmp.png"
            fig.savefig(tmp, dpi=110, bbox_inches="tight")
            plt.close(fig)
            tmp.replace(out_dir / name)
            written[name] = "written"
        except (ValueError, RuntimeError, ZeroDivisionError) as exc:
            written[name] = f"skipped: {exc}"
    return written


# ---------------------------------------------------------------------------------------- tables

_SEG_COLUMNS = [("Encoder", "encoder"), ("Decoder", "model"), ("Learning rate", "lr"), ("Weight decay", "weight_decay"),
                ("Batch size", "batch_size"), ("Optimizer", "optimizer"), ("Image size", "image_size"), ("Epochs", "epochs")]
_CLS_COLUMNS = [("Model", "model"), ("Optimizer", "optimizer"), ("Learning rate", "lr"), ("Weight decay", "weight_decay"),
                ("FL(α)", "focal_alpha"), ("FL(γ)", "focal_gamma"), ("Batch size", "batch_size"), ("β1", "beta1"), ("β2", "beta2")]


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
    if key in _BETAS:
        betas = config.get("betas")
        return "N/A" if config.get("optimizer") not in ("adam", "adamw") or not betas else _fmt(betas[_BETAS.index(key)])
    return _fmt(config.get(key))


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.3g}" if value and (abs(value) < 1e-2 or abs(value) >= 1e4) else f"{value:.4g}" if not math.isnan(value) else "nan"
    return str(value)
