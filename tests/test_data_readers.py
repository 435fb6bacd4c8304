"""Reading options and the layout registry: column mapping, mask naming patterns, a folder holding
one manifest, a layout added in one place, and the options passed through every --data command."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import pytest

from busai.data.discover import Problem, Record, Scan
from busai.data.sources import FORMATS, LAYOUTS, DataSpec, detect_format, layout, parse_data_specs, read_records, scan_source
from busai.data.synthetic import write_layout
from busai.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def manifest(tmp_path_factory) -> Path:
    from busai.data.synthetic import write_synthetic_dataset

    # Phantoms the session's tiny runs never saw (seed 1): evaluating them is not refused as a leak.
    root = tmp_path_factory.mktemp("readers")
    return write_layout(write_synthetic_dataset(root / "phantoms", n=24, seed=1, size=(64, 80)), root / "manifest", "manifest")


@pytest.fixture
def own_columns(manifest, tmp_path) -> Path:
    """The manifest with a hospital's own header: ID, Segmentation, Pathology, Patient, Spacing."""
    folder = tmp_path / "own"
    shutil.copytree(manifest.parent, folder)
    lines = (folder / "manifest.csv").read_text().splitlines()
    (folder / "manifest.csv").unlink()
    (folder / "cases.csv").write_text("\n".join(["ID,Segmentation,Pathology,Patient,Spacing", *lines[1:]]) + "\n")
    return folder / "cases.csv"


MAPPING = "image=ID,mask=Segmentation,label=Pathology,group=Patient,pixel_spacing_mm=Spacing"


def test_column_mapping_reads_a_table_with_its_own_header(manifest, own_columns, tmp_path, cli):
    expected = read_records([manifest])
    with pytest.raises(
        DataError,
        match=r"cases.csv: column 'image' is missing \(header: id,segmentation,pathology,patient,spacing\).*or map yours, e.g. columns=image=ID,label=Pathology",
    ):
        read_records([own_columns])
    got = read_records(parse_data_specs([own_columns], columns=[MAPPING]))
    assert [(r.relpath, r.label, r.group, r.pixel_spacing_mm, len(r.masks)) for r in got] == [
        (r.relpath, r.label, r.group, r.pixel_spacing_mm, len(r.masks)) for r in expected
    ]
    # The same mapping as a small YAML file.
    (tmp_path / "columns.yaml").write_text("image: ID\nmask: Segmentation\nlabel: Pathology\n")
    assert len(read_records(parse_data_specs([own_columns], columns=[str(tmp_path / "columns.yaml")]))) == len(expected)
    code, out, _ = cli("data", "audit", own_columns, "--columns", MAPPING, "--json")
    assert code == 0 and json.loads(out)["images"] == len(expected)


def test_column_mapping_errors_name_the_column(own_columns):
    with pytest.raises(DataError, match="column 'Diagnosis' \\(mapped to label\\) is missing"):
        read_records(parse_data_specs([own_columns], columns=["image=ID,label=Diagnosis"]))
    with pytest.raises(ConfigError, match="'labels' is not a column busai reads; map one of image, mask, label"):
        parse_data_specs([own_columns], columns=["labels=Pathology"])
    with pytest.raises(ConfigError, match="write busai's column = the table's column"):
        parse_data_specs([own_columns], columns=["image"])
    with pytest.raises(ConfigError, match="the busi layout reads no table"):
        scan_source(DataSpec("", own_columns.parent.parent, "busi", (("image", "ID"),)))


def test_a_named_dataset_takes_its_own_options(manifest, own_columns):
    specs = parse_data_specs([f"a={manifest}", f"b={own_columns}"], columns=[f"b={MAPPING}"], mask_patterns=["a=m_{stem}.png"])
    assert specs[0].columns == () and specs[0].mask_pattern == "m_{stem}.png"
    assert dict(specs[1].columns)["label"] == "Pathology" and specs[1].mask_pattern is None
    with pytest.raises(ConfigError, match="several datasets given; say which one"):
        parse_data_specs([f"a={manifest}", f"b={own_columns}"], columns=[MAPPING])


