"""BusDataset, ImageCache and the weighted sampler."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest
import torch
from PIL import Image

import busai.data.dataset as dataset_module
from busai.data.dataset import BusDataset, HardExampleSampler, ImageCache, make_weighted_sampler, paste_lesion
from busai.data.discover import discover_records
from busai.errors import ConfigError

MEAN, STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def test_item_shapes_and_types(synthetic_dir):
    records = discover_records(synthetic_dir)
    ds = BusDataset(records, 48, MEAN, STD, augment="paper")
    item = ds[0]
    assert item["image"].shape == (3, 48, 48) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (1, 48, 48) and item["mask"].dtype == torch.float32
    assert set(item["mask"].unique().tolist()) <= {0.0, 1.0}
    assert item["label"].dtype == torch.int64 and item["label"].item() == records[0].label_index
    assert item["index"] == 0 and len(ds) == len(records)
    assert ds.labels == [r.label_index for r in records]


def test_normalisation_without_augmentation(synthetic_dir):
    record = discover_records(synthetic_dir)[0]
    image = np.asarray(Image.open(record.image).convert("RGB").resize((32, 32), Image.BILINEAR), dtype=np.float32) / 255
    got = BusDataset([record], 32, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))[0]["image"].numpy().transpose(1, 2, 0)
    assert np.abs(got * 0.25 + 0.5 - image).mean() < 0.03  # same picture up to the resize filter


def test_lesion_masks_are_resized_with_nearest(synthetic_dir):
    records = [r for r in discover_records(synthetic_dir) if r.label == "malignant"]
    masks = torch.stack([BusDataset(records, 40, MEAN, STD)[i]["mask"] for i in range(len(records))])
    assert set(masks.unique().tolist()) == {0.0, 1.0}


@pytest.fixture
def bright_square(tmp_path):
    """A black image with a bright off-centre square whose mask is exactly that square."""
    image = np.zeros((64, 64), dtype=np.uint8)
    image[8:28, 36:56] = 220
    (tmp_path / "benign").mkdir()
    Image.fromarray(image).save(tmp_path / "benign" / "sq.png")
    Image.fromarray(image > 0).save(tmp_path / "benign" / "sq_mask.png")
    return discover_records(tmp_path)


@pytest.mark.parametrize("recipe", ["paper", "strong"])
def test_mask_stays_on_the_bright_pixels_under_augmentation(bright_square, recipe):
    ds = BusDataset(bright_square, 64, (0, 0, 0), (1, 1, 1), augment=recipe, seed=0)
    positions, areas = set(), set()
    for epoch in range(40):
        ds.set_epoch_seed(epoch)  # an item's augmentation is drawn per (seed, epoch, index)
        item = ds[0]
        bright = item["image"][0] > 0.3
        mask = item["mask"][0] > 0.5
        agreement = (bright == mask).float().mean().item()
        assert agreement > 0.97, agreement
        ys, xs = torch.nonzero(mask, as_tuple=True)
        positions.add((ys.float().mean().round().item(), xs.float().mean().round().item()))
        areas.add(round(mask.sum().item() / 400, 1))  # the square covers 400 pixels unaugmented
    assert len(positions) >= 4  # flips and rotations did move the square
    if recipe == "strong":
        assert min(areas) <= 0.8 and max(areas) >= 1.2  # the scale range (0.8-1.25)^2 in area is used
    else:
        assert areas <= {0.9, 1.0, 1.1}  # rotation alone keeps the area


def test_no_augmentation_returns_the_cached_image(bright_square):
    ds = BusDataset(bright_square, 64, (0, 0, 0), (1, 1, 1), augment="none", seed=0)
    assert torch.equal(ds[0]["image"], ds[0]["image"]) and ds.augment is None
    assert ds[0]["mask"][0, 8:28, 36:56].all() and ds[0]["mask"].sum() == 400


def test_unknown_augmentation_is_refused(bright_square):
    with pytest.raises(ConfigError, match=r"augment 'heavy': unknown; choose one of paper, strong, scanner, framing, none"):
        BusDataset(bright_square, 64, MEAN, STD, augment="heavy")


def test_augmentation_is_reproducible_with_a_seed(bright_square):
    a = BusDataset(bright_square, 64, MEAN, STD, augment="paper", seed=5)
    b = BusDataset(bright_square, 64, MEAN, STD, augment="paper", seed=5)
    for _ in range(5):
        assert torch.equal(a[0]["image"], b[0]["image"])


def _donor():
    """A 64 px scan of grey 100 holding a 10 x 10 lesion of grey 200 in its corner, and its mask."""
    image = np.full((64, 64, 3), 100, dtype=np.uint8)
    mask = np.zeros((64, 64), dtype=np.uint8)
    image[2:12, 2:12], mask[2:12, 2:12] = 200, 1
    return image, mask


@pytest.mark.parametrize(("fade", "lesion_grey"), [(1.0, 200), (0.5, 130), (0.0, 60)])
def test_paste_lesion_sets_echogenicity_between_donor_and_host(fade, lesion_grey):
    host = np.full((64, 64, 3), 60, dtype=np.uint8)
    host_mask = np.zeros((64, 64), dtype=np.uint8)
    host_mask[40:64, 0:64] = 1  # the host's own lesion: the paste must stay clear of it
    image, mask = paste_lesion(host, host_mask, *_donor(), np.random.default_rng(0), fade=fade)
    pasted = mask.astype(bool) & ~host_mask.astype(bool)
    assert pasted.sum() == 100  # all of the lesion, none of it over the host's own
    ys, xs = np.nonzero(pasted)
    core = image[ys.min() + 3 : ys.max() - 2, xs.min() + 3 : xs.max() - 2]  # inside the 3-pixel blending ramp
    assert np.all(core == lesion_grey)  # 60 + fade * (200 - 60)
    assert np.all(image[~pasted] == 60) and host.max() == 60  # only lesion pixels change; inputs untouched


def test_paste_lesion_skips_what_cannot_be_placed():
    host, host_mask = np.full((64, 64, 3), 60, dtype=np.uint8), np.ones((64, 64), dtype=np.uint8)
    image, mask = paste_lesion(host, host_mask, *_donor(), np.random.default_rng(0), fade=1.0)
    assert image is host and mask is host_mask  # no spot clear of the host's lesion
    big_image, big_mask = np.full((64, 64, 3), 200, dtype=np.uint8), np.ones((64, 64), dtype=np.uint8)
    image, mask = paste_lesion(host, np.zeros_like(host_mask), big_image, big_mask, np.random.default_rng(0), fade=1.0)
    assert image is host  # a lesion as large as the scan does not fit


def test_lesion_paste_gives_normal_scans_a_lesion_per_epoch_seed(synthetic_dir):
    records = discover_records(synthetic_dir)
    normals = [i for i, r in enumerate(records) if r.label == "normal"]
    plain = BusDataset(records, 64, MEAN, STD, seed=0)
    pasting = BusDataset(records, 64, MEAN, STD, seed=0, lesion_paste=1.0, cache=plain.cache)
    assert all(plain[i]["mask"].sum() == 0 for i in normals)
    first = [pasting[i]["mask"] for i in normals]
    assert sum(m.sum() > 0 for m in first) >= len(normals) - 1  # a rare draw may find no spot
    assert all(torch.equal(a, pasting[i]["mask"]) for a, i in zip(first, normals))  # same epoch, same paste
    pasting.set_epoch_seed(1)
    assert not all(torch.equal(a, pasting[i]["mask"]) for a, i in zip(first, normals))


def test_cache_decodes_each_file_once(synthetic_dir, monkeypatch):
    calls = Counter()
    real_image, real_mask = dataset_module.read_image, dataset_module.read_mask
    monkeypatch.setattr(dataset_module, "read_image", lambda path, mode="RGB", **kw: calls.update(["image"]) or real_image(path, mode, **kw))
    monkeypatch.setattr(dataset_module, "read_mask", lambda record, size=None: calls.update(["mask"]) or real_mask(record, size))
    records = discover_records(synthetic_dir)
    cache = ImageCache()
    train = BusDataset(records[:16], 32, MEAN, STD, augment="paper", cache=cache)
    val = BusDataset(records, 32, MEAN, STD, cache=cache)  # overlaps train on purpose
    for _ in range(3):  # epochs
        for ds in (train, val):
            for i in range(len(ds)):
                ds[i]
    assert calls == {"image": len(records), "mask": len(records)} and len(cache) == len(records)
    BusDataset(records, 40, MEAN, STD, cache=cache)[0]  # another size is another entry
    assert calls["image"] == len(records) + 1


def test_warm_fills_the_cache(synthetic_dir):
    records = discover_records(synthetic_dir)
    cache = ImageCache()
    cache.warm(records, 32, progress=True)
    assert len(cache) == len(records)
    image, mask = cache.get(records[0], 32)
    assert image.shape == (32, 32, 3) and image.dtype == np.uint8 and mask.shape == (32, 32) and not image.flags.writeable


def test_weighted_sampler_balances_classes():
    labels = [0] * 10 + [1] * 30 + [2] * 60
    sampler = make_weighted_sampler(labels, seed=0)
    assert sampler.num_samples == len(labels) and sampler.replacement
    drawn = Counter(labels[i] for _ in range(50) for i in sampler)
    for c in (0, 1, 2):
        assert abs(drawn[c] / sum(drawn.values()) - 1 / 3) < 0.03, drawn


def test_weighted_sampler_is_seeded():
    labels = [0, 1, 1, 2, 2, 2]
    assert list(make_weighted_sampler(labels, seed=3)) == list(make_weighted_sampler(labels, seed=3))


def test_hard_example_sampler_draws_by_last_difficulty():
    sampler = HardExampleSampler(4, seed=0)
    assert torch.equal(sampler.weights, torch.full((4,), 1.2, dtype=torch.double))  # unseen: all hard
    sampler.update(torch.tensor([0, 1, 2]), torch.tensor([1.0, 0.0, 0.0]))
    drawn = Counter(i for _ in range(2000) for i in sampler)
    # Image 0 missed (weight 1.2), images 1 and 2 solved (0.2), image 3 not seen yet (1.2).
    assert abs(drawn[0] / drawn[1] - 6) < 0.6 and abs(drawn[3] / drawn[2] - 6) < 0.6, drawn


def test_hard_example_sampler_scales_class_weights_and_restores_its_state():
    base = torch.tensor([1.0, 1.0, 3.0], dtype=torch.double)
    sampler = HardExampleSampler(3, base, floor=0.5, seed=1)
    sampler.update([2], torch.tensor([0.0]))
    assert torch.allclose(sampler.weights, torch.tensor([1.5, 1.5, 1.5], dtype=torch.double))
    restored = HardExampleSampler(3, base, floor=0.5, seed=1)
    restored.load_state_dict(sampler.state_dict())
    assert list(restored) == list(sampler)


def test_augmentation_is_drawn_per_seed_epoch_and_item_not_per_worker(bright_square, monkeypatch):
    """Which worker draws an item, and after which others, changes nothing: loaders with any
    number of workers give the same batches; another epoch or seed gives other augmentations."""
    from types import SimpleNamespace

    records = bright_square * 4
    ds = BusDataset(records, 64, MEAN, STD, augment="paper", seed=0)
    ds.set_epoch_seed(7)
    in_order = [ds[i]["image"] for i in range(4)]
    monkeypatch.setattr(torch.utils.data, "get_worker_info", lambda: SimpleNamespace(seed=123, id=1))
    reversed_in_a_worker = [ds[i]["image"] for i in reversed(range(4))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(in_order, reversed_in_a_worker))
    assert all(torch.equal(a, ds[(i, 7)]["image"]) for i, a in enumerate(in_order))  # the epoch passed with the index
    assert not all(torch.equal(in_order[0], ds[(0, epoch)]["image"]) for epoch in range(8, 14))
    assert not all(torch.equal(in_order[0], in_order[i]) for i in range(1, 4))  # the same scan, other items: other draws
    other_seed = BusDataset(records, 64, MEAN, STD, augment="paper", seed=1)
    assert not all(torch.equal(in_order[0], other_seed[(0, epoch)]["image"]) for epoch in range(7, 13))
