"""DICOM input: frames, photometric interpretations, pixel spacing and where it came from,
folder listing by content, millimetre measurements of a drawn lesion, DICOM-SEG round trip."""

import csv
import json

import numpy as np
import pytest
from dicom_files import (
    PATIENT_ID,
    PATIENT_NAME,
    dark_is_lesion,
    ellipse_scan,
    region,
    speckle_scan,
    write_dicom,
)

pytest.importorskip("pydicom")

from busai.errors import DataError
from busai.io.dicom import geometry, is_dicom, read_dataset, read_frames
from busai.io.scans import list_inputs, read_scans
from busai.prediction import predict_paths
from busai.rendering import predict_array


def test_single_frame_with_ultrasound_regions(tmp_path):
    image = speckle_scan()
    # Two calibrated regions (0.1 mm and 0.2 mm pixels) and a Doppler-like one in seconds, which
    # calibrates no distance.
    path = write_dicom(
        tmp_path / "us.dcm",
        image,
        regions=[
            region(0, 0, 159, 239, 0.01, 0.01),
            region(160, 0, 319, 239, 0.02, 0.02),
            region(0, 200, 319, 239, 0.5, 0.5, units=4),
        ],
    )
    frames = list(read_frames(path))
    assert len(frames) == 1 and frames[0].number == 1 and frames[0].frames == 1
    assert frames[0].image.dtype == np.uint8 and frames[0].image.shape == (240, 320, 3)
    assert np.array_equal(frames[0].image[..., 1], image)
    shape = geometry(read_dataset(path))
    assert len(shape.regions) == 2
    assert shape.spacing_at((50, 100)) == ((0.1, 0.1), "SequenceOfUltrasoundRegions[0]")
    assert shape.spacing_at((250, 100)) == ((0.2, 0.2), "SequenceOfUltrasoundRegions[1]")


def test_pixel_spacing_when_no_region(tmp_path):
    path = write_dicom(tmp_path / "ps.dcm", speckle_scan(), pixel_spacing=(0.3, 0.15))
    assert geometry(read_dataset(path)).spacing_at(None) == ((0.3, 0.15), "PixelSpacing")
    bare = write_dicom(tmp_path / "bare.dcm", speckle_scan())
    assert geometry(read_dataset(bare)).spacing_at(None) == (None, None)


