"""The shared training loop on a toy task: checkpoints, early stopping, time budget, resume."""

import csv
import json
import math

import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, Dataset

import busai.device
from busai.config import TrainConfig
from busai.engine import BEST_CHECKPOINT, HISTORY, LAST_CHECKPOINT, TaskAdapter, fit
from busai.errors import CheckpointError, ConfigError


class ToyImages(Dataset):
    """Bright-left vs bright-right images: learnable in a few steps."""

    def __init__(self, n=32, seed=0):
        g = torch.Generator().manual_seed(seed)
        self.x = torch.rand(n, 3, 8, 8, generator=g) * 0.2
        self.y = torch.arange(n) % 2
        self.x[self.y == 0, :, :, :4] += 1.0
        self.x[self.y == 1, :, :, 4:] += 1.0

    def __len__(self):
        return len(self.y)

    def __getitem__(self, i):
        return {"image": self.x[i], "label": self.y[i]}


def toy_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Dropout(0.2), nn.Flatten(), nn.Linear(4 * 64, 2))


def toy_adapter():
    ce = nn.CrossEntropyLoss()
    return TaskAdapter(
        loss=lambda out, batch: ce(out, batch["label"]),
        target_key="label",
        score=lambda out, y: {"accuracy": (out.argmax(1) == y).float().mean().item()},
    )


def loaders(seed=0):
    train = DataLoader(ToyImages(32, 0), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(seed))
    val = DataLoader(ToyImages(16, 1), batch_size=8)
    return train, val


def config(**kw):
    base = dict(task="cls", model="toy", lr=0.05, optimizer="sgd", epochs=6, patience=25, precision="fp32", device="cpu", scheduler="none")
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.slow  # over a second on 2 idle cores: outside the fast loop (make test-fast)
def test_fit_writes_run_files_and_learns(tmp_path):
    train, val = loaders()
    result = fit(toy_model(), toy_adapter(), train, val, config(), tmp_path, quiet=True)
    assert result.epochs_run == 6 and result.stop_reason == "max_epochs"
    rows = list(csv.DictReader((tmp_path / HISTORY).open()))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4, 5, 6]
    assert float(rows[-1]["val_accuracy"]) == 1.0
    assert (tmp_path / LAST_CHECKPOINT).exists()
    # The best checkpoint holds the weights of the epoch with the lowest validation loss.
    best_epoch = min(rows, key=lambda r: float(r["val_loss"]))["epoch"]
    assert int(best_epoch) == result.best_epoch
    assert json.loads((tmp_path / "fit.json").read_text())["best_epoch"] == result.best_epoch


@pytest.mark.parametrize(("every", "drawn"), [(0.0, [1, 2, 3]), (3600.0, [3])])
def test_progress_png_is_redrawn_at_most_every_interval_and_when_the_run_ends(tmp_path, monkeypatch, every, drawn):
    import busai.engine

    rows_drawn = []
    monkeypatch.setattr(busai.engine, "PROGRESS_EVERY_SECONDS", every)
    monkeypatch.setattr(busai.engine, "_draw_progress", lambda history, run_dir: rows_drawn.append(len(history)))
    train, val = loaders()
    fit(toy_model(), toy_adapter(), train, val, config(epochs=3), tmp_path, quiet=True)
    assert rows_drawn == drawn  # the last drawing always holds every epoch


@pytest.mark.slow  # over a second on 2 idle cores: outside the fast loop (make test-fast)
def test_best_checkpoint_reproduces_best_val_loss(tmp_path):
    train, val = loaders()
    result = fit(toy_model(), toy_adapter(), train, val, config(), tmp_path, quiet=True)
    model = toy_model()
    model.load_state_dict(load_file(str(tmp_path / BEST_CHECKPOINT)))
    model.eval()
    with torch.no_grad():
        losses = [nn.functional.cross_entropy(model(b["image"]), b["label"], reduction="sum") for b in val]
    assert sum(losses).item() / 16 == pytest.approx(result.best_val_loss, rel=1e-5)


def test_early_stopping_after_patience(tmp_path):
    train, val = loaders()
    # lr 0 never improves after epoch 1, so patience 2 stops at epoch 3.
    result = fit(toy_model(), toy_adapter(), train, val, config(lr=1e-12, patience=2, epochs=50), tmp_path, quiet=True)
    assert result.stop_reason == "early_stopping"
    assert result.epochs_run == result.best_epoch + 2


