"""Audit: counts, duplicate detection on crafted images, and one test per problem message."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from busai.data.audit import DEFAULT_NEAR_THRESHOLD, _Decoded, _linked_groups, audit_dataset, near_duplicate_pairs
from busai.data.synthetic import make_phantom
from busai.errors import DataError


def _problems(root, kind):
    return [p for p in audit_dataset(root).problems if p.kind == kind]


def test_clean_synthetic_dataset(synthetic_dir):
    report = audit_dataset(synthetic_dir)
    assert report.counts == {"normal": 6, "benign": 11, "malignant": 7}
    assert report.images == 24 and report.masks == 25  # benign (1) has a second mask
    assert report.problems == [] and report.duplicate_groups == [] and report.conflicts == []
    data = report.to_dict()
    for key in ("counts", "masks", "images", "duplicate_groups", "exact_duplicate_groups", "conflicts", "problems", "near_threshold"):
        assert key in data
    assert data["near_threshold"] == DEFAULT_NEAR_THRESHOLD


# --- duplicates ---------------------------------------------------------------------------


def _phantom(seed: int, label: str = "benign") -> tuple[np.ndarray, np.ndarray]:
    image, masks = make_phantom(np.random.default_rng(seed), (128, 160), label)
    return image, masks[0]


def _add(root, label: str, name: str, image: np.ndarray, mask: np.ndarray, mode: str = "L") -> None:
    folder = root / label
    folder.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).convert(mode).save(folder / f"{name}.png")
    Image.fromarray(mask.astype(bool)).save(folder / f"{name}_mask.png")


def _noisy_reencoded(image: np.ndarray) -> np.ndarray:
    """The same scan after light noise and a JPEG round trip: different bytes, same picture."""
    noisy = np.clip(image + np.random.default_rng(9).normal(0, 4, image.shape), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(noisy).save(buffer, format="JPEG", quality=70)
    return np.asarray(Image.open(buffer).convert("L"))


@pytest.fixture
def crafted(tmp_path):
    """benign a, its exact copy as RGB under malignant, a noisy re-encoded copy, and two distinct scans."""
    image, mask = _phantom(1)
    _add(tmp_path, "benign", "a", image, mask)
    _add(tmp_path, "malignant", "a copy", image, mask, mode="RGB")
    _add(tmp_path, "benign", "a noisy", _noisy_reencoded(image), mask)
    for name, seed in (("b", 2), ("c", 3)):
        _add(tmp_path, "benign", name, *_phantom(seed))
    return tmp_path


def test_exact_copy_is_an_exact_duplicate_even_when_stored_as_rgb(crafted):
    report = audit_dataset(crafted)
    assert report.exact_duplicate_groups == [["benign/a.png", "malignant/a copy.png"]]


def test_noisy_reencoded_copy_groups_and_distinct_scans_do_not(crafted):
    report = audit_dataset(crafted)
    assert report.duplicate_groups == [["benign/a noisy.png", "benign/a.png", "malignant/a copy.png"]]


def test_group_across_classes_is_a_conflict(crafted):
    report = audit_dataset(crafted)
    assert report.conflicts == [{"keys": report.duplicate_groups[0], "classes": ["benign", "malignant"]}]


def test_near_duplicate_pairs_counts_differing_bits():
    hashes = np.array([0b0000, 0b0011, 0b1111, 0b0001], dtype=np.uint64)
    assert near_duplicate_pairs(hashes, 1).tolist() == [[0, 3], [1, 3]]
    assert near_duplicate_pairs(hashes, 2, chunk=2).tolist() == [[0, 1], [0, 3], [1, 2], [1, 3]]


def test_groups_are_transitive():
    """a~b and b~c put a, b, c in one group although a and c differ by more than the threshold."""
    decoded = [_Decoded(k, "benign", k, h) for k, h in (("a", 0b000000), ("b", 0b000011), ("c", 0b001111), ("d", 0b111111 << 20))]
    assert _linked_groups(decoded, 2) == [["a", "b", "c"]]


def test_near_threshold_out_of_range(cli, synthetic_dir):
    cli.fails("data", "audit", synthetic_dir, "--near-threshold", "65", expect="--near-threshold 65: must be between 0 and 64")


# --- one test per problem message ----------------------------------------------------------


def test_corrupt_image(busi_copy):
    (busi_copy / "benign" / "benign (3).png").write_bytes(b"\x89PNG\r\n\x1a\ntruncated")
    (problem,) = _problems(busi_copy, "unreadable_image")
    assert problem.path == "benign/benign (3).png"
    assert "benign (3).png: cannot decode image" in problem.message and "replace or remove the file" in problem.message


def test_corrupt_mask(busi_copy):
    (busi_copy / "benign" / "benign (3)_mask.png").write_bytes(b"not a png")
    (problem,) = _problems(busi_copy, "unreadable_mask")
    assert problem.path == "benign/benign (3)_mask.png" and "cannot decode image" in problem.message


def test_corrupt_image_stops_split(cli, busi_copy):
    (busi_copy / "benign" / "benign (3).png").write_bytes(b"junk")
    cli.fails("data", "split", busi_copy, "--out", busi_copy / "s.json", expect="benign (3).png: cannot decode image")


def test_mask_size_mismatch(busi_copy):
    Image.new("1", (60, 50)).save(busi_copy / "normal" / "normal (2)_mask.png")
    (problem,) = _problems(busi_copy, "mask_size_mismatch")
    assert problem.message.endswith("normal/normal (2)_mask.png: mask is 60x50 but its image is 80x64; re-export the mask at the image's size")


def test_non_binary_mask(busi_copy):
    ramp = np.tile(np.arange(80, dtype=np.uint8) * 3, (64, 1))
    Image.fromarray(ramp).save(busi_copy / "malignant" / "malignant (1)_mask.png")
    (problem,) = _problems(busi_copy, "mask_not_binary")
    assert "malignant (1)_mask.png: mask is not binary (80 values: 0, 3, 6, 9, 12, 15, ...); re-save it with only 0 and 255" in problem.message


def test_two_values_without_zero_is_not_binary(busi_copy):
    values = np.full((64, 80), 30, dtype=np.uint8)
    values[10:20, 10:20] = 255
    Image.fromarray(values).save(busi_copy / "malignant" / "malignant (1)_mask.png")
    (problem,) = _problems(busi_copy, "mask_not_binary")
    assert "(2 values: 30, 255)" in problem.message


def test_zero_one_mask_reads_as_lesion(busi_copy):
    values = np.zeros((64, 80), dtype=np.uint8)
    values[10:20, 10:20] = 1  # saved as 0/1 instead of 0/255: still a lesion
    Image.fromarray(values).save(busi_copy / "benign" / "benign (2)_mask.png")
    report = audit_dataset(busi_copy)
    assert not [p for p in report.problems if p.path.startswith("benign/benign (2)")]


def test_faint_mask_reads_as_empty(busi_copy):
    values = np.zeros((64, 80), dtype=np.uint8)
    values[10:20, 10:20] = 100  # neither 0/1 nor 0/255
    Image.fromarray(values).save(busi_copy / "benign" / "benign (2)_mask.png")
    report = audit_dataset(busi_copy)
    (faint,) = [p for p in report.problems if p.kind == "mask_faint"]
    assert "foreground value is 100 (2..127), so it reads as empty; re-save it with 0 and 255" in faint.message
    assert [p.path for p in report.problems if p.kind == "empty_mask"] == ["benign/benign (2).png"]


def test_empty_mask_on_benign(busi_copy):
    Image.new("1", (80, 64)).save(busi_copy / "benign" / "benign (4)_mask.png")
    (problem,) = _problems(busi_copy, "empty_mask")
    assert problem.message == "benign/benign (4).png: benign image has an empty mask; draw the lesion or move the image to normal/"


def test_second_mask_alone_may_be_empty(busi_copy):
    """The union counts: an empty extra mask beside a drawn one is fine."""
    Image.new("1", (80, 64)).save(busi_copy / "benign" / "benign (1)_mask_1.png")
    assert _problems(busi_copy, "empty_mask") == []


def test_non_empty_mask_on_normal(busi_copy):
    mask = np.zeros((64, 80), dtype=bool)
    mask[5:9, 5:9] = True
    Image.fromarray(mask).save(busi_copy / "normal" / "normal (5)_mask.png")
    (problem,) = _problems(busi_copy, "mask_on_normal")
    assert problem.message == "normal/normal (5).png: normal image has a non-empty mask; clear the mask or move the image to benign/ or malignant/"


def test_pairing_problems_are_reported_not_raised(busi_copy):
    (busi_copy / "benign" / "benign (5)_mask.png").unlink()
    report = audit_dataset(busi_copy)
    assert report.problem_counts() == {"missing_mask": 1}
    assert report.counts["benign"] == 10  # counts are the images a split can use


# --- CLI -----------------------------------------------------------------------------------


def test_cli_json_prints_one_object(cli, crafted):
    code, out, err = cli("data", "audit", crafted, "--json")
    assert code == 0, err
    data = json.loads(out)  # fails on anything besides one JSON document
    assert data["counts"] == {"normal": 0, "benign": 4, "malignant": 1}
    assert data["conflicts"][0]["classes"] == ["benign", "malignant"]


def test_cli_human_output(cli, crafted):
    code, out, _ = cli("data", "audit", crafted)
    assert code == 0
    assert "benign" in out and "1 duplicate groups (3 images; 1 exact" in out and "label conflicts (1)" in out


# --- issue 30, item 18: a file name that is not UTF-8 ------------------------------------------------
def test_a_name_that_is_not_utf8_is_a_problem_audit_lists_and_split_can_exclude(busi_copy, tmp_path, cli):
    import os

    from busai.data.splits import read_splits

    folder = os.fsencode(busi_copy / "normal")
    for suffix in (b".png", b"_mask.png"):
        os.rename(folder + b"/normal (1)" + suffix, folder + b"/normal\xff (1)" + suffix)
    code, out, _ = cli("data", "audit", busi_copy, "--json")
    assert code == 0
    (problem,) = json.loads(out)["problems"]
    assert problem["kind"] == "name_not_utf8"
    assert problem["message"] == "normal/normal\\xff (1).png: the file name is not valid UTF-8; rename the file (and its masks)"
    cli.fails(
        "data", "split", busi_copy, "--out", tmp_path / "s.json", expect="the file name is not valid UTF-8; rename the file (and its masks) (or pass --exclude"
    )
    code, _, err = cli("data", "split", busi_copy, "--out", tmp_path / "s.json", "--exclude-problems")
    assert code == 0, err
    splits = read_splits(tmp_path / "s.json")
    assert splits["excluded"] == ["normal/normal\\xff (1).png"] and splits["counts"]["excluded"]["normal"] == 1
    assert "not valid UTF-8" in splits["exclusions"]["normal/normal\\xff (1).png"]
    (tmp_path / "s.json").read_text(encoding="utf-8")  # plain UTF-8 JSON


def test_per_image_work_runs_in_order_on_one_thread_per_core():
    import threading

    from busai.data.audit import in_threads
    from busai.device import cores

    names = set()

    def square(x):
        names.add(threading.current_thread().name)
        if x == 77:
            raise DataError("image 77 is unreadable")
        return x * x

    assert list(in_threads(square, list(range(50)))) == [x * x for x in range(50)]
    main = threading.current_thread().name
    assert all(n.startswith("busai-decode") for n in names) if cores() >= 2 else names == {main}
    with pytest.raises(DataError, match="image 77"):  # an error inside a thread reaches the caller
        list(in_threads(square, list(range(100))))
    names.clear()
    assert list(in_threads(square, [1, 2, 3])) == [1, 4, 9] and names == {main}  # a handful: no pool
