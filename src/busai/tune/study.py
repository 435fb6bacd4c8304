"""Studies whose trials are ordinary ``busai.training.train`` runs: objective, pruning, resume, workers."""

from __future__ import annotations

import copy
import json
import os
import socket
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import optuna
import sqlalchemy.exc
from optuna.trial import TrialState

from busai.config import TrainConfig
from busai.errors import ConfigError
from busai.outputs import output_dir
from busai.runs import LAST_CHECKPOINT, write_json
from busai.tune.outputs import KILLED_REASON, trial_seconds, was_killed, write_outputs  # noqa: F401  (KILLED_REASON: part of study's interface)
from busai.tune.space import DIRECTIONS, default_space, paper_trial_params, suggest_config, task_name, validate_space
from busai.tune.storage import default_storage, open_storage, redact

PRUNERS = ("median", "hyperband", "patience")
TRIAL_PATIENCE = 10  # the paper: a trial stops after 10 epochs without a lower validation loss
_MAX_CONSECUTIVE_FAILURES = 3  # a setup that fails every trial stops instead of burning the budget


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
    data: str | Path | list[str],
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
    count towards ``trials``, except those whose worker was killed mid-trial (:func:`fail_dead_trials`
    marks them FAIL; the study runs others in their place). Workers sharing a storage should get
    different ``seed`` values.
    """

    task = task_name(task)
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
    from busai.data.sources import parse_data_specs

    stored = [spec.to_config() for spec in parse_data_specs(data)]  # reading options travel into each trial's config
    base.data = stored[0] if len(stored) == 1 else stored
    base.splits = str(splits)
    base.patience, base.max_minutes = trial_patience, trial_minutes

    output_dir(out_dir)
    storage_url = storage or default_storage(out_dir)
    study_name = study_name or out_dir.resolve().name
    study = optuna.create_study(
        storage=open_storage(storage_url),
        study_name=study_name,
        direction=DIRECTIONS[task],
        pruner=make_pruner(pruner, space),
        load_if_exists=True,
    )
    _check_same_study(study, task, space, storage_url)
    fail_dead_trials(study)
    existing = len(study.get_trials(deepcopy=False))
    counted = counted_trials(study)
    if existing == 0 and any((out_dir / "trials").glob("trial_*")):
        raise ConfigError(f"{out_dir / 'trials'}: holds trial runs of another study; use a new --out folder or delete it")
    # Offsetting by the trials already there keeps a resumed study from replaying its first samples.
    # constant_liar keeps parallel workers from sampling next to each other's running trials.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        study.sampler = optuna.samplers.TPESampler(seed=None if seed is None else seed + existing, constant_liar=True)
    write_json(
        out_dir / "space.json",
        {"task": task, "space": space, "pruner": pruner, "trial_patience": trial_patience, "trial_minutes": trial_minutes, "base": base.to_dict()},
    )

    if paper and existing == 0:
        params, row = paper
        study.enqueue_trial(params, user_attrs={"paper_settings": row})

    stopper = _StopAfterFailures(_MAX_CONSECUTIVE_FAILURES)
    callbacks = [_StopAtTrials(trials), stopper]
    if on_trial is not None:
        callbacks.append(lambda s, t: on_trial(_trial_record(s, t)))
    try:
        if counted < trials:
            study.optimize(
                _objective(task, space, base, out_dir, command),
                n_trials=trials - counted,
                timeout=timeout_minutes * 60 if timeout_minutes else None,
                catch=(Exception,),
                callbacks=callbacks,
            )
    finally:  # an interrupted study still leaves its summary and plots
        summary = write_outputs(study, out_dir, task=task, storage_url=storage_url, command=command, stopped_by_failures=stopper.stopped)
    return StudySummary(study_name, task, str(out_dir), summary)


def _check_inputs(data, splits) -> None:
    from busai.data.splits import read_splits
    from busai.errors import DataError

    from busai.data.sources import parse_data_specs

    for spec in parse_data_specs(data):
        if not spec.path.exists():
            raise DataError(f"--data {spec}: not found; pass the dataset folder or CSV manifest")
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


WORKER = "worker"  # trial user attribute: host and process id of the worker running it


def counted_trials(study: optuna.Study) -> int:
    """Trials that count towards ``--trials``: every one but those :func:`was_killed`."""
    return sum(not was_killed(t) for t in study.get_trials(deepcopy=False))


class _StopAtTrials:
    """Optuna's MaxTrialsCallback, counting as :func:`counted_trials` does."""

    def __init__(self, trials: int):
        self.trials = trials

    def __call__(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        if counted_trials(study) >= self.trials:
            study.stop()


def fail_dead_trials(study: optuna.Study) -> None:
    """Mark FAIL the RUNNING trials whose worker is gone, so a re-run finishes the study.

    Optuna's heartbeat (see :func:`busai.tune.storage.open_storage`) catches a worker on any
    machine once its grace period has passed; a worker on this machine whose process no longer
    exists is caught at once, so re-running the command right after a kill works without waiting.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)
    host = socket.gethostname()
    for trial in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = trial.user_attrs.get(WORKER) or {}
        if worker.get("host") != host or _process_alive(worker.get("pid")):
            continue
        try:  # the storage calls Optuna's own fail_stale_trials makes (it has no public per-trial one)
            study._storage.set_trial_state_values(trial._trial_id, state=TrialState.FAIL)
        except optuna.exceptions.UpdateFinishedTrialError:
            pass  # another worker failed it first


def _process_alive(pid) -> bool:
    if not isinstance(pid, int):
        return True  # unknown: leave it to the heartbeat
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _objective(task: str, space: dict, base: TrainConfig, out_dir: Path, command: str | None):
    objective = _trial_objective(task, space, base, out_dir, command)

    def recorded(trial: optuna.Trial) -> float:
        trial.set_user_attr(WORKER, {"host": socket.gethostname(), "pid": os.getpid()})
        try:
            return objective(trial)
        except optuna.TrialPruned:
            raise
        except Exception as exc:  # any failure inside the objective has a reason: see was_killed
            if "fail_reason" not in trial.user_attrs:
                trial.set_user_attr("fail_reason", f"{type(exc).__name__}: {exc}"[:500])
            raise

    return recorded


def _trial_objective(task: str, space: dict, base: TrainConfig, out_dir: Path, command: str | None):
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
            (run_dir / LAST_CHECKPOINT).unlink(missing_ok=True)  # trials are re-run, never resumed
        return objective_value(task, rows)

    return objective


def _record_best_epoch(trial: optuna.Trial, rows: list[dict]) -> None:
    """One user attribute (one storage write): epochs run and the validation scores of the best epoch."""
    best = min(rows, key=lambda row: row["val_loss"])
    metrics = {"epochs_run": len(rows), "best_epoch": best["epoch"], **{k: v for k, v in best.items() if k.startswith("val_")}}
    trial.set_user_attr("metrics", metrics)


def _trial_record(study: optuna.Study, trial: optuna.trial.FrozenTrial) -> dict:
    try:
        best = study.best_trial
        best_number, best_value = best.number, best.value
    except ValueError:
        best_number = best_value = None
    return {
        "number": trial.number,
        "state": trial.state.name,
        "value": trial.value,
        "params": trial.params,
        "seconds": trial_seconds(trial),
        "epochs_run": trial.user_attrs.get("metrics", {}).get("epochs_run"),
        "fail_reason": trial.user_attrs.get("fail_reason"),
        "best_number": best_number,
        "best_value": best_value,
    }
