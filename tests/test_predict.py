"""`busai predict`: odd images, a bad file in a batch, the output layout, TTA, ONNX backend."""

import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image

from busai.data.discover import discover_records, read_image
from busai.errors import CheckpointError, ConfigError, DataError
from busai.inference import predict_image, preprocess
from busai.pipeline import review_note
from busai.prediction import predict_paths
from busai.rendering import COLUMNS
from busai.release import resolve_model


@pytest.fixture(scope="module")
def seg(seg_run):
    return resolve_model(seg_run, "seg")


@pytest.fixture(scope="module")
def cls(cls_run):
    return resolve_model(cls_run, "cls")


def write_odd_images(folder):
    """Every mode and size predict must take, plus files it must skip or report."""
    folder.mkdir()
    rng = np.random.default_rng(0)
    gray = (rng.random((45, 71)) * 255).astype(np.uint8)
    Image.fromarray(gray, mode="L").save(folder / "gray.png")
    Image.fromarray(np.stack([gray] * 3, -1)).save(folder / "rgb.jpg")
    Image.fromarray(np.dstack([gray, gray, gray, np.full_like(gray, 200)]), mode="RGBA").save(folder / "rgba.png")
    Image.fromarray((rng.random((33, 130)) * 65535).astype(np.uint16)).save(folder / "deep16.png")  # I;16
    Image.fromarray(gray).convert("P").save(folder / "palette.bmp")
    Image.fromarray(gray[:1, :1]).save(folder / "tiny.png")  # 1 x 1
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    Image.fromarray(gray).save(folder / "gray_mask.png")  # an annotation beside its scan: skipped
    (folder / "notes.txt").write_text("not an image suffix: skipped")
    return {"gray.png": (45, 71), "rgb.jpg": (45, 71), "rgba.png": (45, 71), "deep16.png": (33, 130), "palette.bmp": (45, 71), "tiny.png": (1, 1)}


def test_preprocessing_is_the_training_datasets(synthetic_dir):
    from busai.data.dataset import BusDataset

    record = discover_records(synthetic_dir)[0]
    mean, std = (0.5, 0.4, 0.3), (0.2, 0.25, 0.3)
    for size in (32, 128):  # shrinking and enlarging take different interpolations
        expected = BusDataset([record], size, mean, std)[0]["image"]
        assert torch.equal(preprocess(read_image(record.image), size, mean, std), expected)


def test_odd_images_and_a_bad_file(tmp_path, seg_run, cls_run):
    sizes = write_odd_images(tmp_path / "in")
    out = tmp_path / "out"
    rows = predict_paths([tmp_path / "in"], out, seg=seg_run, cls=cls_run, progress=False)  # run folders as sources

    names = [r["image"].split("/")[-1] for r in rows]
    assert names == ["broken.png", "deep16.png", "gray.png", "palette.bmp", "rgb.jpg", "rgba.png", "tiny.png"]
    broken, tiny = rows[0], rows[-1]
    assert "broken.png" in broken["error"] and broken["label"] is None and broken["mask"] is None
    # The input gate: a 1 x 1 image is read, flagged and not answered.
    assert tiny["input_check"] == "tiny: 1x1 pixels; a scan is at least 32 pixels a side"
    assert tiny["error"] is None and tiny["label"] is None and tiny["mask"] is None and (tiny["width"], tiny["height"]) == (1, 1)
    for row in rows[1:-1]:
        name = row["image"].split("/")[-1]
        stem = name.rsplit(".", 1)[0]
        assert row["error"] is None and row["input_check"] == "ok"
        assert set(row) == set(COLUMNS)
        assert row["label"] in ("normal", "benign", "malignant")
        assert sum(row[f"p_{c}"] for c in ("normal", "benign", "malignant")) == pytest.approx(1, abs=1e-4)
        mask = np.asarray(Image.open(out / f"{stem}_pred_mask.png"))
        assert mask.shape == sizes[name] and mask.dtype == np.uint8
        assert set(np.unique(mask)) <= {0, 255}
        assert row["area_px"] == int((mask == 255).sum()) or row["lesion_count"] > 1
        overlay = Image.open(out / f"{stem}_overlay.png")
        assert overlay.mode == "RGB" and overlay.size == sizes[name][::-1]
        assert (row["height"], row["width"]) == sizes[name]
    assert json.loads((out / "predictions.json").read_text()) == rows
    with (out / "predictions.csv").open() as fh:
        table = list(csv.DictReader(fh))
    assert [r["image"] for r in table] == [r["image"] for r in rows]
    assert list(table[0]) == list(COLUMNS)
    assert table[2]["area_px"] == str(rows[2]["area_px"])


