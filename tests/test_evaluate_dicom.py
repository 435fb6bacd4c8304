"""DICOM images in labelled datasets (issue 22, item 1): every layout reads them, a cine's frame comes
from the table, the pixel spacing from the file; a tiny model scores them exactly as the same images
saved as PNG; nothing of the patient's identity reaches the outputs; bad files and cells give one line."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from busai.data.discover import read_image
from busai.data.sources import read_records
from busai.data.synthetic import write_layout, write_synthetic_dataset
from dicom_files import PATIENT_ID, PATIENT_NAME, region, speckle_scan, write_dicom

pytest.importorskip("pydicom")


@pytest.fixture(scope="module")
def png_dataset(tmp_path_factory) -> Path:
    """Phantoms the tiny runs never saw (another seed), in the images-masks layout as PNG."""
    root = tmp_path_factory.mktemp("dicom_eval")
    return write_layout(write_synthetic_dataset(root / "busi", n=9, seed=11, size=(64, 80)), root / "png", "images-masks")


def as_dicom(png_dir: Path, out: Path, *, extensionless: bool = True) -> Path:
    """A copy of ``png_dir`` whose images are DICOM files (every third without an extension, as
    scanners export them), calibrated at 0.1 mm per pixel by an ultrasound region; masks stay PNG."""
    shutil.copytree(png_dir, out)
    for i, png in enumerate(sorted((out / "images").glob("*.png"))):
        name = png.stem if extensionless and i % 3 == 0 else png.stem + ".dcm"
        write_dicom(out / "images" / name, read_image(png, "L"), regions=[region(0, 0, 79, 63, 0.01, 0.01)])
        png.unlink()
    return out


def _comparable(value):
    """A metrics.json entry without what names files (.png against .dcm), paths and the command."""
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items() if k not in {"image", "command", "figure", "sample_figure", "reliability_figure"}}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value


def test_dicom_dataset_scores_as_its_pngs(cli, seg_run, cls_run, png_dataset, tmp_path):
    dicom = as_dicom(png_dataset, tmp_path / "dcm")
    assert {p.suffix for p in (dicom / "images").iterdir()} == {"", ".dcm"}
    records = read_records([dicom])
    assert len(records) == 9 and {r.pixel_spacing_mm for r in records} == {0.1} and {r.frame for r in records} == {None}
    for run in (seg_run, cls_run):
        scores = {}
        for name, data in (("png", png_dataset), ("dcm", dicom)):
            out = tmp_path / f"{run.name}_{name}"
            figures = [] if name == "dcm" else ["--no-figures"]  # the DICOM run draws its figures from DICOM pixels
            code, _, err = cli("evaluate", run, "--data", data, "--all", "--out", out, "--n-boot", "20", *figures)
            assert code == 0, err
            (task_dir,) = out.iterdir()
            scores[name] = json.loads((task_dir / "metrics.json").read_text())["all"]
            files = [p for p in out.rglob("*") if p.is_file()]
            assert all(PATIENT_NAME.encode() not in p.read_bytes() and PATIENT_ID.encode() not in p.read_bytes() for p in files)
        assert scores["dcm"]["images"] == 9
        assert _comparable(scores["dcm"]) == _comparable(scores["png"])
        if run == cls_run:
            assert Path(scores["dcm"]["reliability_figure"]).stat().st_size > 0
        else:
            assert Path(scores["dcm"]["figure"]).stat().st_size > 0


@pytest.mark.parametrize("layout", ["busi", "class-folders"])
def test_class_folder_layouts_read_dicom(png_dataset, tmp_path, layout):
    from busai.data.sources import detect_format

    busi = png_dataset.parent / "busi"
    png = write_layout(busi, tmp_path / "png", layout) if layout != "busi" else busi
    dicom = Path(shutil.copytree(png, tmp_path / "dcm"))
    for i, path in enumerate(sorted(p for p in dicom.rglob("*.png") if "_mask" not in p.name)):
        write_dicom(path.with_suffix("" if i % 2 else ".dcm"), read_image(path, "L"), pixel_spacing=(0.3, 0.3))
        path.unlink()
    assert detect_format(dicom) == layout
    before, after = read_records([png]), read_records([dicom])
    assert [r.label for r in after] == [r.label for r in before] and len(after) == 9
    assert {r.pixel_spacing_mm for r in after} == {0.3}
    for a, b in zip(before, after):
        assert b.image.name in {a.image.stem, a.image.stem + ".dcm"} and [m.name for m in b.masks] == [m.name for m in a.masks]
        np.testing.assert_array_equal(read_image(b.image, "RGB"), read_image(a.image, "RGB"))


def test_manifest_frames_and_spacing(tmp_path, capsys, caplog):
    frames = np.stack([speckle_scan(64, 80, seed=s) for s in range(3)])
    write_dicom(tmp_path / "cine.dcm", frames, regions=[region(0, 0, 79, 63, 0.02, 0.02)])
    write_dicom(tmp_path / "cine2.dcm", frames)
    write_dicom(tmp_path / "flat.dcm", frames[0], pixel_spacing=(0.2, 0.2))
    write_dicom(tmp_path / "wide.dcm", frames[0], regions=[region(0, 0, 79, 63, 0.01, 0.02)])  # pixels not square
    manifest = tmp_path / "m.csv"
    manifest.write_text(
        "image,mask,label,pixel_spacing_mm,frame\ncine.dcm,,normal,,2\ncine2.dcm,,normal,,\nflat.dcm,,normal,,\nflat2.dcm,,normal,0.05,\nwide.dcm,,normal,,\n"
    )
    shutil.copy(tmp_path / "flat.dcm", tmp_path / "flat2.dcm")
    from busai.cli import user_messages
    from busai.data import sources

    caplog.set_level(logging.INFO, logger="busai")
    cine, cine2, flat, flat2, wide = read_records([manifest])
    # The table's frame; the region's 0.02 cm; the first frame of a cine the table names no frame for.
    assert (cine.frame, cine.pixel_spacing_mm) == (2, 0.2)
    np.testing.assert_array_equal(read_image(cine.image, "L", frame=cine.frame), frames[1])
    assert cine2.frame == 1 and cine2.pixel_spacing_mm is None
    assert capsys.readouterr().err == ""  # the library logs its note, never prints
    assert "cine2.dcm: a cine of 3 frames; its first frame is used" in caplog.text
    sources._NOTED.clear()
    with user_messages():  # what a busai command shows
        read_records([manifest])
    assert "note: cine2.dcm: a cine of 3 frames; its first frame is used (name another in a frame column" in capsys.readouterr().err
    with user_messages():
        read_records([manifest])  # training reads the records once per split: the note is said once
    assert "note:" not in capsys.readouterr().err
    assert (flat.frame, flat.pixel_spacing_mm) == (None, 0.2)  # PixelSpacing
    assert flat2.pixel_spacing_mm == 0.05  # the table's value wins over the file's
    assert wide.pixel_spacing_mm is None  # one number cannot hold 0.1 x 0.2 mm pixels


@pytest.mark.parametrize(
    "row, message",
    [
        ("cine.dcm,normal,5", "m.csv row 2: frame 5 is out of range; cine.dcm holds 3 frame(s), numbered from 1"),
        ("cine.dcm,normal,x", "m.csv row 2: frame 'x' is not a frame number (1 for the first); fix or empty the cell"),
        ("scan.png,normal,1", "m.csv row 2: frame 1 given, but scan.png is not a DICOM file or a TIFF; empty the cell"),
        ("notes.txt,normal,", "m.csv row 2: notes.txt is not an image file (.bmp, .jpeg, .jpg, .png, .tif, .tiff or DICOM); fix the row"),
    ],
)
def test_bad_frame_cells_are_one_line(cli, tmp_path, row, message):
    write_dicom(tmp_path / "cine.dcm", np.stack([speckle_scan(32, 40, seed=s) for s in range(3)]))
    Image.fromarray(speckle_scan(32, 40)).save(tmp_path / "scan.png")
    (tmp_path / "notes.txt").write_text("not a scan")
    (tmp_path / "m.csv").write_text("image,label,frame\n" + row + "\n")
    cli.fails("data", "audit", tmp_path / "m.csv", expect=message)


def test_a_cine_without_a_frame_is_refused_by_plain_reading(tmp_path):
    from busai.errors import DataError

    write_dicom(tmp_path / "cine.dcm", np.stack([speckle_scan(32, 40, seed=s) for s in range(2)]))
    with pytest.raises(DataError, match=r"cine.dcm: a DICOM cine of 2 frames; say which frame to read"):
        read_image(tmp_path / "cine.dcm")


def test_an_unreadable_dicom_image_is_one_line_naming_it(cli, seg_run, png_dataset, tmp_path):
    dicom = as_dicom(png_dataset, tmp_path / "dcm", extensionless=False)
    splits = tmp_path / "splits.json"
    code, _, err = cli("data", "split", dicom, "--out", splits, "--val", "0.3", "--test", "0.3")
    assert code == 0, err
    for path in (dicom / "images").iterdir():  # the DICM marker overwritten: same size, so the split file still fits
        data = bytearray(path.read_bytes())
        data[128:132] = b"XXXX"
        path.write_bytes(bytes(data))
    err = cli.fails(
        "evaluate",
        seg_run,
        "--data",
        dicom,
        "--splits",
        splits,
        "--split",
        "val",
        "--out",
        tmp_path / "out",
        "--no-figures",
        expect=".dcm: not a readable DICOM file (InvalidDicomError); replace or remove the file",
    )
    assert str(dicom / "images") in err
    # The audit lists every such file, and a split refuses them by name unless told to leave them out.
    cli.fails("data", "split", dicom, "--out", tmp_path / "again.json", expect=".dcm: not a readable DICOM file")
