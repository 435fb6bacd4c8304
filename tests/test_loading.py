"""Training loaders: the same losses for any worker count, persistent workers, a cache filled before they fork."""

import csv

import pytest
import torch
from torch.utils.data import RandomSampler

from busai.config import TrainConfig
from busai.data.dataset import BusDataset, HardExampleSampler, ImageCache
from busai.data.discover import discover_records
from busai.data.loading import EpochSeeded, make_loader, train_val_loaders
from busai.errors import ConfigError

MEAN, STD = (0.5, 0.5, 0.5), (0.25, 0.25, 0.25)


def losses(run_dir):
    with (run_dir / "history.csv").open() as fh:
        return [(float(r["train_loss"]), float(r["val_loss"]), float(r["val_dice"])) for r in csv.DictReader(fh)]


@pytest.mark.slow  # trains or starts processes
def test_two_epochs_give_the_same_losses_with_0_or_2_workers(synthetic_dir, tiny_runs, tmp_path):
    from busai.training import train

    splits = tiny_runs / "splits.json"
    if not splits.exists():  # written by the shared tiny-run fixtures; made here when this file runs alone
        from busai.data.splits import make_splits, write_splits

        write_splits(splits, make_splits(discover_records(synthetic_dir), [], val=0.25, test=0.1, seed=0))
    runs = {}
    for workers in (0, 2):
        cfg = TrainConfig(
            task="seg",
            model="unet",
            encoder="efficientnet-lite0",
            weights="none",
            image_size=32,
            epochs=2,
            batch_size=4,
            precision="fp32",
            device="cpu",
            augment="strong",
            lesion_paste=0.5,
            num_workers=workers,
            data=str(synthetic_dir),
            splits=str(splits),
        )
        train(cfg, tmp_path / f"workers{workers}", quiet=True)
        runs[workers] = losses(tmp_path / f"workers{workers}")
    assert len(runs[0]) == 2
    assert runs[2] == runs[0]


def test_epoch_seeded_sampler_carries_the_epoch_and_stays_the_sampler(synthetic_dir):
    records = discover_records(synthetic_dir)[:6]
    dataset = BusDataset(records, 32, MEAN, STD, augment="paper", seed=0)
    inner = HardExampleSampler(len(dataset), seed=3)
    sampler = EpochSeeded(inner, dataset)
    dataset.set_epoch_seed(11)
    drawn = list(sampler)
    assert [e for _, e in drawn] == [11] * 6 and [i for i, _ in drawn] == list(HardExampleSampler(len(dataset), seed=3))
    assert len(sampler) == 6 and sampler.generator is inner.generator
    sampler.update([0], torch.tensor([0.0]))  # the engine re-weights through the wrapper
    assert sampler.state_dict()["difficulty"][0] == 0.0
    item = dataset[drawn[0]]
    assert item["index"] == drawn[0][0] and torch.equal(item["image"], dataset[drawn[0][0]]["image"])


def test_loader_options_and_cache_warmed_before_workers(synthetic_dir):
    records = discover_records(synthetic_dir)
    cache = ImageCache()
    train_ds = BusDataset(records[:16], 32, MEAN, STD, cache=cache, seed=0)
    val_ds = BusDataset(records[16:], 32, MEAN, STD, cache=cache, seed=0)
    sampler = RandomSampler(train_ds, generator=torch.Generator().manual_seed(0))
    train, val = train_val_loaders(train_ds, val_ds, sampler, 4, num_workers=2, device="cpu")
    assert len(cache) == len(records)  # every image decoded in this process, before any worker forks
    assert train.persistent_workers and val.persistent_workers and not train.pin_memory
    assert train.drop_last and val.batch_size == 16 and isinstance(train.sampler, EpochSeeded)
    first = [b["index"].tolist() for b in train]
    assert sorted(i for batch in first for i in batch) == list(range(16))
    in_process = make_loader(train_ds, 4)
    assert not in_process.persistent_workers and [b["index"].tolist() for b in in_process] == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9, 10, 11], [12, 13, 14, 15]]
    with pytest.raises(ConfigError, match="num_workers=-1: must be 0 or more"):
        make_loader(train_ds, 4, num_workers=-1)