def test_photometric_interpretations_and_bit_depths(tmp_path):
    from pydicom.pixels import convert_color_space
    from pydicom.uid import RLELossless

    grey = speckle_scan(seed=1)
    rgb = np.stack([grey, grey // 2, grey // 3], axis=-1)

    def first(path):
        return next(read_frames(path)).image

    assert np.array_equal(first(write_dicom(tmp_path / "m1.dcm", grey, photometric="MONOCHROME1"))[..., 0], 255 - grey)
    assert np.array_equal(first(write_dicom(tmp_path / "rgb.dcm", rgb)), rgb)
    ybr = convert_color_space(rgb, "RGB", "YBR_FULL")
    assert np.abs(first(write_dicom(tmp_path / "ybr.dcm", ybr, photometric="YBR_FULL")).astype(int) - rgb).max() <= 2
    # 12-bit values in 16-bit words, shown through the file's window: 0..4095 -> 0..255.
    deep = first(write_dicom(tmp_path / "w.dcm", grey.astype(np.uint16) * 16, extra={"WindowCenter": 2048, "WindowWidth": 4096}))
    assert np.abs(deep[..., 0].astype(int) - grey).max() <= 1
    # A compressed transfer syntax (RLE Lossless, decoded by pydicom itself).
    assert np.array_equal(first(write_dicom(tmp_path / "rle.dcm", grey, compress=RLELossless))[..., 0], grey)


def test_cine_every_frame_or_one(tmp_path):
    cine = np.stack([speckle_scan(seed=i) for i in range(4)])
    path = write_dicom(tmp_path / "cine.dcm", cine)
    frames = list(read_scans(path))
    assert [f.frame for f in frames] == [1, 2, 3, 4] and all(f.frames == 4 for f in frames)
    assert np.array_equal(frames[2].image[..., 0], cine[2])
    (third,) = read_scans(path, frame=3)
    assert np.array_equal(third.image[..., 0], cine[2])
    with pytest.raises(DataError, match=r"--frame 9 is out of range; the file holds 4 frame\(s\), numbered from 1"):
        list(read_scans(path, frame=9))


def test_folder_listing_finds_extensionless_dicom_and_says_what_it_left_out(tmp_path):
    folder = tmp_path / "export"
    folder.mkdir()
    write_dicom(folder / "IM000001", speckle_scan())
    (folder / "clip.gif").write_bytes(b"GIF89a")
    (folder / "notes.txt").write_text("not a scan")
    (folder / "DICOMDIR_like").write_bytes(b"\0" * 200)
    assert is_dicom(folder / "IM000001") and not is_dicom(folder / "notes.txt")
    paths, skipped = list_inputs([folder])
    assert [p.name for p in paths] == ["IM000001"]
    reasons = {p.name: why for p, why in skipped}
    assert reasons["clip.gif"] == "GIF is not a scan format busai reads (convert it to PNG)"
    assert reasons["notes.txt"].startswith("not an image or DICOM file")
    assert set(reasons) == {"clip.gif", "notes.txt", "DICOMDIR_like"}


def test_a_broken_dicom_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.dcm"
    bad.write_text("a report saved with the wrong name")
    with pytest.raises(DataError, match=r"bad.dcm: not a readable DICOM file \(\w+\); replace or remove the file"):
        list(read_scans(bad))
    empty = tmp_path / "empty.dcm"  # the DICM marker and nothing after it: a dataset without pixels
    empty.write_bytes(b"\0" * 128 + b"DICM")
    with pytest.raises(DataError, match=r"empty.dcm: a DICOM non-image object with no image in it; pass the scan's image file"):
        list(read_scans(empty))


def test_millimetres_of_a_drawn_lesion_from_the_region_that_holds_it():
    from busai.io.dicom import DicomGeometry, UltrasoundRegion

    # The lesion (an ellipse 100 px wide, 40 px tall, top at row 100) lies in the right-hand region
    # (0.2 mm rows, 0.1 mm columns); the left-hand one says 0.5 mm and must not be used.
    image = ellipse_scan(centre=(120, 220), radii=(20, 50))
    shape = DicomGeometry((UltrasoundRegion(0, 0, 159, 239, (0.5, 0.5)), UltrasoundRegion(160, 0, 319, 239, (0.2, 0.1))))
    row, _ = predict_array(dark_is_lesion(), np.repeat(image[..., None], 3, axis=2), geometry=shape, gate=False, scan_region=False)
    assert row["spacing_source"] == "SequenceOfUltrasoundRegions[1]"
    assert (row["spacing_row_mm"], row["spacing_column_mm"]) == (0.2, 0.1)
    assert row["bbox_width"] == pytest.approx(101, abs=2) and row["bbox_height"] == pytest.approx(41, abs=2)
    assert row["longest_diameter_mm"] == pytest.approx(10.1, abs=0.3)  # 101 columns x 0.1 mm
    assert row["perpendicular_diameter_mm"] == pytest.approx(8.2, abs=0.4)  # 41 rows x 0.2 mm
    assert row["depth_width_ratio"] == pytest.approx(8.2 / 10.1, abs=0.05) and row["taller_than_wide"] is False
    assert row["depth_px"] == pytest.approx(100, abs=1) and row["depth_mm"] == pytest.approx(20, abs=0.3)
    assert row["area_mm2"] == pytest.approx(np.pi * 20 * 50 * 0.02, rel=0.03)


@pytest.mark.slow  # over a second on 2 idle cores: outside the fast loop (make test-fast)
def test_predict_dicom_folder_end_to_end_without_identity(tmp_path, monkeypatch):
    from busai import pipeline

    monkeypatch.setattr(pipeline, "load_models", lambda *a, **k: dark_is_lesion())
    folder = tmp_path / "in"
    folder.mkdir()
    image = ellipse_scan()
    write_dicom(folder / "IM1", image, regions=[region(0, 0, 319, 239, 0.01, 0.01)])
    write_dicom(folder / "cine.dcm", np.stack([image, image]), pixel_spacing=(0.2, 0.2))
    out = tmp_path / "out"
    rows = predict_paths([folder], out, progress=False, save_probabilities=True, dicom_seg=True)
    assert [(r["image"].split("/")[-1], r["frame"]) for r in rows] == [("cine.dcm", 1), ("cine.dcm", 2), ("IM1", 1)]
    assert [r["spacing_source"] for r in rows] == ["PixelSpacing", "PixelSpacing", "SequenceOfUltrasoundRegions[0]"]
    assert rows[2]["longest_diameter_mm"] == pytest.approx(10.1, abs=0.3)
    assert rows[0]["mask"] == "cine_frame1_pred_mask.png" and rows[1]["mask"] == "cine_frame2_pred_mask.png"
    assert rows[0]["dicom_seg"] is None and rows[2]["dicom_seg"] == "IM1_seg.dcm"  # a cine gets PNG masks only
    # The probability map: 16-bit PNG whose thresholded values are the mask.
    from PIL import Image

    prob = np.asarray(Image.open(out / rows[2]["probability"])).astype(float) / 65535
    mask = np.asarray(Image.open(out / rows[2]["mask"])) > 0
    assert prob.shape == (240, 320) and np.array_equal(prob > 0.5, mask)
    # Nothing of the patient's identity in the tables.
    for name in ("predictions.json", "predictions.csv"):
        text = (out / name).read_text()
        assert PATIENT_NAME not in text and PATIENT_ID not in text and "Testpatient" not in text
    assert list(csv.DictReader((out / "predictions.csv").open()))[2]["spacing_source"] == "SequenceOfUltrasoundRegions[0]"
    assert json.loads((out / "predictions.json").read_text())[2]["input_check"] == "ok"


def test_dicom_seg_round_trip(tmp_path):
    hd = pytest.importorskip("highdicom")
    from busai.io.dicom_seg import write_dicom_seg

    source_path = write_dicom(tmp_path / "src.dcm", ellipse_scan())
    source = read_dataset(source_path)
    mask = (ellipse_scan() < 60).astype(np.uint8)
    write_dicom_seg(source, mask, tmp_path / "seg.dcm")
    seg = hd.seg.segread(tmp_path / "seg.dcm")
    assert seg.Modality == "SEG" and seg.StudyInstanceUID == source.StudyInstanceUID
    assert seg.get_segment_description(1).SegmentLabel == "lesion"
    back = seg.get_pixels_by_source_instance(source_sop_instance_uids=[source.SOPInstanceUID], segment_numbers=[1])
    assert np.array_equal(back[0, ..., 0].astype(bool), mask.astype(bool))
    cine = read_dataset(write_dicom(tmp_path / "cine.dcm", np.stack([ellipse_scan()] * 2)))
    with pytest.raises(DataError, match="a multi-frame \\(cine\\) file; a DICOM SEG is written for single-frame scans only"):
        write_dicom_seg(cine, mask, tmp_path / "cine_seg.dcm")


def test_jpeg_compressed_dicom(tmp_path):
    """JPEG baseline pixel data, as many scanners store it, decoded by an installed handler (pylibjpeg or Pillow)."""
    import io

    from PIL import Image
    from pydicom import dcmread
    from pydicom.encaps import encapsulate
    from pydicom.uid import JPEGBaseline8Bit

    grey = speckle_scan(seed=2)
    buffer = io.BytesIO()
    Image.fromarray(grey).save(buffer, format="JPEG", quality=95)
    path = write_dicom(tmp_path / "jpeg.dcm", grey)
    ds = dcmread(path)
    ds.file_meta.TransferSyntaxUID = JPEGBaseline8Bit
    ds.PixelData = encapsulate([buffer.getvalue()])
    ds["PixelData"].VR = "OB"
    ds.save_as(path, enforce_file_format=True)
    decoded = next(read_frames(path)).image[..., 0].astype(int)
    assert np.abs(decoded - grey).mean() < 3


# --- issue 30: an implausible stated pixel spacing (5), short uncompressed pixel data (15) ----------
def test_implausible_pixel_spacing_is_that_files_error_row_and_the_batch_goes_on(tmp_path, monkeypatch):
    from busai import prediction as predict

    monkeypatch.setattr(predict, "load_models", lambda *a, **k: dark_is_lesion())
    folder = tmp_path / "in"
    folder.mkdir()
    write_dicom(folder / "a.dcm", ellipse_scan(), pixel_spacing=(0.1, 0.1))
    write_dicom(folder / "b.dcm", ellipse_scan(), pixel_spacing=(1e9, 1e9))
    write_dicom(folder / "c.dcm", ellipse_scan(), regions=[region(0, 0, 319, 239, 1e8, 1e8)])
    rows = predict_paths([folder], tmp_path / "out", progress=False)
    assert [r["error"] is None for r in rows] == [True, False, False]
    assert rows[0]["spacing_source"] == "PixelSpacing" and rows[0]["longest_diameter_mm"] == pytest.approx(10.1, abs=0.3)
    assert rows[1]["error"] == (
        f"{folder / 'b.dcm'}: PixelSpacing 1e+09 mm is not a plausible pixel size (0.001 to 10 mm per pixel); correct or remove the tag in the file"
    )
    assert rows[2]["error"].startswith(f"{folder / 'c.dcm'}: SequenceOfUltrasoundRegions[0] PhysicalDeltaY 1e+08 cm is not a plausible pixel size")
    assert not any("--pixel-spacing" in r["error"] for r in rows[1:])


def test_implausible_pixel_spacing_in_a_dataset_is_an_unusable_image(tmp_path, cli):
    from busai.data.audit import audit_dataset
    from busai.data.discover import read_image
    from busai.data.splits import read_splits
    from busai.data.synthetic import write_layout, write_synthetic_dataset

    data = write_layout(write_synthetic_dataset(tmp_path / "busi", n=12, seed=3, size=(64, 80)), tmp_path / "im", "images-masks")
    png = sorted((data / "images").glob("*.png"))[0]
    write_dicom(png.with_suffix(".dcm"), read_image(png, mode="L"), pixel_spacing=(1e9, 1e9))
    png.unlink()
    name = f"images/{png.stem}.dcm"
    (problem,) = [p for p in audit_dataset(data).problems if p.kind == "bad_pixel_spacing"]
    assert problem.path == name and "PixelSpacing 1e+09 mm is not a plausible pixel size" in problem.message
    cli.fails("data", "split", data, "--out", tmp_path / "s.json", expect="PixelSpacing 1e+09 mm is not a plausible pixel size")
    # A named dataset: the problem carries the name, so --exclude-problems finds its record.
    code, _, err = cli("data", "split", "--data", f"d={data}", "--out", tmp_path / "s.json", "--exclude-problems", "--val", "0.25", "--test", "0.25")
    assert code == 0, err
    splits = read_splits(tmp_path / "s.json")
    assert splits["excluded"] == [f"d:{name}"] and f"d:{name}" not in splits["train"] + splits["val"] + splits["test"]


def test_uncompressed_dicom_with_short_pixel_data_is_named_damaged(tmp_path):
    import pydicom

    path = write_dicom(tmp_path / "short.dcm", speckle_scan(64, 80))
    ds = pydicom.dcmread(path)
    ds.PixelData = ds.PixelData[:1000]
    ds.save_as(path)
    with pytest.raises(DataError) as caught:
        list(read_scans(path))
    message = str(caught.value)
    assert "less than expected" in message and message.endswith("the file is truncated or damaged; export it again from the scanner or PACS")
    assert "busai[dicom]" not in message
