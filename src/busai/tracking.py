"""Experiment tracking: a run's per-epoch losses, metrics and learning rate in TensorBoard or MLflow.

``history.csv`` stays the run's own record; a tracker copies each epoch's row to where users
compare runs. Both are optional extras (``pip install 'busai[tensorboard]'`` / ``'busai[mlflow]'``).

- ``tensorboard``: event files in ``RUN_DIR/tensorboard`` (``tensorboard --logdir RUN_DIR``).
- ``mlflow``: the experiment ``busai``, one MLflow run per run folder, at ``MLFLOW_TRACKING_URI``
  when set, else in an SQLite file inside the run folder (``RUN_DIR/mlflow.db``; MLflow's plain
  folder store is in maintenance mode and refuses new data by default). A resumed run logs into
  the MLflow run it started (its id is kept in ``RUN_DIR/tracking.json``).
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path

from busai.errors import ConfigError
from busai.outputs import atomic_write_text

TRACKERS = ("none", "tensorboard", "mlflow")
TENSORBOARD_DIR = "tensorboard"
MLFLOW_DB = "mlflow.db"
STATE = "tracking.json"
EXPERIMENT = "busai"
NOT_METRICS = ("epoch", "best", "seconds")


def metric_values(row: dict) -> dict[str, float]:
    """The numbers of one history row worth plotting: losses, validation scores, learning rate."""
    values = {}
    for key, value in row.items():
        if key in NOT_METRICS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if math.isfinite(value):
            values[key] = float(value)
    return values


class Tracker:
    """Does nothing: ``--log none``."""

    def log_config(self, config: dict) -> None:
        pass

    def log_epoch(self, epoch: int, row: dict) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardTracker(Tracker):
    def __init__(self, run_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ConfigError("--log tensorboard: the tensorboard package is not installed; pip install 'busai[tensorboard]'") from None
        self.writer = SummaryWriter(log_dir=str(run_dir / TENSORBOARD_DIR))

    def log_config(self, config: dict) -> None:
        self.writer.add_text("config", "```\n" + json.dumps(config, indent=2, default=str) + "\n```", global_step=0)

    def log_epoch(self, epoch: int, row: dict) -> None:
        for key, value in metric_values(row).items():
            self.writer.add_scalar(key, value, global_step=epoch)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def mlflow_uri(run_dir: Path) -> str:
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{(run_dir / MLFLOW_DB).resolve()}"


class MlflowTracker(Tracker):
    def __init__(self, run_dir: Path):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ConfigError("--log mlflow: the mlflow package is not installed; pip install 'busai[mlflow]'") from None
        self.client = MlflowClient(tracking_uri=mlflow_uri(run_dir))
        state_path = run_dir / STATE
        state = json.loads(state_path.read_text()) if state_path.is_file() else {}
        self.run_id = state.get("mlflow_run_id")
        self.resumed = self.run_id is not None
        if not self.resumed:
            experiment = self.client.get_experiment_by_name(EXPERIMENT)
            experiment_id = (
                experiment.experiment_id
                if experiment
                else self.client.create_experiment(EXPERIMENT, artifact_location=(run_dir / "mlflow-artifacts").resolve().as_uri())
            )
            self.run_id = self.client.create_run(experiment_id, run_name=run_dir.resolve().name, tags={"busai.run_dir": str(run_dir.resolve())}).info.run_id
            atomic_write_text(state_path, json.dumps({**state, "mlflow_run_id": self.run_id, "mlflow_tracking_uri": mlflow_uri(run_dir)}) + "\n")
        else:
            self.client.update_run(self.run_id, status="RUNNING")

    def log_config(self, config: dict) -> None:
        if self.resumed:
            return  # parameters are immutable in MLflow; the first start logged them
        from mlflow.entities import Param

        params = [Param(k, str(v)[:500]) for k, v in config.items()]
        for start in range(0, len(params), 100):  # MLflow's batch limit
            self.client.log_batch(self.run_id, params=params[start : start + 100])

    def log_epoch(self, epoch: int, row: dict) -> None:
        import time

        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, epoch) for k, v in metric_values(row).items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def open_tracker(kind: str | None, run_dir: str | Path) -> Tracker:
    """The tracker ``kind`` names (``none``/None, ``tensorboard`` or ``mlflow``) writing for ``run_dir``."""
    kind = kind or "none"
    if kind not in TRACKERS:
        raise ConfigError(f"--log {kind}: unknown; choose tensorboard, mlflow or none")
    if kind == "none":
        return Tracker()
    return (TensorBoardTracker if kind == "tensorboard" else MlflowTracker)(Path(run_dir))
