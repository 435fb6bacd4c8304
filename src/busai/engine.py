"""One training loop for both tasks.

Segmentation and classification differ only in the small :class:`TaskAdapter` passed in (loss,
target, validation score); epochs, early stopping, LR schedule, checkpoints, resume, precision
and progress are shared here.

Run-folder files written by :func:`fit`:
``history.csv`` (one row per epoch), ``checkpoint_last.pt`` (everything needed to resume, loaded
with ``weights_only=True``), ``checkpoint_best.safetensors`` (weights with the lowest validation
loss) and ``fit.json`` (why and when training stopped).
"""

from __future__ import annotations

import contextlib
import csv
import json
import math
import random
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch
from safetensors.torch import save_file
from torch import nn

from busai.config import TrainConfig
from busai.device import autocast_dtype, cpu_has_native_bf16, default_path_name, resolve_device  # noqa: F401  (engine.* names kept for callers)
from busai.errors import CheckpointError, ConfigError
from busai.outputs import atomic_write
from busai.runs import BEST_CHECKPOINT, CONFIG, FIT, HISTORY, LAST_CHECKPOINT, PROGRESS  # noqa: F401  (engine.* names kept for callers)


@dataclass
class TaskAdapter:
    """The task-specific pieces of training.

    ``loss`` maps (model output, batch) to a scalar; ``target_key`` names the batch entry the
    validation score needs; ``score`` maps concatenated validation outputs and targets to a dict
    of named numbers logged per epoch (e.g. dice, or accuracy and macro_f1); ``difficulty`` maps
    (model output, batch) to one number in [0, 1] per sample, for a training sampler that has an
    ``update(indices, difficulty)`` method (``--hard-examples``).
    """

    loss: Callable[[torch.Tensor, dict], torch.Tensor]
    target_key: str | tuple[str, ...]
    score: Callable[[torch.Tensor, torch.Tensor], dict[str, float]]
    difficulty: Callable[[torch.Tensor, dict], torch.Tensor] | None = None


@dataclass
class Precision:
    """How the engine computes: autocast dtype (None: fp32), memory format, and whether optimizers
    run as one fused kernel (the same fp32 update in one pass over the weights instead of a dozen)."""

    device: torch.device
    autocast_dtype: torch.dtype | None
    channels_last: bool
    fused_optimizer: bool = False

    def autocast(self):
        if self.autocast_dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)

    def to_input(self, x: torch.Tensor) -> torch.Tensor:
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last and x.dim() == 4 else x


def resolve_precision(cfg: TrainConfig) -> Precision:
    """channels_last and fused optimizers always, bf16 autocast where the hardware has it (see
    :func:`autocast_dtype`); ``precision="fp32"`` is plain fp32 eager PyTorch, every choice at
    torch's defaults: the reference the speed benchmarks compare against.

    Fused optimizers: torch's default Adam loop makes about a dozen passes over the weights per
    step, the fused kernel one, for the same fp32 update; a small gain (``benchmarks/train_speed.py``
    measures it), but free.

    On CUDA, bf16 where the GPU supports it, else fp16 (the engine then uses a GradScaler).
    """
    device = resolve_device(cfg.device)
    if cfg.precision == "fp32":
        return Precision(device, None, False)
    return Precision(device, autocast_dtype(device, cfg.precision), True, fused_optimizer=True)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


FUSABLE_OPTIMIZERS = ("adam", "adamw", "sgd", "adagrad")  # torch has no fused RMSprop


def runs_fused(cfg: TrainConfig, fused: bool) -> bool:
    """Whether :func:`build_optimizer` with ``fused`` builds a fused optimizer for ``cfg`` (run configs record it)."""
    return fused and cfg.optimizer in FUSABLE_OPTIMIZERS