def test_a_folder_holding_one_manifest_is_found_by_itself(manifest, own_columns):
    assert detect_format(manifest.parent) == "manifest"
    assert [r.key for r in read_records([manifest.parent])] == [r.key for r in read_records([manifest])]
    # A folder with one CSV of any name is the same; two CSVs, neither manifest.csv, must be named.
    assert detect_format(own_columns.parent) == "manifest"
    (own_columns.parent / "notes.csv").write_text("a,b\n1,2\n")
    with pytest.raises(DataError, match=r"no known dataset layout"):
        detect_format(own_columns.parent)
    with pytest.raises(DataError, match=r"several CSV files \(cases.csv, notes.csv\); name the manifest manifest.csv or pass the CSV file itself"):
        read_records(parse_data_specs([own_columns.parent], ["manifest"]))


@pytest.fixture
def prefixed_masks(synthetic_dir, tmp_path) -> Path:
    """images/ + masks/ with masks named mask_<image stem>.png (a second mask of a scan left out)."""
    folder = write_layout(synthetic_dir, tmp_path / "im", "images-masks")
    for path in sorted((folder / "masks").iterdir()):
        if "_mask_" in path.name:
            path.unlink()
        else:
            path.rename(path.with_name("mask_" + path.name.replace("_mask", "")))
    return folder


def test_mask_pattern_pairs_masks_named_another_way(synthetic_dir, prefixed_masks):
    scan, _ = scan_source(prefixed_masks)
    orphan = next(p for p in scan.problems if p.kind == "mask_without_image")
    # Without a pattern, the problem says how masks are matched and how to match others.
    assert (
        "has no image in images/" in orphan.message and "NAME_mask.png" in orphan.message and "mask_pattern='mask_{stem}.png'" in orphan.message
    )  # from Python the parameter; the CLI says --mask-pattern
    assert all(not r.masks for r in scan.records)
    specs = parse_data_specs([prefixed_masks], mask_patterns=["mask_{stem}.png"])
    records = read_records(specs)
    assert len(records) == 24 and all(len(r.masks) == 1 for r in records)  # normal scans have an all-black mask file too
    assert all(r.masks[0].name == f"mask_{r.image.stem}.png" for r in records)


def test_mask_pattern_in_the_busi_layout_and_its_missing_mask_message(busi_copy, cli):
    for path in sorted(busi_copy.rglob("*_mask*.png")):
        path.rename(path.with_name(path.name.replace("_mask", "_seg")))
    assert detect_format(busi_copy) == "class-folders"  # without the pattern nothing reads as a mask
    spec = parse_data_specs([busi_copy], mask_patterns=["{stem}_seg.png"])[0]
    assert detect_format(busi_copy, spec) == "busi"
    assert len(read_records([spec])) == 24
    (busi_copy / "benign" / "benign (2)_seg.png").unlink()
    problem = next(p for p in scan_source(spec)[0].problems if p.kind == "missing_mask")
    assert problem.message == (
        "benign/benign (2).png: no mask found; add benign (2)_seg.png beside it (all-zero for a normal image); "
        "masks are matched by the mask pattern '{stem}_seg.png' ({stem}: the image's name without suffix)"
    )
    cli.fails("data", "split", busi_copy, "--mask-pattern", "{stem}_seg.png", "--out", busi_copy / "s.json", expect="no mask found; add benign (2)_seg.png")


def test_default_missing_mask_message_says_how_masks_are_matched(busi_copy, cli):
    (busi_copy / "malignant" / "malignant (2)_mask.png").unlink()
    problem = next(p for p in scan_source(busi_copy)[0].problems if p.kind == "missing_mask")
    assert problem.message.endswith(
        "masks are matched by name: NAME_mask.png (or NAME_mask_1.png ...) for image NAME; for other names give a mask pattern, e.g. mask_pattern='mask_{stem}.png'"
    )
    cli.fails("data", "split", busi_copy, "--out", busi_copy / "s.json", expect="give a mask pattern, e.g. --mask-pattern 'mask_{stem}.png'")


@pytest.mark.parametrize("pattern", ["mask.png", "{stem}.png", "{stem}_{n}.png", "sub/{stem}_m.png"])
def test_a_bad_mask_pattern_is_refused(pattern):
    with pytest.raises(ConfigError, match="mask pattern"):
        parse_data_specs(["/x"], mask_patterns=[pattern])


