"""`busai train --weights FOLDER` (a run or release folder, or `release`) takes the folder's
architecture, input size and colour mode; options that contradict them are refused in one line."""

from __future__ import annotations

import json

import pytest

from busai.release import WEIGHTS, release_dir


@pytest.fixture(scope="module")
def handful(tmp_path_factory):
    """Six synthetic scans and a split of them: the release trains at its own 256 px, so few images keep it fast."""
    from busai.data.discover import discover_records
    from busai.data.splits import make_splits, write_splits
    from busai.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("handful")
    data = write_synthetic_dataset(root / "data", n=6, seed=1, size=(64, 80))
    splits = root / "splits.json"
    write_splits(splits, make_splits(discover_records(data), [], val=0.34, test=0.0, seed=0))
    return data, splits


def _config(run) -> dict:
    return json.loads((run / "config.json").read_text())


@pytest.mark.slow  # over a second on 2 idle cores: outside the fast loop (make test-fast)
def test_fine_tune_release_with_defaults(handful, tmp_path, cli):
    # Before: "missing encoder.conv1.weight ... (+389 more)" (the default resnet18 encoder is not the release's).
    run = tmp_path / "ft"
    code, _, err = cli(
        "train", "seg", "--weights", "release", "--data", handful[0], "--splits", handful[1], "--epochs", "1", "--batch-size", "2", "--quiet", "--out", run,
    )  # fmt: skip
    assert code == 0, err
    config, release = _config(run), _config(release_dir("segmentation"))
    assert config["model_spec"] == release["model_spec"]
    assert config["preprocessing"]["image_size"] == release["preprocessing"]["image_size"]
    assert config["preprocessing"]["color"] == release["preprocessing"]["color"] == "gray"
    assert config["weight_source"].startswith(f"file: {release_dir('segmentation') / WEIGHTS}")


def test_release_conflicting_options_are_refused(synthetic_dir, tmp_path, cli):
    release = _config(release_dir("segmentation"))
    size, encoder = release["preprocessing"]["image_size"], release["model_spec"]["encoder"]
    err = cli.fails(
        "train", "seg", "--weights", "release", "--encoder", "resnet18", "--data", synthetic_dir, "--out", tmp_path / "r",
        expect=f"holds a unet on {encoder} model at {size} px, gray input, but --encoder resnet18 was asked",
    )  # fmt: skip
    assert str(release_dir("segmentation")) in err
    # Before: --model unet --encoder efficientnet-lite0 fine-tuned the grey-input release on RGB input, silently.
    cli.fails(
        "train", "seg", "--weights", "release", "--model", "unet", "--encoder", encoder, "--color", "rgb", "--data", synthetic_dir,
        "--out", tmp_path / "r", expect="but --color rgb was asked",
    )  # fmt: skip
    assert not (tmp_path / "r").exists()


def test_run_folder_as_weights_sets_architecture_and_size(seg_run, handful, synthetic_dir, tmp_path, cli):
    run = tmp_path / "ft"
    code, _, err = cli(
        "train", "seg", "--weights", seg_run, "--data", handful[0], "--splits", handful[1], "--epochs", "1", "--quiet", "--out", run,
    )  # fmt: skip
    assert code == 0, err
    assert _config(run)["model_spec"] == _config(seg_run)["model_spec"]
    assert _config(run)["preprocessing"]["image_size"] == 64
    cli.fails(
        "train", "seg", "--weights", seg_run, "--image-size", "128", "--data", synthetic_dir, "--out", tmp_path / "r2",
        expect=f"--weights {seg_run}: {seg_run} holds a unet on efficientnet-lite0 model at 64 px, rgb input, but --image-size 128 was asked",
    )  # fmt: skip


def test_python_config_conflicting_with_weights_folder_is_refused(seg_run, synthetic_dir, tiny_runs, tmp_path):
    from busai.config import TrainConfig
    from busai.errors import ConfigError
    from busai.training import inherit_weights_folder, train

    cfg = TrainConfig(task="seg", weights=str(seg_run), data=str(synthetic_dir), splits=str(tiny_runs / "splits.json"), epochs=1)
    with pytest.raises(ConfigError, match="but --encoder resnet18 was asked"):
        train(cfg, tmp_path / "r")
    values = inherit_weights_folder({"task": "seg", "weights": str(seg_run)})
    assert (values["encoder"], values["image_size"], values["color"]) == ("efficientnet-lite0", 64, "rgb")
