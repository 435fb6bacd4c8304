"""The study's table renderers in benchmarks/tables.py, on hand-written benchmark files."""

import importlib.util
import json
from pathlib import Path

import pytest

from busai.data.splits import read_splits
from busai.errors import CheckpointError


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(name, Path(__file__).parents[1] / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


tables = load_script("tables")


def test_speed_table_and_doc_markers(tmp_path):
    (tmp_path / "train_speed.json").write_text(
        json.dumps(
            {
                "command": "python benchmarks/train_speed.py",
                "model": "resnet18:unet",
                "image_size": 256,
                "batch_size": 8,
                "images_per_second": {"fp32_eager": 2.0, "default": 5.0, "default_unfused": 4.0, "default_compiled": 4.5, "bf16_channels_last": 0.5},
                "speedup": 2.5,
                "default_path": "channels_last + fp32",
                "cpu": "AMD EPYC",
                "cpu_native_bf16": False,
                "isa_cap": "AVX2",
                "threads": 2,
            }
        )
    )
    table = tables.speed_table(tmp_path)
    assert (
        "| training | resnet18:unet | 256 × 8 | AMD EPYC, 2 threads (no native bf16; ONEDNN_MAX_CPU_ISA=AVX2) | 2.00 img/s | 5.00 img/s | channels_last + fp32 | "
        "4.00 img/s | 4.50 img/s | 0.50 img/s | – | 2.50× | `python benchmarks/train_speed.py` |"
    ) in table
    doc = tmp_path / "results.md"
    doc.write_text("intro\n<!-- speed-table:start -->\nold\n<!-- speed-table:end -->\nrest\n")
    tables.replace_between_markers(doc, "speed-table", table)
    text = doc.read_text()
    assert "old" not in text and table in text and text.startswith("intro") and text.endswith("rest\n")
    with pytest.raises(CheckpointError, match="no <!-- cls-table:start -->"):
        tables.replace_between_markers(doc, "cls-table", "x")


def test_fast_path_quality_row(tmp_path):
    (tmp_path / "fast_path_quality.json").write_text(
        json.dumps(
            {
                "command": "python benchmarks/fast_path_quality.py",
                "val_dice_difference": -0.0042,
                "epoch_time_ratio": 2.31,
                "config": {"seed": 0, "encoder": "efficientnet-lite0", "model": "unet", "image_size": 160, "batch_size": 8, "epochs": 12},
                "fp32": {"val_dice_at_best": 0.7012, "best_epoch": 11},
                "bf16_channels_last": {"val_dice_at_best": 0.697, "best_epoch": 12},
            }
        )
    )
    table = tables.speed_table(tmp_path)
    assert (
        "| seed 0 | efficientnet-lite0:unet | 160 × 8 | 12 | 0.701 (epoch 11) | 0.697 (epoch 12) | -0.004 | 2.31× | `python benchmarks/fast_path_quality.py` |"
    ) in table


def test_profile_table_shares_and_speedups(tmp_path):
    (tmp_path / "train_profile.json").write_text(
        json.dumps(
            {
                "command": "python benchmarks/train_profile.py",
                "cpu": "Xeon",
                "threads": 2,
                "unit": "ms",
                "models": {
                    "efficientnet-lite0:unet": {
                        "fp32_eager": {"convolution": 600.0, "batch norm": 400.0},
                        "default": {"convolution": 150.0, "batch norm": 350.0},
                    }
                },
            }
        )
    )
    table = tables.speed_table(tmp_path)
    # Shares of each path's own total (1000 and 500 ms); speed-up fp32 / default.
    assert "| efficientnet-lite0:unet | convolution | 600 (60%) | 150 (30%) | 4.00× |" in table
    assert "|  | batch norm | 400 (40%) | 350 (70%) | 1.14× |" in table
    assert "|  | all | 1000 (100%) | 500 (100%) | – |" in table
    assert "Command: `python benchmarks/train_profile.py` (Xeon, 2 threads; ms)" in table


def test_leakage_table(tmp_path):
    assert tables.leakage_table(tmp_path) == ""  # no benchmark file: nothing to render

    def subset(value, n):
        return {"images": n, "groups": n, "mean_dice": {"value": value, "ci_low": value - 0.1, "ci_high": value + 0.1}, "dice_zero": 1}

    fit = {"epochs_run": 35, "best_epoch": 18}
    (tmp_path / "split_leakage.json").write_text(
        json.dumps(
            {
                "command": "python benchmarks/split_leakage.py",
                "control": {
                    "run": "runs/busi/a",
                    "splits": "splits/busi.json",
                    "duplicates": "group",
                    "fit": fit,
                    "val": {"all": subset(0.74, 79)},
                    "test": {"all": subset(0.73, 79)},
                },
                "leaky": {
                    "run": "runs/busi/b",
                    "splits": "splits/busi-leaky.json",
                    "duplicates": "ignore",
                    "fit": fit,
                    "val": {"all": subset(0.75, 79), "leaked": subset(0.8, 34), "not_leaked": subset(0.7, 45)},
                    "test": {"all": subset(0.82, 79), "leaked": subset(0.84, 28), "not_leaked": subset(0.81, 51)},
                },
            }
        )
    )
    table = tables.leakage_table(tmp_path)
    assert "| a | 35 (18) | `splits/busi.json` | duplicate groups kept in one split | test | 79 | 0.73 (0.63–0.83) | – | – | 1 |" in table
    assert (
        "| b | 35 (18) | `splits/busi-leaky.json` | image by image (duplicates ignored) | val | 79 | 0.75 (0.65–0.85) | "
        "0.80 (0.70–0.90) (34) | 0.70 (0.60–0.80) (45) | 1 |"
    ) in table
    assert table.endswith("Command: `python benchmarks/split_leakage.py`")


def test_missed_lesions_summary_and_table(tmp_path):
    assert tables.missed_table(tmp_path) == ""  # no benchmark file: nothing to render
    bench = load_script("missed_lesions")

    def row(image, label, group, dice, area, verdict, review=None):
        return {"image": image, "label": label, "group": group, "dice": dice, "lesion_area": area, "classifier": verdict, "review": review}

    rows = [
        row("b1", "benign", "group 1", 0.0, 0.2, "normal"),
        row("b2", "benign", "group 1", 0.0, 0.1, "normal"),
        row("m1", "malignant", "m1", 0.0, 0.05, "malignant", review="classified malignant but no lesion outlined"),
        row("b3", "benign", "b3", 0.9, 0.04, "benign"),
        row("m2", "malignant", "m2", 0.5, 0.02, "normal"),
    ]
    summary = bench.summarise(rows)
    assert (summary["lesion_images"], summary["missed"], summary["missed_by_class"], summary["missed_groups"]) == (5, 3, {"benign": 2, "malignant": 1}, 2)
    assert (summary["missed_called_normal"], summary["all_lesions_called_normal"]) == (2, 3)
    assert summary["median_lesion_area"] == {"missed": 0.1, "found": 0.03}
    assert [r["image"] for r in summary["missed_images"]] == ["b1", "b2", "m1"]
    (tmp_path / "missed_lesions.json").write_text(
        json.dumps(
            {
                "command": "python benchmarks/missed_lesions.py",
                "segmentation_model": "release",
                "classification_model": "release",
                "val": summary,
            }
        )
    )
    table = tables.missed_table(tmp_path)
    assert "| val | 5 | 3 (2 / 1) | 2 | 0.100 / 0.030 | 2 of 3 | 3 of 5 | 1 of 3 |" in table
    assert "| train |" not in table and table.endswith("Command: `python benchmarks/missed_lesions.py`")
    # A miss outlined elsewhere on a scan the classifier puts in a lesion class gets no review note: not counted.
    outlined_elsewhere = bench.summarise([*rows[:2], {**rows[2], "review": None}, *rows[3:]])
    (tmp_path / "missed_lesions.json").write_text(
        json.dumps(
            {
                "command": "python benchmarks/missed_lesions.py",
                "segmentation_model": "release",
                "classification_model": "release",
                "val": outlined_elsewhere,
            }
        )
    )
    assert "| 2 of 3 | 3 of 5 | 0 of 3 |" in tables.missed_table(tmp_path)


def test_missed_lesions_benchmark_runs_both_models(seg_run, cls_run, synthetic_dir, tmp_path):
    bench = load_script("missed_lesions")
    out = tmp_path / "missed.json"
    args = [
        "--data",
        str(synthetic_dir),
        "--splits",
        str(seg_run / "splits.json"),
        "--seg",
        str(seg_run),
        "--cls",
        str(cls_run),
        "--split",
        "val",
        "--out",
        str(out),
        "--figures",
        str(tmp_path / "figures"),
    ]
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


def test_startup_table(tmp_path):
    assert tables.startup_table(tmp_path) == ""  # nothing measured: no table
    (tmp_path / "startup.json").write_text(
        json.dumps(
            {
                "command": "python benchmarks/startup.py",
                "repeats": 5,
                "seconds": {"busai --help": 0.412, "busai predict SCAN (onnx)": 2.5},
                "machine": {"cpu": "AMD EPYC", "cpu_flags": ["avx2", "fma"], "cpu_native_bf16": False, "threads": 2},
            }
        )
    )
    table = tables.startup_table(tmp_path)
    assert "best of 5 fresh processes; AMD EPYC, 2 threads (no native bf16), CPU flags avx2 fma" in table
    assert "| `busai --help` | 0.41 |" in table and "| `busai predict SCAN (onnx)` | 2.50 |" in table


def test_throughput_tables_one_per_machine_with_the_baseline_column(tmp_path):
    assert tables.throughput_table(tmp_path) == ""  # nothing measured: no table

    def result(cap, baseline):
        paths = {
            "before": {"images_per_second": 2.0, "speedup_over_before": 1.0, "fraction_of_flop_limit": 0.1},
            "batched": {"images_per_second": 6.0, "speedup_over_before": 3.0, "fraction_of_flop_limit": 0.3},
        }
        if baseline:
            paths["issue-33 baseline"] = {"images_per_second": 1.5, "speedup_over_before": 0.75, "fraction_of_flop_limit": 0.075}
            for p in paths.values():
                p["speedup_over_issue_baseline"] = p["images_per_second"] / 1.5
        machine = {"cpu": "AMD EPYC", "cpu_flags": ["avx2", "fma"], "threads": 2, "load_average": [0.1], "isa_cap": cap}
        return {
            "command": "python benchmarks/predict_throughput.py --n 10",
            "images": 10,
            "machine": machine,
            "model_gflops_per_image": {"segmentation": 5.0},
            "paths": paths,
            "models_only": {"images": 8, "images_per_second": 12.5, "fraction_of_flop_limit": {"fp32": 0.5}},
        }

    (tmp_path / "predict_throughput.json").write_text(json.dumps(result(None, False)))
    (tmp_path / "predict_throughput_avx2cap.json").write_text(json.dumps(result("AVX2", True)))
    first, second = tables.throughput_table(tmp_path).split("\n\n`")
    assert "capped" not in first and "| batched | 6.00 | x3.00 | – | 30% |" in first
    assert "AMD EPYC capped at AVX2 (ONEDNN_MAX_CPU_ISA)" in second and "| batched | 6.00 | x3.00 | x4.00 | 30% |" in second
    assert "12.50 images/s, 50% of the fp32 limit." in second and "CPU flags: avx2 fma." in second