def build_optimizer(cfg: TrainConfig, params: Iterable[nn.Parameter], *, fused: bool = False) -> torch.optim.Optimizer:
    kwargs = {"lr": cfg.lr, "weight_decay": cfg.weight_decay}
    if runs_fused(cfg, fused):
        kwargs["fused"] = True
    if cfg.optimizer in ("adam", "adamw"):
        cls = torch.optim.Adam if cfg.optimizer == "adam" else torch.optim.AdamW
        return cls(params, betas=cfg.betas or (0.9, 0.999), **kwargs)
    if cfg.optimizer == "rmsprop":
        return torch.optim.RMSprop(params, momentum=cfg.momentum, **kwargs)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(params, momentum=cfg.momentum, **kwargs)
    return torch.optim.Adagrad(params, **kwargs)


def build_scheduler(cfg: TrainConfig, optimizer: torch.optim.Optimizer):
    if cfg.scheduler == "plateau":
        return torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, mode="min", factor=cfg.plateau_factor, patience=cfg.plateau_patience)
    if cfg.scheduler == "cosine":
        # Anneals to 1% of the learning rate at the last of cfg.epochs; give --epochs that fit the budget.
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=cfg.epochs, eta_min=cfg.lr * 0.01)
    if cfg.scheduler in ("none", None):
        return None
    raise ConfigError(f"scheduler '{cfg.scheduler}': unknown; use plateau, cosine or none")


# progress.png is redrawn at most this often, and once when the run ends: drawing it costs about as much
# as a tiny run's epoch, and nobody looks at it more often than this.
PROGRESS_EVERY_SECONDS = 30.0

CHECKPOINT_KEYS = ("model", "optimizer", "torch_rng", "history", "epoch", "best_val_loss", "best_epoch")


def load_checkpoint(path: Path) -> dict:
    """Read ``checkpoint_last.pt`` tensors-only, turning each way it can be damaged into one line."""
    import pickle
    import zipfile

    fix = f"continue from a backup copy of the run folder, or start again with `busai train --config {path.parent / CONFIG} --out NEW_RUN`"
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no checkpoint to resume from; start a new run without --resume") from None
    except pickle.UnpicklingError as exc:
        # weights_only refuses any object that is not a tensor or plain container: loading it could run code.
        raise CheckpointError(
            f"{path}: refused, it holds objects other than tensors ({str(exc).splitlines()[0][:120]}); busai never writes such checkpoints: {fix}"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as exc:
        raise CheckpointError(f"{path}: cannot be read, the file is truncated or damaged ({type(exc).__name__}); {fix}") from None
    missing = [key for key in CHECKPOINT_KEYS if not isinstance(state, dict) or key not in state]
    if missing:
        raise CheckpointError(f"{path}: not a busai training checkpoint (lacks {', '.join(missing)}); {fix}")
    return state


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str] | None = None) -> None:
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    atomic_write(path, lambda p: save_file(state, str(p), metadata=metadata))


def _draw_progress(history: list[dict], run_dir: Path) -> None:
    from busai.figures import training_curve  # progress.png: the curves so far

    training_curve(history, run_dir / PROGRESS, title=run_dir.name)


def _write_history(path: Path, rows: list[dict]) -> None:
    if not rows:
        return
    fields = list(rows[0])
    for row in rows[1:]:
        fields += [k for k in row if k not in fields]

    def write(tmp: Path) -> None:
        with tmp.open("w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(path, write)


@dataclass
class FitResult:
    best_epoch: int
    best_val_loss: float
    epochs_run: int
    stop_reason: str
    history: list[dict]
    seconds: float

    def to_dict(self) -> dict:
        # JSON has no Infinity: a run with no finished epoch has no best loss (None), not inf.
        return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in self.__dict__.items() if k != "history"}


class _Progress:
    """A rich progress bar over epochs and batches, or nothing with quiet=True."""

    def __init__(self, quiet: bool, total_epochs: int, done: int):
        self.quiet = quiet
        if quiet:
            return
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TimeElapsedColumn(),
            TimeRemainingColumn(),
            TextColumn("{task.fields[info]}"),
            transient=False,
        )
        self.bar.start()
        self.epochs = self.bar.add_task("epochs", total=total_epochs, completed=done, info="")
        self.batches = self.bar.add_task("batches", total=1, info="")

    def start_phase(self, name: str, total: int) -> None:
        if not self.quiet:
            self.bar.reset(self.batches, total=total, description=name, info="")

    def advance_batch(self, info: str = "") -> None:
        if not self.quiet:
            self.bar.update(self.batches, advance=1, info=info)

    def end_epoch(self, info: str) -> None:
        if not self.quiet:
            self.bar.update(self.epochs, advance=1, info=info)

    def close(self) -> None:
        if not self.quiet:
            self.bar.stop()


