"""Discovery on a synthetic dataset, and one test per discovery error message."""

from __future__ import annotations

import json

import numpy as np
import pytest
from PIL import Image

from busai import CLASSES
from busai.data.discover import discover_records, read_image, read_mask, scan_dataset
from busai.errors import DataError


def test_discovers_every_synthetic_image_with_its_masks(synthetic_dir):
    records = discover_records(synthetic_dir)
    assert {c: sum(r.label == c for r in records) for c in CLASSES} == {"normal": 6, "benign": 11, "malignant": 7}
    assert [r.label for r in records] == sorted((r.label for r in records), key=CLASSES.index)
    first_benign = next(r for r in records if r.key == "benign/benign (1).png")
    assert [m.name for m in first_benign.masks] == ["benign (1)_mask.png", "benign (1)_mask_1.png"]
    image = read_image(first_benign.image, mode="RGB")
    union = read_mask(first_benign, size=image.shape[:2])
    parts = [read_image(m, mode="L") > 127 for m in first_benign.masks]
    assert image.shape == (64, 80, 3) and union.dtype == np.uint8
    assert np.array_equal(union.astype(bool), parts[0] | parts[1])


# --- one test per error message; folder-level errors go through the CLI -------------------


def test_missing_folder(cli, tmp_path):
    cli.fails("data", "audit", tmp_path / "nowhere", expect="nowhere: not found; pass a dataset folder or a CSV manifest")


def test_not_a_folder(cli, tmp_path):
    file = tmp_path / "data.zip"
    file.write_bytes(b"PK")
    cli.fails("data", "audit", file, expect="data.zip: not a folder or a .csv manifest; pass the dataset folder")


def test_empty_folder(cli, tmp_path):
    cli.fails("data", "audit", tmp_path, expect="no known dataset layout found; expected class folders (benign/ malignant/ normal/)")


def test_another_class_folder_is_a_label(cli, busi_copy):
    (busi_copy / "unsure").mkdir()
    for name in ("benign (1).png", "benign (1)_mask.png"):
        (busi_copy / "unsure" / name).write_bytes((busi_copy / "benign" / name).read_bytes())
    code, out, err = cli("data", "audit", busi_copy, "--json")
    assert code == 0, err
    counts = json.loads(out)["counts"]
    assert list(counts) == ["normal", "benign", "malignant", "unsure"] and counts["unsure"] == 1


def test_class_folder_that_is_not_a_simple_name(cli, busi_copy):
    (busi_copy / "not sure").mkdir()
    cli.fails("data", "audit", busi_copy, expect="not sure: label 'not sure' is not a simple name")


def test_class_folder_twice(cli, busi_copy):
    (busi_copy / "Benign").mkdir()
    cli.fails("data", "audit", busi_copy, expect="class 'benign' appears twice (Benign and benign); merge them")


def test_class_folders_without_images(cli, tmp_path):
    (tmp_path / "benign").mkdir()
    cli.fails("data", "split", tmp_path, "--out", tmp_path / "s.json", expect="no images found; see docs/datasets.md")


def test_image_without_mask(cli, busi_copy):
    (busi_copy / "malignant" / "malignant (2)_mask.png").unlink()
    problems = scan_dataset(busi_copy).problems
    assert [(p.path, p.kind) for p in problems] == [("malignant/malignant (2).png", "missing_mask")]
    assert "malignant (2).png: no mask found; add malignant (2)_mask.png beside it" in problems[0].message
    cli.fails("data", "split", busi_copy, "--out", busi_copy / "s.json", expect="no mask found; add malignant (2)_mask.png")


def test_mask_without_image(cli, busi_copy):
    (busi_copy / "normal" / "normal (3).png").unlink()
    problems = scan_dataset(busi_copy).problems
    assert [p.kind for p in problems] == ["mask_without_image"]
    assert "normal (3)_mask.png: mask has no image normal (3).png" in problems[0].message
    cli.fails("data", "split", busi_copy, "--out", busi_copy / "s.json", expect="mask has no image normal (3).png; add the image or remove the mask")


def test_non_image_file(cli, busi_copy):
    (busi_copy / "benign" / "notes.txt").write_text("biopsy pending")
    problems = scan_dataset(busi_copy).problems
    assert [(p.path, p.kind) for p in problems] == [("benign/notes.txt", "not_an_image")]
    cli.fails("data", "split", busi_copy, "--out", busi_copy / "s.json", expect="notes.txt: not an image file; move it out of the dataset folder")


def test_several_pairing_problems_are_summarised(busi_copy):
    (busi_copy / "benign" / "a.txt").write_text("x")
    (busi_copy / "benign" / "b.txt").write_text("x")
    with pytest.raises(DataError, match=r"\(and 1 more; run `busai data audit "):
        discover_records(busi_copy)


def test_read_image_missing_file(tmp_path):
    with pytest.raises(DataError, match="gone.png: file not found; check the path"):
        read_image(tmp_path / "gone.png")


def test_read_image_corrupt_file(tmp_path):
    path = tmp_path / "broken.png"
    path.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    with pytest.raises(DataError, match=r"broken.png: cannot decode image \(\w+\); replace or remove the file"):
        read_image(path)


def test_read_mask_size_differs_from_image(busi_copy):
    record = next(r for r in discover_records(busi_copy) if r.label == "malignant")
    with pytest.raises(DataError, match="mask is 80x64 but its image is 90x70; re-export the mask at the image's size"):
        read_mask(record, size=(70, 90))