def test_pixel_spacing_tta_and_duplicate_names(tmp_path, seg, cls):
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    image = np.zeros((80, 96), dtype=np.uint8)
    image[30:50, 20:70] = 255
    for folder in ("a", "b"):
        Image.fromarray(image).save(tmp_path / folder / "scan.png")
    rows = predict_paths(
        [tmp_path / "a" / "scan.png", tmp_path / "b"],
        tmp_path / "out",
        seg=seg,
        cls=cls,
        tta=True,
        pixel_spacing=0.2,
        threshold=0.3,
        progress=False,
        gate=False,
    )  # a drawing, not a scan
    assert [r["mask"] for r in rows] == ["scan_pred_mask.png", "scan-2_pred_mask.png"]
    for row in rows:
        assert row["input_check"].startswith("no speckle") and row["spacing_source"] == "--pixel-spacing"
        assert row["scan_x"] is None  # no scan region inside a drawing: the whole image
        assert row["area_mm2"] == pytest.approx(row["area_px"] * 0.04, abs=1e-3)
        if row["area_px"]:
            assert row["longest_diameter_mm"] == pytest.approx(row["longest_diameter_px"] * 0.2, abs=0.01)


def test_tta_averages_the_mirrored_prediction(seg):
    loaded = seg
    image = (np.random.default_rng(1).random((70, 90, 3)) * 255).astype(np.uint8)
    plain = predict_image(loaded, image, precision="fp32")
    mirrored = predict_image(loaded, image[:, ::-1], precision="fp32").flip(-1)
    tta = predict_image(loaded, image, tta=True, precision="fp32")
    assert torch.allclose(tta, (plain + mirrored) / 2, atol=1e-5)


def test_only_one_model_and_onnx_backend(tmp_path, seg, cls):
    image = tmp_path / "scan.png"
    Image.fromarray((np.random.default_rng(2).random((64, 80)) * 255).astype(np.uint8)).save(image)
    seg_only = predict_paths([image], tmp_path / "seg", seg=seg, cls="none", progress=False)[0]
    assert seg_only["label"] is None and seg_only["p_benign"] is None and seg_only["area_px"] is not None
    cls_only = predict_paths([image], tmp_path / "cls", seg="none", cls=cls, progress=False)[0]
    assert cls_only["mask"] is None and cls_only["area_px"] is None and cls_only["label"]
    assert not (tmp_path / "cls" / "scan_pred_mask.png").exists()
    torch_row = predict_paths([image], tmp_path / "t", seg=seg, cls=cls, progress=False)[0]
    onnx_row = predict_paths([image], tmp_path / "o", seg=seg, cls=cls, backend="onnx", progress=False)[0]
    # The torch path runs in bf16, ONNX Runtime in fp32: close, not equal.
    for key in ("p_normal", "p_benign", "p_malignant"):
        assert onnx_row[key] == pytest.approx(torch_row[key], abs=0.03)


def test_input_and_option_errors(tmp_path, seg, cls, seg_run):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no images found"):
        predict_paths([tmp_path / "empty"], tmp_path / "out", seg=seg, cls=cls, progress=False)
    with pytest.raises(ConfigError, match="nothing to predict"):
        predict_paths([tmp_path / "scan.png"], tmp_path / "out", seg="none", cls="none", progress=False)
    with pytest.raises(ConfigError, match="is a segmentation model"):
        resolve_model(seg_run, "cls")
    with pytest.raises(CheckpointError, match="not found"):
        resolve_model(tmp_path / "nowhere", "seg")


