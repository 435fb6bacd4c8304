"""Dataset readers (every layout), audits and splits with patients, several datasets at once, and
one test per bad-table message."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from busai.data.audit import audit_dataset
from busai.data.discover import discover_records, read_mask
from busai.data.sources import detect_format, parse_data_specs, read_records, scan_source
from busai.data.splits import load_split_records, make_splits, read_splits, write_splits
from busai.data.synthetic import write_layout
from busai.errors import ConfigError, DataError

UCLM_DIR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "BUS-UCLM"


@pytest.fixture(scope="module")
def layouts(synthetic_dir, tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("layouts")
    return {name: write_layout(synthetic_dir, root / name, name) for name in ("class-folders", "bus-uclm", "images-masks", "manifest")}


def test_detects_every_layout(synthetic_dir, layouts):
    assert detect_format(synthetic_dir) == "busi"
    for name, path in layouts.items():
        assert detect_format(path) == name


@pytest.mark.parametrize("layout", ["bus-uclm", "images-masks", "manifest"])
def test_layouts_read_the_same_scans_and_masks(synthetic_dir, layouts, layout):
    busi = discover_records(synthetic_dir)
    other = read_records([layouts[layout]])
    assert len(other) == len(busi) == 24
    assert sorted(r.label for r in other) == sorted(r.label for r in busi)
    # write_layout keeps BUSI's record order, so the i-th record is the same scan in both.
    for a, b in zip(busi, sorted(other, key=lambda r: r.image.stem)):
        np.testing.assert_array_equal(read_mask(a), read_mask(b))  # colour and multi-file masks read as the same union
    assert {r.group for r in other} == {f"P{chr(65)}{chr(65)}{chr(65 + i)}" for i in range(8)}  # 24 scans, 3 per patient


def test_manifest_carries_spacing_and_joined_masks(layouts):
    records = read_records([layouts["manifest"]])
    assert {r.pixel_spacing_mm for r in records} == {0.1}
    assert max(len(r.masks) for r in records) == 2  # benign (1)'s satellite lesion: two files joined by ';'


def test_class_folders_are_classification_only(layouts, tmp_path, cli):
    records = read_records([layouts["class-folders"]])
    assert all(r.masks == () for r in records)
    assert not any(r.segmentable for r in records if r.label != "normal")
    report = audit_dataset(layouts["class-folders"])
    assert report.problems == [] and report.format == "class-folders"
    splits = tmp_path / "s.json"
    assert cli("data", "split", layouts["class-folders"], "--out", splits, "--val", "0.25")[0] == 0  # a classifier needs no masks
    cli.fails(
        "train",
        "seg",
        "--data",
        layouts["class-folders"],
        "--splits",
        splits,
        "--out",
        tmp_path / "run",
        "--weights",
        "none",
        "--image-size",
        "32",
        "--epochs",
        "1",
        expect="image without a mask (",
    )


def test_audit_reports_patients_and_colour_masks(layouts):
    report = audit_dataset(layouts["bus-uclm"])
    assert report.format == "bus-uclm"
    assert report.counts == {"normal": 6, "benign": 11, "malignant": 7} and report.problems == []
    assert report.group_summary() == {
        "groups": 8,
        "images_min": 3,
        "images_median": 3,
        "images_max": 3,
        "groups_with_lesion": 6,
    }  # the 6 normals come first: 2 patients


def test_patients_never_span_two_splits(layouts):
    records = read_records([layouts["bus-uclm"]])
    splits = make_splits(records, [], val=0.25, test=0.25, seed=3)
    where = {k: name for name in ("train", "val", "test") for k in splits[name]}
    by_patient: dict[str, set] = {}
    for r in records:
        by_patient.setdefault(r.group, set()).add(where[r.key])
    assert all(len(s) == 1 for s in by_patient.values())
    assert splits["val"] and splits["test"]


def test_two_datasets_in_one_split_file(synthetic_dir, layouts, tmp_path):
    alone = make_splits(discover_records(synthetic_dir), [], val=0.2, test=0.2, seed=5)
    specs = parse_data_specs([f"busi={synthetic_dir}", f"uclm={layouts['bus-uclm']}"])
    both = make_splits(read_records(specs), [], val=0.2, test=0.2, seed=5)
    for name in ("train", "val", "test"):
        assert [k.removeprefix("busi:") for k in both[name] if k.startswith("busi:")] == alone[name]  # BUSI's part is its own split
        assert all(k.split(":", 1)[0] in ("busi", "uclm") for k in both[name])
    assert set(both["datasets"]) == {"busi", "uclm"}
    assert both["datasets"]["uclm"]["patients"]["train"] > 0
    path = write_splits(tmp_path / "both.json", both)
    uclm_test = load_split_records([f"uclm={layouts['bus-uclm']}"], path, "test")  # one dataset of the two
    assert uclm_test and all(r.dataset == "uclm" for r in uclm_test)
    with pytest.raises(DataError, match="the split file's datasets are busi, uclm"):
        load_split_records([f"other={layouts['bus-uclm']}"], path, "test")


# --- split files that overlap (issue 21, item 1) ----------------------------------------------------


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda s: s["test"].append(s["train"][0]), "is in both 'train' and 'test'"),
        (lambda s: s.__setitem__("val", list(s["train"])), "is in both 'train' and 'val'"),
        (lambda s: s["train"].append(s["train"][0]), "is listed twice in 'train'"),
        (lambda s: s["val"].append({"image": "x.png"}), "not an image key"),
    ],
)
def test_overlapping_split_files_are_refused(synthetic_dir, tmp_path, change, message):
    splits = make_splits(discover_records(synthetic_dir), [], val=0.25, test=0.25)
    change(splits)
    (tmp_path / "s.json").write_text(json.dumps(splits))
    with pytest.raises(DataError, match=message):
        read_splits(tmp_path / "s.json")


# --- bad tables: one test per message ---------------------------------------------------------------


def _manifest(tmp_path: Path, header: str, *rows: str) -> Path:
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(image)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(tmp_path / "a_mask.png")
    Image.fromarray(np.zeros((9, 9), np.uint8)).save(tmp_path / "big_mask.png")
    path = tmp_path / "data.csv"
    path.write_text("\n".join([header, *rows]) + "\n")
    return path


@pytest.mark.parametrize(
    "header, rows, message",
    [
        ("image,mask", ["a.png,a_mask.png"], "data.csv: column 'label' is missing (header: image,mask)"),
        ("image,mask,label", ["b.png,,normal"], "data.csv row 2: "),
        ("image,mask,label", ["a.png,a_mask.png,BI-RADS 4"], "data.csv row 2: label 'BI-RADS 4' is not a simple name"),
        ("image,mask,label", ["a.png,a_mask.png,normal", "a.png,a_mask.png,normal"], "data.csv row 3: a.png is listed again (first at row 2)"),
        ("image,mask,label,group", ["a.png,a_mask.png,normal,"], "data.csv row 2: the group (patient id) is empty"),
        ("image;mask;label", ["a.png;a_mask.png;normal"], "data.csv: the header is separated by ';', not commas"),
        ("image,mask,label", ["a.png,a_mask.png;,benign"], "data.csv row 2: the mask cell 'a_mask.png;' has an empty entry"),
        ("image,mask,label,pixel_spacing_mm", ["a.png,a_mask.png,normal,inf"], "data.csv row 2: pixel_spacing_mm 'inf' is not a plausible pixel size"),
    ],
)
def test_bad_manifest_gives_one_line(tmp_path, cli, header, rows, message):
    path = _manifest(tmp_path, header, *rows)
    err = cli.fails("data", "audit", path, expect=message)
    if "b.png" in rows[0]:
        assert "b.png not found; fix the path" in err


def test_mask_of_another_size_is_a_problem_and_stops_training(tmp_path, cli):
    path = _manifest(tmp_path, "image,mask,label", "a.png,big_mask.png,benign")
    (problem,) = [p for p in audit_dataset(path).problems if p.kind == "mask_size_mismatch"]
    assert problem.message == "big_mask.png: mask is 9x9 but its image is 8x8; re-export the mask at the image's size"
    with pytest.raises(DataError, match="big_mask.png: mask is 9x9 but its image is 8x8"):
        read_mask(read_records([path])[0], size=(8, 8))


def test_split_excludes_unusable_images_only_when_asked(tmp_path, cli, layouts):
    import shutil

    data = Path(shutil.copytree(layouts["bus-uclm"], tmp_path / "uclm"))
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(data / "masks" / "PAAA_000.png")  # the HESN problem
    cli.fails("data", "split", data, "--out", tmp_path / "s.json", expect="or pass --exclude-problems to leave it out")
    code, out, _ = cli("data", "split", data, "--out", tmp_path / "s.json", "--exclude-problems", "--val", "0.25", "--test", "0.25")
    assert code == 0
    splits = read_splits(tmp_path / "s.json")
    assert splits["excluded"] == ["images/PAAA_000.jpg"] and "mask is 10x10" in splits["exclusions"]["images/PAAA_000.jpg"]


# --- issue 30: BUS-UCLM's table re-saved, repeated rows, manifest rows outside their folder ---------


def _uclm(layouts, tmp_path) -> Path:
    import shutil

    return Path(shutil.copytree(layouts["bus-uclm"], tmp_path / "uclm"))


def test_bus_uclm_table_saved_with_commas_reads_the_same(layouts, tmp_path):
    data = _uclm(layouts, tmp_path)
    info = data / "INFO.csv"
    before = scan_source(data)[0].records
    text = info.read_text(encoding="utf-8-sig")
    assert ";" in text.splitlines()[0]
    info.write_text(text.replace(";", ","), encoding="utf-8")  # a spreadsheet's re-save: commas, no byte-order mark
    after = scan_source(data)[0].records
    assert [(r.key, r.label, r.masks) for r in after] == [(r.key, r.label, r.masks) for r in before] and len(after) == 24


def test_bus_uclm_repeated_row_is_named_as_a_repeat(layouts, tmp_path, cli):
    data = _uclm(layouts, tmp_path)
    info = data / "INFO.csv"
    lines = info.read_text(encoding="utf-8-sig").splitlines()
    first = lines[1].split(";")
    first[2] = "Malignant" if first[2].lower() != "malignant" else "Benign"  # the same image again, another label
    info.write_text("\n".join([*lines, ";".join(first)]) + "\n", encoding="utf-8")
    stem = Path(first[0]).stem
    cli.fails("data", "audit", data, expect=f"INFO.csv row {len(lines) + 1}: image '{stem}' is listed again (first at row 2); keep one row per image")


def _outside_manifest(tmp_path: Path, cell: str) -> Path:
    data, outside = tmp_path / "data", tmp_path / "outside"
    for folder in (data, outside):
        folder.mkdir()
        Image.fromarray(np.full((8, 8), 99, np.uint8)).save(folder / "x.png")
    path = data / "m.csv"
    path.write_text(f"image,mask,label\nx.png,,normal\n{cell},,normal\n")
    return path


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink"])
def test_manifest_rows_outside_its_folder_are_refused(tmp_path, cli, kind):
    # The rule (docs/datasets.md): every file a manifest names lies inside the manifest's folder,
    # symbolic links followed; a key is the path inside it, so it stays the same wherever the folder goes.
    cell = {"dotdot": "../outside/x.png", "absolute": str(tmp_path / "outside" / "x.png"), "symlink": "link.png"}[kind]
    path = _outside_manifest(tmp_path, cell)
    if kind == "symlink":
        (path.parent / "link.png").symlink_to(tmp_path / "outside" / "x.png")
    root = path.parent.resolve()
    cli.fails("data", "audit", path, expect=f"m.csv row 3: {cell} lies outside {root} (the manifest's folder; symbolic links are followed); move the file")
    cli.fails("data", "split", path, "--out", tmp_path / "s.json", expect="m.csv row 3: ")
    assert not (tmp_path / "s.json").exists()


def test_manifest_mask_outside_its_folder_is_refused(tmp_path):
    path = _outside_manifest(tmp_path, "x.png")
    path.write_text("image,mask,label\nx.png,../outside/x.png,normal\n")
    with pytest.raises(DataError, match=r"m.csv row 2: ../outside/x.png lies outside"):
        scan_source(path)


def test_a_link_inside_the_folder_to_a_file_inside_is_fine(tmp_path):
    path = _outside_manifest(tmp_path, "x.png")
    (path.parent / "x2.png").symlink_to(path.parent / "x.png")
    path.write_text("image,mask,label\nx2.png,,normal\n")
    (record,) = scan_source(path)[0].records
    assert record.key == "x.png"  # resolved inside the folder: the key is the file's own path there


def test_data_specs(tmp_path):
    assert parse_data_specs(["a=/x", "b=/y"])[1].name == "b"
    assert parse_data_specs(["/x/a=b"])[0].name == ""  # a path with '=' inside a folder name stays a path
    with pytest.raises(ConfigError, match="name each one"):
        parse_data_specs(["/x", "b=/y"])
    with pytest.raises(ConfigError, match="given twice"):
        parse_data_specs(["a=/x", "a=/y"])
    with pytest.raises(ConfigError, match="say which one"):
        parse_data_specs(["a=/x", "b=/y"], ["bus-uclm"])
    assert parse_data_specs(["a=/x", "b=/y"], ["b=bus-uclm"])[1].format == "bus-uclm"


def test_synth_writes_each_layout(cli, tmp_path):
    code, _, _ = cli("data", "synth", tmp_path / "u", "--n", "9", "--size", "32", "32", "--layout", "bus-uclm")
    assert code == 0 and detect_format(tmp_path / "u") == "bus-uclm"
    scan, fmt = scan_source(tmp_path / "u")
    assert fmt == "bus-uclm" and len(scan.records) == 9


@pytest.mark.slow  # over a second on 2 idle cores: outside the fast loop (make test-fast)
@pytest.mark.skipif(not UCLM_DIR.is_dir(), reason="the real BUS-UCLM is not in ../shared/data/BUS-UCLM")
def test_real_bus_uclm_as_published():
    report = audit_dataset(UCLM_DIR)
    assert report.format == "bus-uclm" and report.images == 683
    assert report.counts == {"normal": 419, "benign": 174, "malignant": 90}
    assert report.group_summary()["groups"] == 38
    mismatched = sorted(p.path for p in report.problems if p.kind == "mask_size_mismatch")
    assert mismatched == [f"masks/HESN_{i:03d}.png" for i in range(13)]
    assert report.duplicate_groups  # frames of one patient are near-identical
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