def _reseed_epoch(loader, seed: int) -> None:
    """Seed shuffling and augmentation per epoch, so a resumed run draws the batches an uninterrupted one would."""
    generator = getattr(getattr(loader, "sampler", None), "generator", None)
    if generator is not None:
        generator.manual_seed(seed)
    if hasattr(loader.dataset, "set_epoch_seed"):
        loader.dataset.set_epoch_seed(seed)


def forward_loss(model, x: torch.Tensor, batch: dict, adapter: TaskAdapter, precision: Precision) -> tuple[torch.Tensor, torch.Tensor]:
    """(output, loss) of one batch: the forward pass under the precision's autocast, output (a tensor,
    or a multitask network's tuple) and loss in fp32."""
    with precision.autocast():
        out = _as_float(model(x))
    loss = adapter.loss(out, batch)
    if not torch.isfinite(loss):
        raise FloatingPointError(f"loss became {loss.item()}; lower the learning rate or use --precision fp32")
    return out, loss


def optimizer_step(loss: torch.Tensor, optimizer, scaler) -> None:
    """Backward and update, through the GradScaler when one is used (fp16)."""
    optimizer.zero_grad(set_to_none=True)
    if scaler is not None:
        scaler.scale(loss).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        optimizer.step()


def _run_epoch(model, loader, adapter, optimizer, precision, scaler, progress, train: bool, after_step: Callable[[], None] | None = None):
    """One pass over ``loader``: (mean loss, scores). Under torchrun both are those of all ranks together."""
    model.train(train)
    total_loss, count = 0.0, 0
    outputs, targets = [], []
    progress.start_phase("train" if train else "val", len(loader))
    grad = torch.enable_grad() if train else torch.inference_mode()
    sampler = getattr(loader, "sampler", None)
    reweigh = train and adapter.difficulty is not None and hasattr(sampler, "update")
    with grad:
        for batch in loader:
            x = precision.to_input(batch["image"])
            batch = {k: (v.to(precision.device) if torch.is_tensor(v) else v) for k, v in batch.items()}
            out, loss = forward_loss(model, x, batch, adapter, precision)
            if train:
                optimizer_step(loss, optimizer, scaler)
                if after_step is not None:
                    after_step()
                if reweigh:
                    sampler.update(batch["index"], adapter.difficulty(_detached(out), batch))
            else:
                outputs.append(_detached(out, cpu=True))
                keys = adapter.target_key
                targets.append(tuple(batch[k].cpu() for k in keys) if isinstance(keys, tuple) else batch[keys].cpu())
            n = x.shape[0]
            total_loss += loss.item() * n
            count += n
            progress.advance_batch(f"loss {total_loss / count:.4f}")
    from busai import distributed as ddp

    if train:
        parts = ddp.gather_objects((total_loss, count))
        return sum(p[0] for p in parts) / max(sum(p[1] for p in parts), 1), {}
    mine = (total_loss, count, _cat(outputs) if outputs else None, _cat(targets) if targets else None)
    parts = ddp.gather_objects(mine)  # every rank scored its shard of the validation split
    mean_loss = sum(p[0] for p in parts) / max(sum(p[1] for p in parts), 1)
    outputs = _cat([p[2] for p in parts if p[2] is not None])
    targets = _cat([p[3] for p in parts if p[3] is not None])
    return mean_loss, adapter.score(outputs, targets)


# A model's output is one tensor, or a tuple of them for a multitask network (masks, class logits).
def _as_float(out):
    return tuple(o.float() for o in out) if isinstance(out, tuple) else out.float()