def test_time_budget_stops_cleanly(tmp_path):
    train, val = loaders()
    result = fit(toy_model(), toy_adapter(), train, val, config(max_minutes=1e-9, epochs=50), tmp_path, quiet=True)
    assert result.stop_reason == "time_budget" and result.epochs_run == 1


@pytest.mark.slow  # over a second on 2 idle cores: outside the fast loop (make test-fast)
def test_interrupted_run_resumes_to_the_same_weights(tmp_path):
    train, val = loaders()
    full = fit(toy_model(), toy_adapter(), train, val, config(), tmp_path / "full", quiet=True)

    def interrupt(epoch, row):
        if epoch == 3:
            raise KeyboardInterrupt

    train, val = loaders()
    with pytest.raises(KeyboardInterrupt):
        fit(toy_model(), toy_adapter(), train, val, config(), tmp_path / "cut", quiet=True, on_epoch=interrupt)
    assert len(list(csv.DictReader((tmp_path / "cut" / HISTORY).open()))) == 3

    train, val = loaders(seed=123)  # a fresh process: the per-epoch reseed, not the loader, decides the order
    resumed = fit(toy_model(), toy_adapter(), train, val, config(), tmp_path / "cut", quiet=True, resume=True)
    assert resumed.epochs_run == 6
    assert [r["val_loss"] for r in resumed.history] == [r["val_loss"] for r in full.history]
    a = load_file(str(tmp_path / "full" / BEST_CHECKPOINT))
    b = load_file(str(tmp_path / "cut" / BEST_CHECKPOINT))
    assert all(torch.equal(a[k], b[k]) for k in a)


class IndexedToyImages(ToyImages):
    def __getitem__(self, i):
        return {**super().__getitem__(i), "index": i}


def hard_example_loaders():
    from busai.data.dataset import HardExampleSampler

    train = DataLoader(IndexedToyImages(32, 0), batch_size=8, sampler=HardExampleSampler(32, seed=0))
    return train, DataLoader(ToyImages(16, 1), batch_size=8)


def hard_adapter():
    adapter = toy_adapter()
    adapter.difficulty = lambda out, batch: 1 - out.softmax(1).gather(1, batch["label"][:, None])[:, 0]
    return adapter


@pytest.mark.slow  # over a second on 2 idle cores: outside the fast loop (make test-fast)
def test_hard_examples_are_reweighted_each_batch_and_resume_with_their_weights(tmp_path):
    train, val = hard_example_loaders()
    full = fit(toy_model(), hard_adapter(), train, val, config(lr=0.01), tmp_path / "full", quiet=True)

    def interrupt(epoch, row):
        if epoch == 3:
            raise KeyboardInterrupt

    train, val = hard_example_loaders()
    with pytest.raises(KeyboardInterrupt):
        fit(toy_model(), hard_adapter(), train, val, config(lr=0.01), tmp_path / "cut", quiet=True, on_epoch=interrupt)
    difficulty = train.sampler.difficulty  # measured in training, and still unequal when the run is cut
    assert difficulty.max() < 1 and difficulty.std() > 0.05
    train, val = hard_example_loaders()  # a fresh sampler: all images hard until the checkpoint says otherwise
    resumed = fit(toy_model(), hard_adapter(), train, val, config(lr=0.01), tmp_path / "cut", quiet=True, resume=True)
    assert [r["val_loss"] for r in resumed.history] == [r["val_loss"] for r in full.history]


def test_resume_without_checkpoint_is_a_clear_error(tmp_path):
    train, val = loaders()
    with pytest.raises(CheckpointError, match="no checkpoint to resume from"):
        fit(toy_model(), toy_adapter(), train, val, config(), tmp_path, quiet=True, resume=True)


@pytest.mark.slow  # over a second on 2 idle cores: outside the fast loop (make test-fast)
def test_bf16_default_path_trains(tmp_path):
    train, val = loaders()
    result = fit(toy_model(), toy_adapter(), train, val, config(precision="bf16"), tmp_path, quiet=True)
    assert result.history[-1]["val_accuracy"] == 1.0


