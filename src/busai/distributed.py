"""Data-parallel training under ``torchrun``: process group, sharded sampling, reduced metrics.

``torchrun --nproc_per_node N -m busai train ...`` starts N copies of the command; each learns its
rank from the environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``). Every rank draws the same
global order from the run's sampler (seeded per epoch, so any process count draws the same one)
and trains on its share of each global batch: ``--batch-size`` is per process, the global batch
``N x --batch-size``. Validation is sharded too and the outputs gathered, so scores are those of
the whole validation split. Rank 0 alone writes the run folder; a checkpoint holds nothing
per-rank, so a run resumes with any process count.
"""

from __future__ import annotations

import math
import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch.utils.data import Sampler


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init_from_env(device_name: str = "auto") -> None:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPUs); nothing outside torchrun."""
    if not launched_by_torchrun() or dist.is_initialized():
        return
    from busai.device import resolve_device

    use_cuda = resolve_device(device_name).type == "cuda"
    if use_cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group("nccl" if use_cuda else "gloo", timeout=timedelta(minutes=30))


def local_device(device: torch.device) -> torch.device:
    """This rank's GPU under torchrun (``LOCAL_RANK``); ``device`` otherwise."""
    if device.type == "cuda" and world_size() > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


class ShardedSampler(Sampler):
    """This rank's share of ``sampler``'s order: items ``rank, rank + N, ...`` of the list every rank
    draws alike (padded by wrapping round so all ranks take the same number of steps).

    Wraps the random, class-balanced and hard-example samplers alike: ``generator`` is the wrapped
    sampler's (the engine reseeds it per epoch), and ``update`` gathers every rank's difficulties
    first, so all ranks keep the same weights and draw the same next order.
    """

    def __init__(self, sampler: Sampler, num_replicas: int | None = None, rank_: int | None = None):
        self.sampler = sampler
        self.num_replicas = world_size() if num_replicas is None else num_replicas
        self.rank = rank() if rank_ is None else rank_

    def __iter__(self):
        order = [int(i) for i in self.sampler]
        if not order:
            return iter(())
        total = len(self) * self.num_replicas
        order += (order * (total // len(order) + 1))[: total - len(order)]
        return iter(order[self.rank :: self.num_replicas])

    def __len__(self) -> int:
        return math.ceil(len(self.sampler) / self.num_replicas)

    def update(self, indices, difficulty: torch.Tensor) -> None:
        if not hasattr(self.sampler, "update"):
            return  # a fixed-weight sampler: nothing to share
        indices = torch.as_tensor(indices, dtype=torch.long)
        difficulty = difficulty.detach().double().cpu()
        if world_size() > 1:
            gathered = [None] * world_size()
            dist.all_gather_object(gathered, (indices, difficulty))
            indices = torch.cat([g[0] for g in gathered])
            difficulty = torch.cat([g[1] for g in gathered])
        self.sampler.update(indices, difficulty)

    def __getattr__(self, name):
        if name == "sampler":
            raise AttributeError(name)
        return getattr(self.sampler, name)


def shard(items: list, num_replicas: int | None = None, rank_: int | None = None) -> list:
    """This rank's items of a fixed list (validation): ``rank, rank + N, ...``, no padding."""
    n = world_size() if num_replicas is None else num_replicas
    r = rank() if rank_ is None else rank_
    return items[r::n]


def gather_objects(value):
    """Every rank's ``value``, in rank order (a one-item list outside torchrun)."""
    if world_size() == 1:
        return [value]
    gathered = [None] * world_size()
    dist.all_gather_object(gathered, value)
    return gathered


def broadcast_object(value):
    """Rank 0's ``value`` on every rank (decisions such as a time budget must agree)."""
    if world_size() == 1:
        return value
    box = [value]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def barrier() -> None:
    if world_size() > 1:
        dist.barrier()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside a DistributedDataParallel wrapper (checkpoints hold its keys, not ``module.*``)."""
    return model.module if isinstance(model, torch.nn.parallel.DistributedDataParallel) else model
