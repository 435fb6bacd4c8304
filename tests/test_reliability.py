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
    cli.fails(*tiny("cls", busi_copy, splits), "--out", tmp_path / "run", expect="the train split has no normal and no malignant images")
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


def test_a_run_stopped_before_its_first_epoch_restarts_in_place(synthetic_dir, splits_file, tmp_path, cli, monkeypatch):
    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    run = tmp_path / "r"
    monkeypatch.setattr(busai.training, "fit", interrupted)
    assert cli(*tiny("seg", synthetic_dir, splits_file), "--out", run)[0] == 130
    assert sorted(p.name for p in run.iterdir()) == ["config.json", "splits.json"]
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