def test_a_layout_is_added_in_one_place(tmp_path, monkeypatch):
    """What docs/contributing.md describes: one decorated reader is detected, read and offered by --format."""
    monkeypatch.setattr("busai.data.sources.LAYOUTS", dict(LAYOUTS))
    from busai.data import sources

    @layout("one-image", detect=lambda path, spec: (path / "only.png").is_file())
    def _read(spec: DataSpec) -> Scan:
        root = spec.path.resolve()
        return Scan(root, [Record(root, root / "only.png", (), "benign")], [Problem("x", "note", "x: a note")])

    (tmp_path / "only.png").write_bytes(b"")
    assert "one-image" in sources.LAYOUTS and "one-image" not in FORMATS  # FORMATS is fixed at import; the registry is the source
    scan, fmt = scan_source(DataSpec("d", tmp_path))
    assert fmt == "one-image" and [r.key for r in scan.records] == ["d:only.png"]
    with pytest.raises(ValueError, match="registered twice"):
        layout("one-image", detect=lambda path, spec: False)(_read)


def test_reading_options_travel_into_the_train_config(own_columns):
    from busai.cli import build_parser
    from busai.commands.train import config_from_args

    args = build_parser().parse_args(["train", "cls", "--data", str(own_columns), "--columns", MAPPING, "--splits", "s.json", "--out", "o"])
    cfg = config_from_args(args)
    assert cfg.data == {"name": "", "path": str(own_columns), "format": None, "columns": dict(parse_data_specs([own_columns], columns=[MAPPING])[0].columns)}
    # config.json holds that mapping; reading it back gives the same dataset.
    assert parse_data_specs(json.loads(json.dumps(cfg.data)))[0] == parse_data_specs([own_columns], columns=[MAPPING])[0]


def test_evaluate_reads_data_through_the_options(seg_run, own_columns, cli):
    cli.fails("evaluate", seg_run, "--data", own_columns, "--all", "--out", own_columns.parent / "e", expect="--columns image=ID,label=Pathology")
    code, out, err = cli(
        "evaluate", seg_run, "--data", own_columns, "--columns", MAPPING, "--all", "--out", own_columns.parent / "e", "--n-boot", "10", "--no-figures", "--json"
    )
    assert code == 0, err
    assert json.loads(out)["images"] == 24 and json.loads(out)["detection"]["lesion_images"] == 18  # masks read through the mapped column


def test_split_records_its_reading_options(own_columns, tmp_path, cli):
    out = tmp_path / "s.json"
    code, _, _ = cli("data", "split", own_columns, "--columns", MAPPING, "--out", out, "--val", "0.25", "--test", "0.25")
    assert code == 0 and f"--columns {MAPPING}" in json.loads(out.read_text())["command"]


def test_every_data_command_takes_the_reading_options():
    from busai.cli import build_parser

    parser = build_parser()
    for command in (
        ["data", "audit", "D"],
        ["data", "split", "D", "--out", "s"],
        ["train", "cls"],
        ["evaluate", "M", "--data", "D"],
        ["calibrate", "R", "--data", "D", "--splits", "s"],
    ):
        args = parser.parse_args([*command, "--columns", "image=ID", "--mask-pattern", "m_{stem}", "--format", "manifest"])
        assert isinstance(args, argparse.Namespace) and args.columns == ["image=ID"] and args.mask_patterns == ["m_{stem}"] and args.formats == ["manifest"]


def test_split_calls_patient_groups_what_they_are(manifest, synthetic_dir, tmp_path, cli):
    code, out, _ = cli("data", "split", "--data", f"m={manifest}", "--out", tmp_path / "p.json", "--val", "0.25", "--test", "0.25")
    assert code == 0 and "8 groups of duplicate images and of one patient's scans kept within one split" in out  # 24 scans, 3 per patient
    code, out, _ = cli("data", "split", synthetic_dir, "--out", tmp_path / "d.json", "--val", "0.25", "--test", "0.25")
    assert code == 0 and "duplicate groups kept within one split" in out  # BUSI names no patients


def test_python_errors_name_the_parameter_and_the_cli_the_flag(seg_run, synthetic_dir, cli):
    from busai.evaluation import evaluate_model

    with pytest.raises(ConfigError, match=r"say which images to score: splits_file=FILE with split_names=NAME, or all_images=True"):
        evaluate_model(seg_run, synthetic_dir)
    with pytest.raises(ConfigError, match="its scores need a place: pass out=DIR"):
        evaluate_model("release", synthetic_dir, all_images=True)
    cli.fails("evaluate", seg_run, "--data", synthetic_dir, expect="say which images to score: --splits FILE with --split NAME, or --all for")
