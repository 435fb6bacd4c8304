"""DataLoaders for training: worker processes that share the decoded-image cache, pinned memory on a
GPU, and the same batches whatever the number of workers.

- The :class:`~busai.data.dataset.ImageCache` is filled in the main process before any worker
  starts, so forked workers share its arrays (copy-on-write) instead of each decoding every image.
- Workers are persistent: started once, kept across epochs, so the cache is not re-forked per epoch.
- Persistent workers keep the dataset copy they were forked with, so they never see the engine's
  per-epoch :meth:`~busai.data.dataset.BusDataset.set_epoch_seed`. :class:`EpochSeeded` therefore
  sends the epoch seed with every index; the dataset seeds each item's augmentation from
  (seed, epoch, index) alone, which makes any worker count (0 included) give the same batches.
- ``pin_memory`` when the batches go to a CUDA device (the engine's ``non_blocking`` copy then overlaps).
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, Dataset, Sampler


class EpochSeeded(Sampler):
    """Yields ``(index, epoch_seed)`` for each index of ``sampler``, the epoch seed read from
    ``dataset`` when an epoch's iteration starts; everything else (``generator``, ``update``,
    ``state_dict``, ...) is the wrapped sampler's."""

    def __init__(self, sampler: Sampler, dataset: Dataset):
        self.sampler = sampler
        self.dataset = dataset

    def __iter__(self):
        epoch_seed = getattr(self.dataset, "_epoch_seed", 0)
        return ((int(i), epoch_seed) for i in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)

    def __getattr__(self, name):
        if name in ("sampler", "dataset"):  # not set yet (unpickling): avoid recursing
            raise AttributeError(name)
        return getattr(self.sampler, name)


def warm_caches(*datasets: Dataset) -> None:
    """Decode every image of ``datasets`` into their caches now, in this process."""
    for dataset in datasets:
        cache = getattr(dataset, "cache", None)
        if cache is not None:
            cache.warm(dataset.records, dataset.image_size)


def make_loader(
    dataset: Dataset,
    batch_size: int,
    *,
    sampler: Sampler | None = None,
    num_workers: int = 0,
    drop_last: bool = False,
    device: torch.device | str = "cpu",
) -> DataLoader:
    """A DataLoader over ``dataset`` in ``sampler``'s order (None: in order), with ``num_workers``
    persistent workers. Warm the datasets' cache (:func:`warm_caches`) before the first epoch."""
    if num_workers < 0:
        from busai.errors import ConfigError

        raise ConfigError(f"num_workers={num_workers}: must be 0 or more")
    if sampler is not None:
        sampler = EpochSeeded(sampler, dataset)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        shuffle=False,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=torch.device(device).type == "cuda",
        persistent_workers=num_workers > 0,
    )


def train_val_loaders(train_ds, val_ds, sampler: Sampler, batch_size: int, *, num_workers: int = 0, device: str = "cpu") -> tuple[DataLoader, DataLoader]:
    """The training loader (``sampler``'s order, last partial batch dropped when there is more than
    one batch) and the validation loader (in order, batches of at least 16), caches warmed first
    when workers will fork. Under torchrun each rank gets its share of both (see :mod:`busai.distributed`):
    ``batch_size`` is then per process."""
    from busai import distributed as ddp
    from busai.device import resolve_device

    target = resolve_device(device)
    if num_workers > 0:
        warm_caches(train_ds, val_ds)
    val_order = None
    if ddp.world_size() > 1:
        sampler, val_order = ddp.ShardedSampler(sampler), ddp.shard(list(range(len(val_ds))))
    train = make_loader(train_ds, batch_size, sampler=sampler, num_workers=num_workers, drop_last=len(train_ds) > batch_size, device=target)
    val = make_loader(val_ds, max(batch_size, 16), sampler=val_order, num_workers=num_workers, device=target)
    return train, val
