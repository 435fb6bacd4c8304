"""The ``scanner`` augmentation: strong plus framing, tints, JPEG and burnt-in annotations."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import albumentations as A
import numpy as np
import pytest
import torch
from PIL import Image

from busai.cli import build_parser, main
from busai.commands.train import config_from_args
from busai.data.dataset import BusDataset, build_augmentations, scanner_shift
from busai.data.discover import discover_records
from busai.data.overlays import BurntInOverlays, burn_overlays


def square(size: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """A black RGB image with a bright off-centre 20 x 20 square, and the square as a {0,1} mask."""
    image = np.zeros((size, size, 3), dtype=np.uint8)
    mask = np.zeros((size, size), dtype=np.uint8)
    image[8:28, 36:56], mask[8:28, 36:56] = 220, 1
    for array in (image, mask):
        array.setflags(write=False)  # as ImageCache hands them out
    return image, mask


def test_scanner_keeps_size_dtype_and_a_binary_mask():
    image, mask = square(96)
    augment = build_augmentations("scanner", seed=0)
    for seed in range(30):
        augment.set_random_seed(seed)
        out = augment(image=image, mask=mask)
        assert out["image"].shape == (96, 96, 3) and out["image"].dtype == np.uint8
        assert out["mask"].shape == (96, 96) and out["mask"].dtype == np.uint8
        assert set(np.unique(out["mask"]).tolist()) <= {0, 1}


def test_overlays_change_the_image_and_never_the_mask():
    image, mask = square(128)
    overlays = A.Compose([BurntInOverlays(p=1.0)], seed=0)
    for seed in range(10):
        overlays.set_random_seed(seed)
        out = overlays(image=image, mask=mask)
        assert np.array_equal(out["mask"], mask)
        assert (out["image"] != image).any(axis=2).sum() >= 20  # at least a mark's worth of pixels drawn
        assert out["image"].shape == image.shape and out["image"].dtype == np.uint8
    assert (image[8:28, 36:56] == 220).all() and image.sum() == 220 * 400 * 3  # the input is not drawn on


@pytest.mark.parametrize("size", [32, 512])
def test_overlays_scale_with_the_image(size):
    """A 32-pixel and a 512-pixel image both get marks, covering a similar small share of the image."""
    image = np.zeros((size, size, 3), dtype=np.uint8)
    shares = [(burn_overlays(image, np.random.default_rng(seed)) > 0).any(axis=2).mean() for seed in range(20)]
    assert min(shares) > 0 and 0.003 < np.mean(shares) < 0.15, shares


def test_a_fixed_seed_reproduces_the_draws_and_another_seed_differs():
    image, mask = square(64)
    a, b, c = (build_augmentations("scanner", seed=s) for s in (3, 3, 4))
    outs = [[t(image=image, mask=mask) for _ in range(6)] for t in (a, b, c)]
    for x, y in zip(outs[0], outs[1]):
        assert np.array_equal(x["image"], y["image"]) and np.array_equal(x["mask"], y["mask"])
    assert any(not np.array_equal(x["image"], z["image"]) for x, z in zip(outs[0], outs[2]))


def test_bus_dataset_draws_the_same_scanner_augmentation_per_seed_epoch_and_item(synthetic_dir):
    records = discover_records(synthetic_dir)[:2]
    a = BusDataset(records, 48, (0, 0, 0), (1, 1, 1), augment="scanner", seed=7)
    b = BusDataset(records, 48, (0, 0, 0), (1, 1, 1), augment="scanner", seed=7)
    for epoch in range(3):
        a.set_epoch_seed(epoch), b.set_epoch_seed(epoch)
        assert torch.equal(a[1]["image"], b[1]["image"]) and torch.equal(a[1]["mask"], b[1]["mask"])


def test_framing_moves_the_mask_with_the_image():
    image, mask = square(64)
    (framing,) = scanner_shift()[0]
    framing = A.Compose([A.OneOf(framing.transforms, p=1.0)], seed=0)
    areas = set()
    for seed in range(40):
        framing.set_random_seed(seed)
        out = framing(image=image, mask=mask)
        bright = out["image"][..., 0] > 110
        assert (bright == (out["mask"] > 0)).mean() > 0.98
        areas.add(int(out["mask"].sum()))
    assert min(areas) < 400 * 0.8 and max(areas) > 400 * 1.2  # lesions drawn smaller and larger


@pytest.mark.parametrize("which, squeezed", [(1, 0), (2, 1)])
def test_letterbox_and_pillarbox_add_black_bars_and_squeeze_one_axis(which, squeezed):
    """Letterbox pads top and bottom, so the square keeps its width and loses height (pillarbox: the
    other way round), and the image's first and last rows (columns) are black bars."""
    image, mask = square(64)
    bars = A.Compose([A.OneOf([scanner_shift()[0][0].transforms[which]], p=1.0)], seed=0)
    for seed in range(10):
        bars.set_random_seed(seed)
        out = bars(image=image, mask=mask)
        extent = [np.ptp(np.nonzero(out["mask"])[axis]) + 1 for axis in (0, 1)]
        assert extent[1 - squeezed] == 20 and 12 <= extent[squeezed] <= 18, extent
        edges = out["image"][[0, -1]] if squeezed == 0 else out["image"][:, [0, -1]]
        assert not edges.any()


def test_whole_recipe_keeps_the_mask_on_the_bright_square():
    image, mask = square(64)
    augment = build_augmentations("scanner", seed=0)
    for seed in range(40):
        augment.set_random_seed(seed)
        out = augment(image=image, mask=mask)
        luma = out["image"].astype(float).mean(axis=2)
        inside, outside = out["mask"] > 0, out["mask"] == 0
        assert inside.sum() > 150  # the square is never cropped away (crops stop at a fifth per side)
        assert np.median(luma[inside]) - np.median(luma[outside]) > 90


def test_the_command_line_offers_scanner(capsys):
    cfg = config_from_args(build_parser().parse_args(["train", "seg", "--out", "x", "--augment", "scanner"]))
    assert cfg.augment == "scanner"
    with pytest.raises(SystemExit) as exit_:
        main(["train", "--help"])
    assert exit_.value.code == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "--augment {paper,strong,scanner,framing,none}" in out and "scanner (strong plus framing" in out


def test_preview_script_draws_a_grid_and_keeps_an_existing_file(tmp_path, capsys):
    spec = importlib.util.spec_from_file_location("augment_preview", Path(__file__).parents[1] / "benchmarks" / "augment_preview.py")
    preview = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(preview)
    out = tmp_path / "grid.png"
    assert preview.main(["--out", str(out), "--size", "32", "--rows", "2", "--cols", "3"]) == 0
    grid = np.asarray(Image.open(out))
    assert grid.shape == (64, 96, 3)
    assert (grid[:32, :32] == 255 * np.array([1, 0, 0])).all(axis=2).any()  # the first tile outlines the phantom's lesion in red
    out.write_bytes(b"mine")
    assert preview.main(["--out", str(out), "--size", "32"]) == 1
    assert out.read_bytes() == b"mine" and f"error: {out} exists" in capsys.readouterr().err
    assert preview.main(["--out", str(tmp_path / "b.png"), "--image", str(tmp_path / "nope.png")]) == 1
    assert "nope.png: no such file" in capsys.readouterr().err