def _detached(out, cpu: bool = False):
    if isinstance(out, tuple):
        return tuple(_detached(o, cpu) for o in out)
    return out.detach().cpu() if cpu else out.detach()


def _cat(parts: list):
    return tuple(torch.cat(p) for p in zip(*parts)) if isinstance(parts[0], tuple) else torch.cat(parts)


def _ema_model(model: nn.Module, decay: float | None):
    """torch's AveragedModel as an exponential moving average of weights and BatchNorm buffers, or None."""
    if decay is None:
        return None
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    return AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)


def fit(
    model: nn.Module,
    adapter: TaskAdapter,
    train_loader,
    val_loader,
    cfg: TrainConfig,
    run_dir: str | Path,
    *,
    resume: bool = False,
    quiet: bool = False,
    weights_metadata: dict[str, str] | None = None,
    on_epoch: Callable[[int, dict], None] | None = None,
) -> FitResult:
    """Train ``model`` and keep the weights of the best epoch: the lowest validation loss, or with
    ``cfg.select == "lesion_dice"`` the highest validation Dice over lesion scans. With ``cfg.ema``
    the kept weights are the moving average's.

    ``on_epoch(epoch, row)`` is called after each epoch (Optuna reports and prunes through it; an
    exception it raises ends training after the checkpoints are written).
    """
    from busai import distributed as ddp
    from busai.tracking import Tracker, open_tracker

    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    ddp.init_from_env(cfg.device)
    main = ddp.is_main()  # under torchrun, rank 0 alone writes the run folder
    precision = resolve_precision(cfg)
    precision.device = ddp.local_device(precision.device)
    if cfg.sync_bn and ddp.world_size() > 1:
        if precision.device.type != "cuda":
            raise ConfigError("--sync-bn: SyncBatchNorm runs on CUDA GPUs only; drop --sync-bn for CPU processes")
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(precision.device)
    if precision.channels_last:
        model.to(memory_format=torch.channels_last)
    optimizer = build_optimizer(cfg, model.parameters(), fused=precision.fused_optimizer)
    scheduler = build_scheduler(cfg, optimizer)
    scaler = torch.amp.GradScaler("cuda") if precision.autocast_dtype == torch.float16 else None

    ema = _ema_model(model, cfg.ema)
    history: list[dict] = []
    best_loss, best_epoch, start_epoch, elapsed_before = math.inf, 0, 0, 0.0
    best_score = -math.inf  # --select lesion_dice: the highest validation Dice over lesion scans so far
    last_path = run_dir / LAST_CHECKPOINT
    if resume:
        if not last_path.exists():
            raise CheckpointError(f"{last_path}: no checkpoint to resume from; start a new run without --resume")
        state = load_checkpoint(last_path)
        try:
            model.load_state_dict(state["model"])
        except RuntimeError as exc:
            raise CheckpointError(f"{last_path}: checkpoint does not match the model ({str(exc).splitlines()[0]}); resume with the run's own config") from None
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler"):
            scheduler.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if state.get("sampler") and hasattr(train_loader.sampler, "load_state_dict"):
            train_loader.sampler.load_state_dict(state["sampler"])
        history = state["history"]
        best_loss, best_epoch, start_epoch = state["best_val_loss"], state["best_epoch"], state["epoch"]
        best_score = float(state.get("best_score", -math.inf))
        if ema is not None:
            if "ema" not in state:
                raise CheckpointError(f"{last_path}: the run was trained without --ema; resume it without --ema")
            ema.load_state_dict(state["ema"])
        elapsed_before = state.get("seconds", 0.0)
    else:
        seed_everything(cfg.seed)

    net = model
    if ddp.world_size() > 1:
        cuda = precision.device.type == "cuda"
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[precision.device.index] if cuda else None)
    tracker = open_tracker(cfg.log, run_dir) if main else Tracker()
    tracker.log_config(cfg.to_dict())
    progress = _Progress(quiet or not main, cfg.epochs, start_epoch)
    started = time.monotonic()
    drawn_at, drawn_rows = started, len(history)
    # A resumed run that had already early-stopped (under the patience in force now) trains no further.
    already_stopped = start_epoch - best_epoch >= cfg.patience
    stop_reason = "early_stopping" if already_stopped else "max_epochs"
    last_epoch = start_epoch if already_stopped else cfg.epochs
    try:
        for epoch in range(start_epoch + 1, last_epoch + 1):
            epoch_start = time.monotonic()
            _reseed_epoch(train_loader, cfg.seed * 100_003 + epoch)
            after_step = (lambda: ema.update_parameters(model)) if ema is not None else None
            train_loss, _ = _run_epoch(net, train_loader, adapter, optimizer, precision, scaler, progress, train=True, after_step=after_step)
            # The plain module: weights are the same on every rank, and DDP's forward would expect
            # the same number of calls on each, which validation shards of unequal size do not make.
            # With --ema the averaged weights are validated and kept: they are what the run ships.
            kept = ema.module if ema is not None else model
            val_loss, scores = _run_epoch(kept, val_loader, adapter, None, precision, None, progress, train=False)
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(val_loss)
            elif scheduler is not None:
                scheduler.step()
            if cfg.select == "lesion_dice":
                score = scores.get("lesion_dice", scores.get("dice", -math.inf))
                improved = score > best_score
            else:
                score, improved = -val_loss, val_loss < best_loss
            if improved:
                best_loss, best_epoch, best_score = val_loss, epoch, score
                if main:
                    save_weights(kept, run_dir / BEST_CHECKPOINT, weights_metadata)
            row = {
                "epoch": epoch,
                "train_loss": round(train_loss, 6),
                "val_loss": round(val_loss, 6),
                **{f"val_{k}": round(v, 6) for k, v in scores.items()},
                "lr": optimizer.param_groups[0]["lr"],
                "seconds": round(time.monotonic() - epoch_start, 2),
                "best": improved,
            }
            history.append(row)
            if main:
                _write_history(run_dir / HISTORY, history)
                if time.monotonic() - drawn_at >= PROGRESS_EVERY_SECONDS:
                    _draw_progress(history, run_dir)
                    drawn_at, drawn_rows = time.monotonic(), len(history)
            seconds = ddp.broadcast_object(elapsed_before + time.monotonic() - started)  # one time-budget decision for all ranks
            checkpoint = {
                "model": model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scheduler": scheduler.state_dict() if scheduler is not None else {},
                "torch_rng": torch.get_rng_state(),
                "history": history,
                "epoch": epoch,
                "sampler": train_loader.sampler.state_dict() if hasattr(train_loader.sampler, "state_dict") else {},
                "best_val_loss": best_loss,
                "best_epoch": best_epoch,
                "best_score": best_score,
                "seconds": seconds,
            }
            if ema is not None:
                checkpoint["ema"] = ema.state_dict()
            if main:
                atomic_write(last_path, lambda p: torch.save(checkpoint, p))
            score_text = " ".join(f"{k} {v:.3f}" for k, v in scores.items())
            progress.end_epoch(f"val_loss {val_loss:.4f} {score_text} best@{best_epoch}")
            tracker.log_epoch(epoch, row)
            if on_epoch is not None:
                on_epoch(epoch, row)
            if epoch - best_epoch >= cfg.patience:
                stop_reason = "early_stopping"
                break
            if cfg.max_minutes is not None and seconds / 60 >= cfg.max_minutes:
                stop_reason = "time_budget"
                break
    finally:
        progress.close()
        tracker.close()
    if main and drawn_rows != len(history):  # the epochs since the last drawing
        _draw_progress(history, run_dir)
    total_seconds = elapsed_before + time.monotonic() - started
    result = FitResult(best_epoch, best_loss, len(history), stop_reason, history, round(total_seconds, 1))
    if main:
        fit_json = json.dumps({**result.to_dict(), "processes": ddp.world_size()}, indent=2, allow_nan=False)
        atomic_write(run_dir / FIT, lambda p: p.write_text(fit_json))
    ddp.barrier()
    return result