def test_cli_batch_with_a_bad_file(tmp_path, seg_run, cls_run, cli):
    write_odd_images(tmp_path / "in")
    code, out, err = cli("predict", tmp_path / "in", "--out", tmp_path / "out", "--seg", seg_run, "--cls", cls_run, "--json")
    assert code == 0
    result = json.loads(out)
    assert result["images"] == 7 and result["failed"] == 1
    assert err.count("warning: skipped") == 1 and "broken.png" in err
    # What it left out and what it would not answer, each said once (issue 21 item 5).
    assert [item["file"].split("/")[-1] for item in result["left_out"]] == ["notes.txt"]
    assert "notes.txt: not an image or DICOM file" in err and err.count("warning: left out") == 1
    assert result["flagged"] == 1
    assert "tiny.png does not look like a B-mode ultrasound scan (tiny: 1x1 pixels; a scan is at least 32 pixels a side); no answer given" in err
    code, out, err = cli("predict", tmp_path / "in" / "broken.png", "--out", tmp_path / "out2", "--seg", seg_run, "--cls", cls_run, "--quiet")
    assert code == 2 and "broken.png" in err
    assert json.loads((tmp_path / "out2" / "predictions.json").read_text())[0]["error"]
    code, out, err = cli("predict", tmp_path / "in" / "gray.png", "--out", tmp_path / "out3", "--seg", seg_run, "--cls", cls_run, "--pixel-spacing", "0.1")
    assert code == 0 and "gray.png" in out
    cli.fails("predict", tmp_path / "in", "--out", tmp_path / "o", "--seg", cls_run, expect="is a classification model")


@pytest.mark.parametrize(
    "label, lesions, expect",
    [
        ("benign", 0, "classified benign but no lesion outlined"),
        ("malignant", 0, "classified malignant but no lesion outlined"),
        ("normal", 2, "lesion outlined on a scan classified normal"),
        ("malignant", 1, None),
        ("normal", 0, None),
        (None, 0, None),
        ("benign", None, None),  # one model only: nothing to compare
    ],
)
def test_review_note_when_the_models_disagree_on_a_lesion(label, lesions, expect):
    note = review_note(label, lesions)
    assert note is None if expect is None else note.startswith(expect)


def test_cli_summary_names_the_scans_to_review(capsys):
    from busai.commands.predict import _print_summary
    from busai.rendering import empty_row

    rows = [
        empty_row("in/a.png") | {"label": "benign", "p_benign": 0.9, "lesion_count": 0, "review": review_note("benign", 0)},
        empty_row("in/b.png") | {"label": "benign", "p_benign": 0.8, "lesion_count": 1, "area_px": 40},
    ]
    _print_summary(rows, "out")
    out = capsys.readouterr().out
    assert "disagree on whether 1 scan(s) show a lesion: a.png" in " ".join(out.split())


