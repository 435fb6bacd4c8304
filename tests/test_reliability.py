"""Issue 21: bad inputs, interruptions and unwritable outputs give one error line, a correct result
or a resumable state. One test (or a few) per item of the issue; item 6 is in test_tune.py."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import busai.pipeline
import busai.training
from busai.data.discover import discover_records
from busai.data.splits import make_splits, write_splits

READ_ONLY = Path("/sys/busai-reliability-test")  # sysfs: nobody, root included, can create files there


@pytest.fixture(scope="module")
def splits_file(synthetic_dir, tmp_path_factory) -> Path:
    return write_splits(tmp_path_factory.mktemp("rel") / "splits.json", make_splits(discover_records(synthetic_dir), [], val=0.25, test=0.1, seed=0))


def tiny(task: str, data, splits) -> list[str]:
    model = ["--model", "unet", "--encoder", "efficientnet-lite0"] if task == "seg" else ["--model", "efficientnet_lite0"]
    return [
        "train",
        task,
        *model,
        "--weights",
        "none",
        "--image-size",
        "32",
        "--epochs",
        "1",
        "--batch-size",
        "8",
        "--data",
        str(data),
        "--splits",
        str(splits),
        "--quiet",
    ]


def copy_run(run: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(run, tmp_path / "run"))


# ----------------------------------------------------------------------------- 2: one class only
def test_classifier_refuses_a_train_split_without_every_class(busi_copy, tmp_path, cli):
    shutil.rmtree(busi_copy / "normal")
    shutil.rmtree(busi_copy / "malignant")
    splits = write_splits(tmp_path / "benign_only.json", make_splits(discover_records(busi_copy), [], val=0.25, test=0.1, seed=0))
    cli.fails(
        *tiny("cls", busi_copy, splits), "--out", tmp_path / "run", expect="the train split has only benign images; a classifier needs at least two classes"
    )
    assert not (tmp_path / "run").exists()


# ------------------------------------------------------------------- 3: ignored options refused
def test_encoder_on_a_classifier_and_options_on_resume_are_errors(synthetic_dir, splits_file, cls_run, tmp_path, cli):
    cli.fails(
        *tiny("cls", synthetic_dir, splits_file),
        "--encoder",
        "resnet50",
        "--out",
        tmp_path / "r",
        expect="--encoder resnet50: classifiers have no separate encoder",
    )
    before = (cls_run / "config.json").read_bytes()
    err = cli.fails(
        "train", "--resume", cls_run, "--lr", "0.5", "--model", "resnet18", "--epochs", "3", expect="--model, --lr: cannot change a run being resumed"
    )
    assert "--epochs" not in err.split(":")[0]
    cli.fails("train", "seg", "--resume", cls_run, expect="task seg: cannot change a run being resumed")
    assert (cls_run / "config.json").read_bytes() == before


# ------------------------------------------------------------------------ 4: --patience 0
def test_patience_zero_is_refused_and_fit_json_is_strict_json(synthetic_dir, splits_file, tmp_path, cli):
    from busai.engine import FitResult

    cli.fails(*tiny("seg", synthetic_dir, splits_file), "--patience", "0", "--out", tmp_path / "r", expect="patience=0: must be positive")
    assert not (tmp_path / "r").exists()
    # A fit with no finished epoch has no best loss: None, never the non-JSON Infinity.
    assert FitResult(0, float("inf"), 0, "max_epochs", [], 0.0).to_dict()["best_val_loss"] is None


# -------------------------------------------------------------------------- 7: export overwrite
def test_export_never_replaces_a_foreign_file_and_writes_atomically(seg_run, tmp_path, cli, monkeypatch):
    import busai.export

    note = tmp_path / "notes.onnx"
    note.write_text("my notes")
    cli.fails("export", seg_run, "--out", note, "--fixed-size", expect="exists and is not a file written by `busai export`")
    assert note.read_text() == "my notes"
    out = tmp_path / "model.onnx"
    assert cli("export", seg_run, "--out", out, "--fixed-size")[0] == 0
    good = out.read_bytes()

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(busai.export, "_write_metadata", interrupted)
    assert cli("export", seg_run, "--out", out, "--fixed-size")[0] == 130  # killed mid-write: the old file stays whole
    assert out.read_bytes() == good and sorted(p.name for p in tmp_path.iterdir()) == ["model.onnx", "notes.onnx"]
    monkeypatch.undo()
    assert cli("export", seg_run, "--out", note, "--fixed-size", "--force")[0] == 0  # asked: replaced
    assert busai.export.is_export(note)


# ------------------------------------------------------------------- 8: predict rows kept, resume
def _scans(synthetic_dir, folder: Path, n: int = 3) -> Path:
    folder.mkdir()
    for i in range(1, n + 1):
        shutil.copy(synthetic_dir / "benign" / f"benign ({i}).png", folder / f"scan{i}.png")
    return folder


def test_predict_keeps_finished_rows_when_interrupted_and_resumes(synthetic_dir, seg_run, cls_run, tmp_path, cli, monkeypatch):
    scans, out = _scans(synthetic_dir, tmp_path / "in"), tmp_path / "out"
    real, calls = busai.pipeline.finish_scan, []

    def stop_at_second(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(busai.pipeline, "finish_scan", stop_at_second)
    args = ["predict", scans, "--out", out, "--seg", seg_run, "--cls", cls_run, "--quiet"]
    code, _, err = cli(*args)
    assert code == 130 and "re-run the same command with --resume" in err
    assert [Path(r["image"]).name for r in json.loads((out / "predictions.json").read_text())] == ["scan1.png"]
    assert len((out / "predictions.csv").read_text().splitlines()) == 2
    # A kill -9 skips the table writing: the row log alone must carry the finished rows.
    (out / "predictions.json").unlink()
    (out / "predictions.csv").unlink()
    assert len((out / "predictions.jsonl").read_text().splitlines()) == 1
    cli.fails(*args, expect="already holds predictions.jsonl from an earlier batch; pass --resume")
    cli.fails(*args, "--resume", "--threshold", "0.3", expect="was predicted with other threshold")
    monkeypatch.setattr(busai.pipeline, "finish_scan", real)
    calls.clear()
    monkeypatch.setattr(busai.pipeline, "finish_scan", lambda *a, **k: (calls.append(1), real(*a, **k))[1])
    assert cli(*args, "--resume")[0] == 0
    assert len(calls) == 2  # only scan2 and scan3 were predicted again
    rows = json.loads((out / "predictions.json").read_text())
    assert [Path(r["image"]).name for r in rows] == ["scan1.png", "scan2.png", "scan3.png"]
    assert not (out / "predictions.jsonl").exists()
    assert len((out / "predictions.csv").read_text().splitlines()) == 4


# -------------------------------------------------------------------------- 9: no dead end
@pytest.mark.parametrize("option, expect", [(["--loss", "nonsense"], "loss 'nonsense'"), (["--lr", "nan"], "lr=nan: must be a finite number")])
def test_bad_config_writes_nothing(synthetic_dir, splits_file, tmp_path, cli, option, expect):
    cli.fails(*tiny("seg", synthetic_dir, splits_file), *option, "--out", tmp_path / "r", expect=expect)
    assert not (tmp_path / "r").exists()


@pytest.mark.slow  # trains or starts processes
def test_a_run_stopped_before_its_first_epoch_restarts_in_place(synthetic_dir, splits_file, tmp_path, cli, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    run = tmp_path / "r"
    monkeypatch.setattr(busai.training, "fit", interrupted)
    assert cli(*tiny("seg", synthetic_dir, splits_file), "--out", run)[0] == 130
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "image_hashes.json", "splits.json"]
    monkeypatch.undo()
    assert cli(*tiny("seg", synthetic_dir, splits_file), "--out", run)[0] == 0  # restarted in place
    assert (run / "checkpoint_last.pt").exists()
    cli.fails(*tiny("seg", synthetic_dir, splits_file), "--out", run, expect="already holds a run; pass --resume")
    # --resume on a folder that never finished an epoch restarts it too.
    for name in ("checkpoint_last.pt", "history.csv", "fit.json"):
        (run / name).unlink()
    assert cli("train", "--resume", run, "--quiet")[0] == 0
    config = json.loads((run / "config.json").read_text())
    assert (run / "fit.json").exists() and config["resume_commands"] == [f"busai train --resume {run} --quiet"]


def test_a_failed_resume_leaves_the_config_untouched(cls_run, tmp_path, cli):
    run = copy_run(cls_run, tmp_path)
    before = (run / "config.json").read_bytes()
    (run / "checkpoint_last.pt").write_bytes((run / "checkpoint_last.pt").read_bytes()[:1000])
    cli.fails("train", "--resume", run, "--epochs", "2", expect="checkpoint_last.pt: cannot be read, the file is truncated or damaged")
    assert (run / "config.json").read_bytes() == before


# --------------------------------------------------------------------- 14: decompression bomb
def test_decompression_bomb_in_a_dataset(busi_copy, tmp_path, cli, monkeypatch):
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # every 64x80 phantom is now over twice the limit
    code, out, _ = cli("data", "audit", busi_copy, "--json")
    problems = json.loads(out)["problems"]
    assert code == 0 and problems and all("not decoded, Image size (5120 pixels) exceeds limit" in p["message"] for p in problems)
    cli.fails("data", "split", busi_copy, "--out", tmp_path / "s.json", expect="not decoded, Image size (5120 pixels)")
    assert not (tmp_path / "s.json").exists()


# --------------------------------------------------------------------- 15: non-UTF-8 file names
def test_file_names_that_are_not_utf8(busi_copy, synthetic_dir, seg_run, cls_run, tmp_path, cli):
    folder = os.fsencode(busi_copy / "normal")
    for suffix in (b".png", b"_mask.png"):
        os.rename(folder + b"/normal (1)" + suffix, folder + b"/normal\xff (1)" + suffix)
    cli.fails("data", "split", busi_copy, "--out", tmp_path / "s.json", expect="normal\\xff (1).png: the file name is not valid UTF-8; rename")
    scans = _scans(synthetic_dir, tmp_path / "in", n=1)
    os.rename(os.fsencode(scans / "scan1.png"), os.fsencode(scans) + b"/scan\xff.png")
    assert cli("predict", scans, "--out", tmp_path / "out", "--seg", seg_run, "--cls", cls_run, "--quiet")[0] == 0
    row = json.loads((tmp_path / "out" / "predictions.json").read_text())[0]
    assert row["image"].endswith("scan\\xff.png") and row["error"] is None
    assert (tmp_path / "out" / row["mask"]).exists()  # the table names the file as it is on disk
    assert "scan\\xff.png" in (tmp_path / "out" / "predictions.csv").read_text(encoding="utf-8")


# ------------------------------------------------------------------------ 16: absurd spacing
@pytest.mark.parametrize("spacing", ["1e308", "1e200", "1e-320"])
def test_pixel_spacing_out_of_range(spacing, synthetic_dir, tmp_path, cli):
    from busai.measure import measure_lesion

    scans = _scans(synthetic_dir, tmp_path / "in", n=1)
    cli.fails("predict", scans, "--out", tmp_path / "out", "--pixel-spacing", spacing, expect="must be between 0.001 and 100 mm per pixel")
    mask = np.zeros((20, 20), np.uint8)
    mask[5:10, 5:15] = 1
    assert measure_lesion(mask, 100.0)["area_mm2"] == 50 * 100.0**2  # the largest allowed spacing still measures


# ------------------------------------------------------------- 17: unwritable or wrong --out
def _writers(synthetic_dir, splits_file, seg_run, out) -> dict[str, list]:
    return {
        "train": [*tiny("seg", synthetic_dir, splits_file), "--out", out],
        "split": ["data", "split", synthetic_dir, "--out", out],
        "predict": ["predict", synthetic_dir / "benign", "--out", out, "--seg", seg_run, "--cls", "none"],
        "tune": ["tune", "seg", "--data", synthetic_dir, "--splits", splits_file, "--out", out, "--trials", "1"],
        "export": ["export", seg_run, "--out", out],
    }


@pytest.mark.parametrize("command", ["train", "split", "predict", "tune", "export"])
def test_read_only_and_wrong_kind_of_out(command, synthetic_dir, splits_file, seg_run, tmp_path, cli):
    cli.fails(*_writers(synthetic_dir, splits_file, seg_run, READ_ONLY / "out")[command], expect="choose a writable location")
    # --out naming the wrong kind of thing: a file where a folder is written, a folder where a file is.
    wrong = tmp_path / "wrong"
    if command in ("split", "export"):
        wrong.mkdir()
        expect = "is a folder; pass a file name"
    else:
        wrong.write_text("keep me")
        expect = "is an existing file, not a folder"
    cli.fails(*_writers(synthetic_dir, splits_file, seg_run, wrong)[command], expect=expect)
    assert wrong.is_dir() or wrong.read_text() == "keep me"


@pytest.mark.parametrize("command", ["evaluate", "resume"])
def test_read_only_run_folder(command, synthetic_dir, splits_file, cls_run, tmp_path, cli, monkeypatch):
    import busai.outputs

    run = copy_run(cls_run, tmp_path)
    real = busai.outputs.tempfile.mkstemp

    def read_only_run(*args, dir=None, **kwargs):  # root ignores permission bits: simulate a read-only mount
        if dir is not None and Path(dir) == run:
            raise OSError(30, "Read-only file system")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(busai.outputs.tempfile, "mkstemp", read_only_run)
    args = {
        "evaluate": ["evaluate", run, "--data", synthetic_dir, "--splits", splits_file, "--no-figures", "--n-boot", "10"],
        "resume": ["train", "--resume", run, "--epochs", "2"],
    }[command]
    cli.fails(*args, expect="cannot write there (Read-only file system); choose a writable location")


# ---------------------------------------------------------------- 18: damaged files, one line
def test_damaged_metrics_checkpoint_and_split_entries(synthetic_dir, splits_file, cls_run, tmp_path, cli):
    run = copy_run(cls_run, tmp_path)
    (run / "metrics.json").write_text('{"test": ')
    cli.fails(
        "evaluate",
        run,
        "--data",
        synthetic_dir,
        "--splits",
        splits_file,
        "--no-figures",
        expect="metrics.json: not valid JSON (Expecting value at line 1); repair it, or move it away",
    )
    assert (run / "metrics.json").read_text() == '{"test": '
    torch.save({"model": Path("x")}, run / "checkpoint_last.pt")  # a pickled object, not tensors
    cli.fails("train", "--resume", run, expect="checkpoint_last.pt: refused, it holds objects other than tensors")
    splits = json.loads(splits_file.read_text())
    splits["test"][0] = {"image": splits["test"][0]}
    (tmp_path / "bad.json").write_text(json.dumps(splits))
    cli.fails("evaluate", cls_run, "--data", synthetic_dir, "--splits", tmp_path / "bad.json", expect='the \'test\' list holds {"image": "')


def _edited_export(path: Path, out: Path, *, meta=None, input_name=None) -> Path:
    import onnx

    model = onnx.load(str(path))
    if meta is not None:
        stored = json.loads(next(p.value for p in model.metadata_props if p.key == "busai"))
        onnx.helper.set_model_props(model, {"busai": json.dumps(meta(stored))})
    if input_name is not None:
        old = model.graph.input[0].name
        model.graph.input[0].name = input_name
        for node in model.graph.node:
            node.input[:] = [input_name if name == old else name for name in node.input]
    onnx.save(model, str(out))
    return out


def test_export_opset_and_damaged_onnx_metadata(seg_run, synthetic_dir, tmp_path, cli):
    cli.fails("export", seg_run, "--out", tmp_path / "x.onnx", "--opset", "99", expect="--opset 99: busai exports need opset 17 to")
    good = tmp_path / "good.onnx"
    assert cli("export", seg_run, "--out", good, "--fixed-size")[0] == 0

    def drop_pre(meta):
        return {k: v for k, v in meta.items() if k != "preprocessing"}

    def sized(size):
        return lambda meta: meta | {"preprocessing": meta["preprocessing"] | {"image_size": size}}

    cases = {
        "lacks the task or preprocessing": _edited_export(good, tmp_path / "a.onnx", meta=drop_pre),
        "does not take (N, 3, 96, 96) images": _edited_export(good, tmp_path / "b.onnx", meta=sized(96)),
        "image_size -64 is not a size in pixels": _edited_export(good, tmp_path / "c.onnx", meta=sized(-64)),
        "the graph takes ['input_1']": _edited_export(good, tmp_path / "d.onnx", input_name="input_1"),
    }
    scans = _scans(synthetic_dir, tmp_path / "in", n=1)
    for expect, path in cases.items():
        cli.fails("predict", scans, "--out", tmp_path / "out", "--seg", path, "--cls", "none", expect=expect)


# ============================================================================ issue 30
def _copy_images(synthetic_dir: Path, keys: list[str], dest: Path) -> Path:
    """The images (and masks) named by split keys, copied into a BUSI-layout folder under new names."""
    for i, key in enumerate(keys):
        src = synthetic_dir / key
        (dest / src.parent.name).mkdir(parents=True, exist_ok=True)
        shutil.copy(src, dest / src.parent.name / f"copy {i}.png")
        for mask in sorted(src.parent.glob(f"{src.stem}_mask*.png")):
            shutil.copy(mask, dest / src.parent.name / f"copy {i}{mask.stem.removeprefix(src.stem)}.png")
    return dest


# ------------------------------------------------------- 1: training images recognised by content
def test_training_images_are_refused_in_another_folder_or_a_changed_dataset(cli, seg_run, synthetic_dir, tiny_runs, busi_copy, tmp_path):
    train = json.loads((tiny_runs / "splits.json").read_text())["train"]
    copied = _copy_images(synthetic_dir, train[:6], tmp_path / "copied")
    err = cli.fails("evaluate", seg_run, "--data", copied, "--all", "--out", tmp_path / "x", expect="6 of the 6 all images of")
    assert "the same pixels as " in err and "were in this model's training data; scoring them would leak" in err
    # One file added to the training dataset changes its fingerprint; its images are still its images.
    for suffix in (".png", "_mask.png"):
        shutil.copy(synthetic_dir / "normal" / f"normal (1){suffix}", busi_copy / "normal" / f"normal (99){suffix}")
    cli.fails("evaluate", seg_run, "--data", busi_copy, "--all", "--out", tmp_path / "y", expect="were in this model's training data")
    # A training image re-saved as JPEG (other pixels, same scan) is a near copy.
    jpeg = tmp_path / "jpeg"
    _copy_images(synthetic_dir, train[:1], jpeg)
    png = next(jpeg.glob("*/copy 0.png"))
    Image.open(png).convert("RGB").save(png.with_suffix(".jpg"), quality=90)
    png.unlink()
    cli.fails("evaluate", seg_run, "--data", jpeg, "--all", "--out", tmp_path / "z", expect="a near copy of ")


def test_a_run_without_image_hashes_is_hashed_from_its_recorded_data(cli, seg_run, synthetic_dir, tiny_runs, tmp_path):
    run = copy_run(seg_run, tmp_path)
    (run / "image_hashes.json").unlink()  # as written before issue 30
    train = json.loads((tiny_runs / "splits.json").read_text())["train"]
    copied = _copy_images(synthetic_dir, train[:3], tmp_path / "copied")
    cli.fails("evaluate", run, "--data", copied, "--all", "--out", tmp_path / "x", expect="the same pixels as ")
    # Its data gone: checked by path only, and it says so.
    config = json.loads((run / "config.json").read_text())
    config["datasets"][""]["path"] = str(tmp_path / "moved")
    (run / "config.json").write_text(json.dumps(config))
    code, _, err = cli("evaluate", run, "--data", copied, "--all", "--out", tmp_path / "y", "--n-boot", "5", "--no-figures")
    assert code == 0 and "records no image hashes and 21 of the 21 training images of its dataset are not at" in err, err


# ------------------------------------------------------- 2: --folds re-run with other options
@pytest.mark.slow  # over a second on 2 idle cores: outside the fast loop (make test-fast)
def test_folds_rerun_with_other_options_is_refused(synthetic_dir, tmp_path, cli):
    splits = write_splits(tmp_path / "folds.json", make_splits(discover_records(synthetic_dir), [], val=0.25, test=0.1, seed=0, folds=2))
    out = tmp_path / "cv"
    args = [*tiny("cls", synthetic_dir, splits), "--folds", "2", "--out", out]
    assert cli(*args)[0] == 0
    summary = (out / "folds.json").read_bytes()
    cli.fails(*args, "--lr", "0.5", "--epochs", "2", expect="its folds were trained with other lr, epochs (fold-0: lr=0.0001, epochs=1)")
    cli.fails(*[a if a != "cls" else "seg" for a in args], expect="trained with other task")
    assert (out / "folds.json").read_bytes() == summary and not (out / "fold-0" / "metrics.json").exists()
    assert cli(*args)[0] == 0  # the same command: nothing left to train, the summary stays
    assert json.loads((out / "folds.json").read_text())["command"] == json.loads(summary)["command"]


# ------------------------------------------- 6-8, 13: config values and files, before any write
@pytest.mark.parametrize(
    "yaml_text, expect",
    [
        ("image_size: 100000\n", "image_size=100000: must be a whole number of pixels from 32 to 2048"),
        ("image_size: 1e9\n", "image_size='1e9': must be a whole number of pixels from 32 to 2048"),  # a string to PyYAML
        ("epochs: 1.5\n", "epochs=1.5: must be a whole number"),
        ("lr: 0.1\nepochs: 1\nlr: 0.001\n", "key 'lr' is given twice (lines 1 and 3); keep one"),
    ],
)
def test_bad_yaml_config_values_are_one_line_before_anything_is_written(yaml_text, expect, synthetic_dir, splits_file, tmp_path, cli):
    config = tmp_path / "config.yaml"
    config.write_text("task: seg\n" + yaml_text if "lr" not in yaml_text else yaml_text + "task: seg\n")
    args = [a for a in tiny("seg", synthetic_dir, splits_file) if a not in ("--image-size", "32", "--epochs", "1")]
    err = cli.fails(*args, "--config", config, "--out", tmp_path / "run", expect=expect)
    assert err.startswith(f"error: {config}: ") or "twice" not in expect
    assert not (tmp_path / "run").exists()


def test_image_size_flag_is_bounded(synthetic_dir, splits_file, tmp_path, cli):
    cli.fails(*tiny("seg", synthetic_dir, splits_file), "--image-size", "32000", "--out", tmp_path / "run", expect="image_size=32000: must be a whole number")
    cli.fails(*tiny("seg", synthetic_dir, splits_file), "--image-size", "16", "--out", tmp_path / "run", expect="from 32 to 2048")
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- 9: serve --port
@pytest.mark.parametrize("port", ["99999", "-1"])
def test_serve_port_out_of_range(port, cli):
    cli.fails("serve", "--port", port, "--seg", "none", "--cls", "none", expect=f"--port {port}: must be from 1 to 65535")


# ----------------------------------------------------- 10-12: report on damaged run files
@pytest.mark.parametrize(
    "name, damage, expect",
    [
        ("fit.json", '{"best_epoch": ', "fit.json: not valid JSON (Expecting value at line 1); repair it, or move it away"),
        ("history.csv", "epoch,train_loss,val_loss\n1,0.9\n", "history.csv: row 2 has fewer fields than the header; repair it, or move it away"),
        ("history.csv", b"\xff\xfe\x00garbage", "history.csv: cannot be read (UnicodeDecodeError)"),
        ("metrics.json", '{"test": ', "metrics.json: not valid JSON (Expecting value at line 1); repair it, or move it away"),
    ],
)
def test_report_on_a_run_with_a_damaged_file(name, damage, expect, cls_run, tmp_path, cli):
    run = copy_run(cls_run, tmp_path)
    if name != "metrics.json" and not (run / "metrics.json").exists():
        (run / "metrics.json").write_text("{}")  # the evaluated run's path (collect_run) as well as below
    target = run / name
    target.write_bytes(damage) if isinstance(damage, bytes) else target.write_text(damage)
    cli.fails("report", run, "--out", tmp_path / "report", expect=expect)
    if name != "metrics.json":  # a run trained but never evaluated reads the same files
        (run / "metrics.json").unlink()
        cli.fails("report", run, "--out", tmp_path / "report", expect=expect)


# ------------------------------------------------------------------ also: output to a closed pipe
@pytest.mark.slow  # over a second on 2 idle cores: outside the fast loop (make test-fast)
def test_output_to_a_closed_pipe_ends_quietly(synthetic_dir):
    import subprocess
    import sys

    from busai.cli import EXIT_BROKEN_PIPE

    # `busai data audit DIR --json | head -c 0`: the reader is gone before busai writes its JSON
    # (a command that needs no torch: the test is about the exit, not the command).
    process = subprocess.Popen([sys.executable, "-m", "busai", "data", "audit", str(synthetic_dir), "--json"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    process.stdout.close()
    err = process.stderr.read().decode()
    assert process.wait(timeout=120) == EXIT_BROKEN_PIPE and err == "", err
