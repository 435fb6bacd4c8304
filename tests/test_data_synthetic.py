"""Synthetic phantoms: layout, determinism, and that the classes look the way they should."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from busai.data.discover import discover_records, read_mask
from busai.data.synthetic import class_counts, make_phantom, write_synthetic_dataset
from busai.errors import ConfigError, DataError


def test_class_counts():
    assert class_counts(30) == {"normal": 7, "benign": 14, "malignant": 9}
    assert class_counts(100) == {"normal": 25, "benign": 45, "malignant": 30}
    assert class_counts(3) == {"normal": 1, "benign": 1, "malignant": 1}
    assert sum(class_counts(1).values()) == 1
    for n in range(3, 40):
        counts = class_counts(n)
        assert sum(counts.values()) == n and min(counts.values()) >= 1


def test_layout_and_file_modes(synthetic_dir):
    names = sorted(p.relative_to(synthetic_dir).as_posix() for p in synthetic_dir.rglob("*.png"))
    assert "benign/benign (1).png" in names and "benign/benign (1)_mask.png" in names
    assert [n for n in names if "_mask_" in n] == ["benign/benign (1)_mask_1.png"]
    with Image.open(synthetic_dir / "malignant" / "malignant (1).png") as image:
        assert image.mode == "L" and image.size == (80, 64)
    with Image.open(synthetic_dir / "malignant" / "malignant (1)_mask.png") as mask:
        assert mask.mode == "1"


def test_small_sets_have_no_extra_mask(tmp_path):
    root = write_synthetic_dataset(tmp_path / "d", n=6, size=(32, 32))
    assert not list(root.rglob("*_mask_1.png"))
    assert len(list(root.rglob("*.png"))) == 12


def test_same_seed_same_bytes(tmp_path):
    a = write_synthetic_dataset(tmp_path / "a", n=5, seed=4, size=(32, 40))
    b = write_synthetic_dataset(tmp_path / "b", n=5, seed=4, size=(32, 40))
    c = write_synthetic_dataset(tmp_path / "c", n=5, seed=5, size=(32, 40))
    files = sorted(p.relative_to(a) for p in a.rglob("*.png"))
    assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
    assert any((a / f).read_bytes() != (c / f).read_bytes() for f in files)


def test_masks_match_classes(synthetic_dir):
    for record in discover_records(synthetic_dir):
        area = read_mask(record).mean()
        assert (area == 0) if record.label == "normal" else (0.01 < area < 0.4), (record.key, area)


def test_lesions_are_hypoechoic_and_malignant_ones_cast_shadows():
    rng = np.random.default_rng(0)
    shadow = {"benign": [], "malignant": []}
    for label in shadow:
        for _ in range(10):
            image, (mask, *_) = make_phantom(rng, (128, 160), label)
            image = image.astype(float)
            assert image[mask].mean() < 0.6 * image[~mask].mean()
            columns = mask.any(axis=0)
            bottom = np.nonzero(mask.any(axis=1))[0].max()
            behind = image[bottom + 5 : bottom + 25][:, columns].mean()
            beside = image[bottom + 5 : bottom + 25][:, ~columns].mean()
            shadow[label].append(behind / beside)
    assert np.mean(shadow["malignant"]) < 0.75 < np.mean(shadow["benign"])


def test_malignant_outline_is_irregular():
    """Spicules make the malignant outline long for its area; an ellipse's is near the minimum."""
    from scipy import ndimage

    def roughness(label: str) -> float:
        rng = np.random.default_rng(1)
        values = []
        for _ in range(10):
            _, (mask, *_) = make_phantom(rng, (128, 160), label)
            edge = mask & ~ndimage.binary_erosion(mask)
            values.append(edge.sum() / np.sqrt(mask.sum()))
        return float(np.mean(values))

    assert roughness("malignant") > 1.3 * roughness("benign")


def test_refuses_a_folder_with_files(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(DataError, match="exists and is not an empty folder; choose a new folder"):
        write_synthetic_dataset(tmp_path, n=3)


def test_bad_arguments():
    with pytest.raises(ConfigError, match="--n 0: need at least 1 image"):
        write_synthetic_dataset("/nonexistent/never", n=0)
    with pytest.raises(ConfigError, match="--size 8 8: images must be at least 16x16"):
        write_synthetic_dataset("/nonexistent/never", n=3, size=(8, 8))


def test_cli_synth(cli, tmp_path):
    code, out, err = cli("data", "synth", tmp_path / "s", "--n", "4", "--seed", "1", "--size", "32", "48")
    assert code == 0, err
    assert "wrote 4 synthetic images" in out
    assert len(discover_records(tmp_path / "s")) == 4
    cli.fails("data", "synth", tmp_path / "s", "--n", "4", expect="exists and is not an empty folder")
