"""Run configuration: paper defaults per task, validation messages, CLI flags over a config file."""

import json

import pytest

from busai.cli import build_parser
from busai.commands.train import config_from_args
from busai.config import TrainConfig
from busai.errors import ConfigError


def test_task_defaults_follow_the_paper():
    seg = TrainConfig(task="seg")
    assert (seg.task, seg.loss, seg.scheduler, seg.patience) == ("segmentation", "dice", "none", 25)
    cls = TrainConfig(task="cls", model="resnet18")
    assert (cls.task, cls.loss, cls.scheduler, cls.plateau_patience, cls.encoder) == ("classification", "focal", "plateau", 25, None)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"task": "detect"}, "task 'detect': unknown; use seg, cls or mt (multitask)"),
        ({"optimizer": "lion"}, "optimizer 'lion': unknown; choose one of adam, adamw, rmsprop, sgd, adagrad"),
        ({"precision": "fp8"}, "precision 'fp8': unknown; choose auto, bf16 or fp32"),
        ({"augment": "heavy"}, "augment 'heavy': unknown; choose one of paper, strong, scanner, framing, none"),
        ({"lr": 0}, "lr=0: must be positive"),
        ({"weight_decay": -1}, "weight_decay=-1: must be zero or positive"),
    ],
)
def test_bad_values_are_named(kwargs, message):
    with pytest.raises(ConfigError) as err:
        TrainConfig(**kwargs)
    assert str(err.value) == message


def test_unknown_config_key_lists_valid_ones(tmp_path):
    path = tmp_path / "c.json"
    path.write_text(json.dumps({"task": "seg", "learning_rate": 0.1}))
    with pytest.raises(ConfigError, match=r"c.json: unknown key\(s\) learning_rate; valid keys: "):
        TrainConfig.from_file(path)


def test_broken_config_file(tmp_path):
    path = tmp_path / "c.json"
    path.write_text("{task: seg")
    with pytest.raises(ConfigError, match="not valid JSON"):
        TrainConfig.from_file(path)


def test_flags_override_config_file_and_round_trip(tmp_path):
    path = tmp_path / "best.json"
    path.write_text(json.dumps(TrainConfig(task="cls", model="densenet121", lr=0.01, batch_size=32).to_dict()))
    args = build_parser().parse_args(["train", "--config", str(path), "--lr", "0.001", "--focal-alpha", "0.2", "0.3", "0.5", "--no-sampler"])
    cfg = config_from_args(args)
    assert (cfg.model, cfg.lr, cfg.batch_size, cfg.focal_alpha, cfg.weighted_sampler) == ("densenet121", 0.001, 32, [0.2, 0.3, 0.5], False)
    assert TrainConfig.from_dict(cfg.to_dict()) == cfg


def test_hard_examples_flag_reaches_the_config():
    assert config_from_args(build_parser().parse_args(["train", "seg", "--hard-examples"])).hard_examples
    assert not config_from_args(build_parser().parse_args(["train", "seg"])).hard_examples


def test_lesion_paste_is_a_segmentation_probability():
    assert config_from_args(build_parser().parse_args(["train", "seg", "--lesion-paste", "0.5"])).lesion_paste == 0.5
    with pytest.raises(ConfigError, match=r"lesion_paste=1.5: must be a probability between 0 and 1"):
        TrainConfig(task="seg", lesion_paste=1.5)
    with pytest.raises(ConfigError, match=r"lesion_paste: segmentation only .*; drop --lesion-paste"):
        TrainConfig(task="cls", model="resnet18", lesion_paste=0.5)


def test_cls_defaults_to_resnet18_on_the_command_line():
    cfg = config_from_args(build_parser().parse_args(["train", "cls", "--out", "x"]))
    assert cfg.model == "resnet18"


def test_augment_flag_and_configs_written_before_named_recipes():
    cfg = config_from_args(build_parser().parse_args(["train", "seg", "--out", "x", "--augment", "strong"]))
    assert cfg.augment == "strong" and TrainConfig(task="seg").augment == "paper"
    # Older run folders stored a boolean; --resume reads them as the recipe they ran.
    assert TrainConfig(task="seg", augment=True).augment == "paper"
    assert TrainConfig(task="seg", augment=False).augment == "none"


def test_yaml_config(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("task: cls\nmodel: efficientnet_lite0\nlr: 3.0e-4\nfocal_alpha: [0.2, 0.3, 0.5]\n")
    cfg = TrainConfig.from_file(path)
    assert (cfg.task, cfg.model, cfg.lr, cfg.focal_alpha) == ("classification", "efficientnet_lite0", 3e-4, [0.2, 0.3, 0.5])
    path.write_text("task: [cls\n")
    with pytest.raises(ConfigError, match=r"run.yaml: not valid YAML at line 2; fix the file"):
        TrainConfig.from_file(path)
    path.write_text("- cls\n")
    with pytest.raises(ConfigError, match="holds no mapping of config keys"):
        TrainConfig.from_file(path)
