"""`--log tensorboard|mlflow`: every epoch's losses, scores and learning rate, read back from what was written."""

import csv
import sys

import pytest
from test_engine import config, loaders, toy_adapter, toy_model

from busai.engine import HISTORY, fit
from busai.errors import ConfigError
from busai.tracking import open_tracker

LOGGED = ("train_loss", "val_loss", "val_accuracy", "lr")


def history(run_dir):
    with (run_dir / HISTORY).open() as fh:
        return [{k: float(row[k]) for k in LOGGED} | {"epoch": int(row["epoch"])} for row in csv.DictReader(fh)]


def train(run_dir, log, epochs=2, resume=False):
    train_loader, val_loader = loaders()
    return fit(toy_model(), toy_adapter(), train_loader, val_loader, config(log=log, epochs=epochs, scheduler="cosine"), run_dir, quiet=True, resume=resume)


@pytest.mark.slow  # trains or starts processes
def test_tensorboard_events_hold_each_epoch(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    train(tmp_path, "tensorboard")
    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert set(LOGGED) <= set(events.Tags()["scalars"])
    rows = history(tmp_path)
    for key in LOGGED:
        logged = events.Scalars(key)
        assert [e.step for e in logged] == [1, 2]
        assert [e.value for e in logged] == pytest.approx([row[key] for row in rows], rel=1e-6)
    assert rows[1]["lr"] < rows[0]["lr"]  # cosine schedule: a changing rate, logged as history.csv has it


@pytest.mark.slow  # trains or starts processes
def test_mlflow_run_in_the_run_folder_and_resumed_into(tmp_path, monkeypatch):
    pytest.importorskip("mlflow")
    pytest.importorskip("sqlalchemy")
    from mlflow.tracking import MlflowClient

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    train(tmp_path, "mlflow")
    import json

    state = json.loads((tmp_path / "tracking.json").read_text())
    assert state["mlflow_tracking_uri"] == f"sqlite:///{tmp_path.resolve() / 'mlflow.db'}"
    client = MlflowClient(tracking_uri=state["mlflow_tracking_uri"])
    run = client.get_run(state["mlflow_run_id"])
    assert run.info.status == "FINISHED" and run.data.params["lr"] == "0.05" and run.data.params["log"] == "mlflow"

    train(tmp_path, "mlflow", epochs=3, resume=True)  # the same MLflow run goes on
    rows = history(tmp_path)
    assert len(rows) == 3
    for key in LOGGED:
        logged = sorted(client.get_metric_history(state["mlflow_run_id"], key), key=lambda m: m.step)
        assert [m.step for m in logged] == [1, 2, 3]
        assert [m.value for m in logged] == pytest.approx([row[key] for row in rows], rel=1e-6)
    assert len(client.search_runs([run.info.experiment_id])) == 1


@pytest.mark.slow  # trains or starts processes
def test_tracking_errors(tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="log 'wandb': unknown; choose tensorboard, mlflow or none"):
        config(log="wandb")
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the extra were not installed
    with pytest.raises(ConfigError, match=r"--log tensorboard: the tensorboard package is not installed; pip install 'busai\[tensorboard\]'"):
        open_tracker("tensorboard", tmp_path)
    monkeypatch.setitem(sys.modules, "mlflow.tracking", None)
    with pytest.raises(ConfigError, match=r"pip install 'busai\[mlflow\]'"):
        train(tmp_path / "run", "mlflow")
    assert not (tmp_path / "run" / HISTORY).exists()  # refused before the first epoch