def test_read_mask_parts_of_different_sizes(busi_copy):
    record = next(r for r in discover_records(busi_copy) if len(r.masks) == 2)
    Image.new("1", (40, 30)).save(record.masks[1])
    with pytest.raises(DataError, match="mask is 40x30 but the image's other mask is 80x64; re-export it"):
        read_mask(record)


# --- issue 30: EXIF orientation (3) and multi-page TIFFs (14) --------------------------------------
def _tagged_jpeg(path, upright: np.ndarray, orientation: int = 6):
    """Save ``upright`` as a JPEG whose stored pixels need EXIF ``orientation`` to be shown upright,
    as a phone or scanner writes it: 6 = stored turned 90 degrees anticlockwise, shown turned clockwise."""
    stored = np.rot90(upright, 1) if orientation == 6 else upright
    exif = Image.Exif()
    exif[0x0112] = orientation
    Image.fromarray(np.ascontiguousarray(stored)).save(path, quality=95, exif=exif)
    return path


def _marked(height=40, width=60) -> np.ndarray:
    image = np.full((height, width), 90, np.uint8)
    image[:10, :20] = 250  # a bright block at the top left of the upright image
    return image


def test_exif_orientation_is_applied_where_images_are_read(tmp_path):
    path = _tagged_jpeg(tmp_path / "phone.jpg", _marked())
    with Image.open(path) as raw:
        assert raw.size == (40, 60)  # stored 40 wide, 60 tall: sideways
    gray = read_image(path, mode="L")
    assert gray.shape == (40, 60)
    assert gray[:10, :20].mean() > 230 and gray[15:, 25:].mean() < 110  # the block is back at the top left


def test_mask_values_take_each_pixels_brightest_channel_in_every_mode(tmp_path):
    from busai.data.discover import decode_image, mask_values

    rgb = np.zeros((6, 7, 3), np.uint8)
    rgb[1, 2] = (200, 0, 0)  # pure red: grey conversion would dim it below 127
    rgb[3, 4] = (0, 90, 250)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE).save(tmp_path / "palette.png")
    Image.fromarray(rgb.max(axis=2)).save(tmp_path / "grey.png")
    for name in ("rgb.png", "palette.png", "grey.png"):
        assert np.array_equal(mask_values(tmp_path / name), rgb.max(axis=2)), name
    assert decode_image(tmp_path / "grey.png").orientation is None
    assert decode_image(_tagged_jpeg(tmp_path / "phone.jpg", _marked()), brightest=True).orientation == 6


def test_audit_notes_orientation_and_a_mask_drawn_upright_fits(busi_copy):
    from busai.data.audit import audit_dataset

    image = read_image(busi_copy / "benign" / "benign (3).png", mode="L")
    (busi_copy / "benign" / "benign (3).png").unlink()
    _tagged_jpeg(busi_copy / "benign" / "benign (3).jpg", image)  # the mask stays the upright 64x80 PNG
    report = audit_dataset(busi_copy)
    notes = [p for p in report.problems if p.kind == "exif_orientation"]
    assert [p.path for p in notes] == ["benign/benign (3).jpg"]
    assert notes[0].message.startswith("benign/benign (3).jpg: its EXIF Orientation tag (6, turned 90 degrees) is applied, as viewers show it")
    assert report.problem_counts() == {"exif_orientation": 1}  # no mask_size_mismatch: the image is read upright
    (record,) = [r for r in discover_records(busi_copy) if r.key == "benign/benign (3).jpg"]
    assert read_mask(record, size=read_image(record.image).shape[:2]).shape == (64, 80)


def _tiff_pages(path, pages: list[np.ndarray]):
    Image.fromarray(pages[0]).save(path, save_all=True, append_images=[Image.fromarray(p) for p in pages[1:]])
    return path


def test_multi_page_tiff_frames_are_read_like_a_cine(tmp_path):
    pages = [np.full((16, 24), value, np.uint8) for value in (10, 120, 240)]
    path = _tiff_pages(tmp_path / "sweep.tif", pages)
    with pytest.raises(DataError, match=r"sweep.tif: a multi-page TIFF of 3 pages; say which frame to read"):
        read_image(path)
    assert [int(read_image(path, mode="L", frame=n).mean()) for n in (1, 2, 3)] == [10, 120, 240]
    with pytest.raises(DataError, match=r"sweep.tif: --frame 4 is out of range; the file holds 3 frame\(s\), numbered from 1"):
        read_image(path, frame=4)
    Image.fromarray(pages[0]).save(tmp_path / "one.png")
    assert read_image(tmp_path / "one.png", frame=1).shape == (16, 24, 3)  # a plain image's only frame


def test_multi_page_tiff_in_a_dataset_uses_its_first_frame_with_a_note(busi_copy):
    from busai.data.audit import audit_dataset

    image = read_image(busi_copy / "benign" / "benign (3).png", mode="L")
    (busi_copy / "benign" / "benign (3).png").unlink()
    _tiff_pages(busi_copy / "benign" / "benign (3).tif", [image, 255 - image])
    report = audit_dataset(busi_copy)
    (note,) = [p for p in report.problems if p.kind == "first_frame"]
    assert note.message == (
        "benign/benign (3).tif: a multi-page TIFF of 2 pages; its first frame is used (name another in a frame column of a manifest or labels table)"
    )
    assert report.problem_counts() == {"first_frame": 1}
    (record,) = [r for r in discover_records(busi_copy) if r.key == "benign/benign (3).tif"]
    assert record.frame == 1 and np.array_equal(read_image(record.image, mode="L", frame=record.frame), image)