def test_batched_overlapped_predict_writes_what_one_scan_at_a_time_writes(tmp_path, synthetic_dir, seg_run, cls_run):
    """Batches of 3 with 2 threads give byte-identical masks, overlays, probability maps, rows and
    tables to batches of 1 on the calling thread (the single-scan path), errors and flagged scans included."""
    import shutil

    folder = tmp_path / "in"
    folder.mkdir()
    for i, record in enumerate(discover_records(synthetic_dir)[:7]):
        shutil.copy(record.image, folder / f"scan{i}.png")
    shutil.copy(record.image, folder / "scan0.bmp")  # a second scan0: named scan0-2 in both runs
    (folder / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not an image")
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(folder / "tiny.png")  # flagged by the input gate
    outputs = {}
    for name, batch_size, workers in (("one", 1, 0), ("batched", 3, 2)):
        out = tmp_path / name
        rows = predict_paths([folder], out, seg=seg_run, cls=cls_run, progress=False, save_probabilities=True, batch_size=batch_size, workers=workers)
        files = {p.name: p.read_bytes() for p in sorted(out.iterdir()) if p.name != "predict_options.json"}
        outputs[name] = rows, files
        runtime = json.loads((out / "predict_options.json").read_text())["runtime"]
        assert runtime["batch_size"] == batch_size and set(runtime["paths"]) == {"segmentation", "classification"}
    (rows_one, files_one), (rows_batched, files_batched) = outputs["one"], outputs["batched"]
    assert rows_batched == rows_one
    assert sorted(files_batched) == sorted(files_one) and "scan0-2_overlay.png" in files_one and "scan6_probability.png" in files_one
    assert [name for name in files_one if files_batched[name] != files_one[name]] == []
    assert any(row["error"] for row in rows_one) and any(row["input_check"] not in (None, "ok") for row in rows_one)


def test_no_overlays_leaves_the_overlay_column_empty(tmp_path, synthetic_dir, seg_run):
    folder = tmp_path / "in"
    folder.mkdir()
    Image.open(discover_records(synthetic_dir)[0].image).save(folder / "a.png")
    rows = predict_paths([folder], tmp_path / "out", seg=seg_run, cls="none", progress=False, overlays=False)
    assert rows[0]["mask"] == "a_pred_mask.png" and rows[0]["overlay"] is None
    assert sorted(p.name for p in (tmp_path / "out").glob("*.png")) == ["a_pred_mask.png"]


@pytest.mark.parametrize("thickness", [1, 2, 4])
def test_outline_equals_repeated_erosion(thickness):
    from scipy import ndimage

    from busai.rendering import outline

    rng = np.random.default_rng(thickness)
    for _ in range(20):
        mask = ndimage.binary_opening(rng.random((40, 53)) > 0.45)  # blobs, some touching the image's edge
        expected = mask & ~ndimage.binary_erosion(mask, iterations=thickness, border_value=0)
        assert np.array_equal(outline(mask, thickness), expected)
    assert not outline(np.zeros((5, 5), np.uint8), 1).any()


# --- issue 30: EXIF orientation (3) and multi-page TIFFs (14) in predict ---------------------------
def test_predict_turns_an_exif_rotated_jpeg_upright(tmp_path, monkeypatch):
    from dicom_files import dark_is_lesion, ellipse_scan

    from busai import prediction

    monkeypatch.setattr(prediction, "load_models", lambda *a, **k: dark_is_lesion())
    upright = ellipse_scan(centre=(120, 160), radii=(20, 50))  # 240 x 320, a lesion 101 wide and 41 tall
    exif = Image.Exif()
    exif[0x0112] = 6  # stored turned anticlockwise; viewers turn it back clockwise
    (tmp_path / "in").mkdir()
    Image.fromarray(np.ascontiguousarray(np.rot90(upright, 1))).save(tmp_path / "in" / "phone.jpg", quality=95, exif=exif)
    (row,) = predict_paths([tmp_path / "in"], tmp_path / "out", progress=False, scan_region=False, gate=False)
    assert (row["width"], row["height"]) == (320, 240)
    assert row["bbox_width"] == pytest.approx(101, abs=3) and row["bbox_height"] == pytest.approx(41, abs=3)
    assert row["taller_than_wide"] is False
    assert Image.open(tmp_path / "out" / row["mask"]).size == (320, 240)


def test_predict_gives_each_page_of_a_multi_page_tiff_a_row(tmp_path, monkeypatch):
    from dicom_files import dark_is_lesion, ellipse_scan

    from busai import prediction

    monkeypatch.setattr(prediction, "load_models", lambda *a, **k: dark_is_lesion())
    pages = [ellipse_scan(centre=(120, 100), radii=(20, 50)), ellipse_scan(centre=(120, 220), radii=(30, 30))]
    (tmp_path / "in").mkdir()
    Image.fromarray(pages[0]).save(tmp_path / "in" / "sweep.tif", save_all=True, append_images=[Image.fromarray(pages[1])])
    Image.fromarray(pages[0]).save(tmp_path / "in" / "still.png")
    rows = predict_paths([tmp_path / "in"], tmp_path / "out", progress=False, scan_region=False, gate=False)
    assert [(r["image"].rsplit("/", 1)[-1], r["frame"], r["mask"]) for r in rows] == [
        ("still.png", None, "still_pred_mask.png"),
        ("sweep.tif", 1, "sweep_frame1_pred_mask.png"),
        ("sweep.tif", 2, "sweep_frame2_pred_mask.png"),
    ]
    assert [r["bbox_width"] for r in rows[1:]] == [pytest.approx(101, abs=3), pytest.approx(61, abs=3)]
    (page2,) = predict_paths([tmp_path / "in" / "sweep.tif"], tmp_path / "out2", progress=False, scan_region=False, gate=False, frame=2)
    assert page2["frame"] == 2 and page2["bbox_width"] == pytest.approx(61, abs=3)
    (png,) = predict_paths([tmp_path / "in" / "still.png"], tmp_path / "out3", progress=False, frame=2)
    assert png["error"].endswith("still.png: --frame 2 is out of range; the file holds 1 frame(s), numbered from 1")