def test_resuming_an_early_stopped_run_trains_no_further(tmp_path):
    train, val = loaders()
    first = fit(toy_model(), toy_adapter(), train, val, config(lr=1e-12, patience=2, epochs=50), tmp_path, quiet=True)
    assert first.stop_reason == "early_stopping"
    again = fit(toy_model(), toy_adapter(), train, val, config(lr=1e-12, patience=2, epochs=50), tmp_path, quiet=True, resume=True)
    assert (again.stop_reason, again.epochs_run) == ("early_stopping", first.epochs_run)


def test_cosine_schedule_anneals_to_one_percent(tmp_path):
    train, val = loaders()
    result = fit(toy_model(), toy_adapter(), train, val, config(scheduler="cosine", epochs=4), tmp_path, quiet=True)
    lrs = [row["lr"] for row in result.history]  # the rate after each epoch's step
    expected = [0.05 * (0.01 + 0.99 * (1 + math.cos(math.pi * e / 4)) / 2) for e in range(1, 5)]
    assert lrs == pytest.approx(expected)
    assert lrs[-1] == pytest.approx(0.0005)


def test_unknown_scheduler_is_a_clear_error(tmp_path):
    train, val = loaders()
    with pytest.raises(ConfigError, match="scheduler 'step': unknown; use plateau, cosine or none"):
        fit(toy_model(), toy_adapter(), train, val, config(scheduler="step"), tmp_path, quiet=True)


@pytest.mark.parametrize(
    ("precision", "native", "dtype", "channels_last"),
    [
        ("auto", True, torch.bfloat16, True),
        ("auto", False, None, True),  # emulated bf16 is several times slower than fp32: not the default
        ("bf16", False, torch.bfloat16, True),
        ("fp32", True, None, False),
    ],
)
def test_default_path_uses_bf16_only_where_the_cpu_has_it(monkeypatch, precision, native, dtype, channels_last):
    from busai import engine

    monkeypatch.setattr(busai.device, "cpu_has_native_bf16", lambda: native)  # where engine.autocast_dtype asks
    resolved = engine.resolve_precision(config(precision=precision))
    assert (resolved.autocast_dtype, resolved.channels_last, resolved.fused_optimizer) == (dtype, channels_last, channels_last)
    expected = "channels_last + bfloat16 autocast" if native else "channels_last + fp32"
    assert engine.default_path_name() == expected
    assert engine.default_path_name(training=True) == expected + " + fused optimizer"


@pytest.mark.parametrize("optimizer", ["adam", "adamw", "sgd", "adagrad", "rmsprop"])
def test_fused_optimizer_computes_the_plain_update(optimizer):
    """The fast path's fused kernel is a speed change only: same weights as torch's default loop."""
    from busai.engine import FUSABLE_OPTIMIZERS, build_optimizer

    cfg = config(optimizer=optimizer, lr=1e-2, weight_decay=1e-3)
    models = [toy_model().eval(), toy_model().eval()]  # eval: no dropout draws to tell the two apart
    optimizers = [build_optimizer(cfg, models[0].parameters()), build_optimizer(cfg, models[1].parameters(), fused=True)]
    assert bool(optimizers[1].defaults.get("fused")) == (optimizer in FUSABLE_OPTIMIZERS) and not optimizers[0].defaults.get("fused")
    x = torch.randn(16, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    for _ in range(3):
        for model, opt in zip(models, optimizers):
            opt.zero_grad()
            model(x).square().mean().backward()
            opt.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.allclose(a, b, atol=1e-6, rtol=1e-5)


def test_task_difficulty_is_one_for_a_missed_lesion_and_zero_for_a_solved_image():
    from busai.tasks import adapter_for

    seg = adapter_for(TrainConfig(task="seg"))
    masks = torch.zeros(3, 1, 4, 4)
    masks[0, 0, :2, :2] = 1  # lesion, predicted nowhere
    masks[1, 0, :2, :2] = 1  # lesion, predicted exactly
    logits = torch.full((3, 1, 4, 4), -9.0)
    logits[1, 0, :2, :2] = 9.0  # image 2: lesion-free, predicted empty
    assert seg.difficulty(logits, {"mask": masks}).tolist() == [1.0, 0.0, 0.0]
    cls = adapter_for(TrainConfig(task="cls", model="resnet18"))
    out = torch.log(torch.tensor([[0.7, 0.2, 0.1], [0.7, 0.2, 0.1]]))
    assert cls.difficulty(out, {"label": torch.tensor([0, 2])}).tolist() == pytest.approx([0.3, 0.9])
