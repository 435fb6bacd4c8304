"""The paper's search spaces (section 2.5) as data, and how they are narrowed, budgeted and sampled.

A space maps a :class:`~busai.config.TrainConfig` key to a spec ``{"type": ..., ...}``:
``loguniform`` / ``uniform`` (``low``, ``high``), ``int`` (``low``, ``high``), ``categorical``
(``choices``) or ``fixed`` (``value``). ``when: {key: [values]}`` makes a parameter conditional
on an earlier one (Adam's betas), and ``note`` says why an entry differs from the paper.
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import optuna

from busai.config import IMAGE_SIZE_RANGE, TASK_ALIASES, TrainConfig
from busai.errors import ConfigError, read_json

# The paper's spaces (section 2.5). Keys are TrainConfig keys, so a sampled point is a run config.
SEGMENTATION_SPACE: dict[str, dict] = {
    "model": {"type": "categorical", "choices": ["unet", "unetplusplus", "deeplabv3"]},  # the decoder; the paper ran one study per decoder
    "encoder": {"type": "categorical", "choices": ["resnet18", "efficientnet-b0", "mobilenet_v2", "vgg16", "efficientnet-lite0"]},
    "lr": {"type": "loguniform", "low": 1e-5, "high": 1e-3},
    "weight_decay": {"type": "loguniform", "low": 1e-5, "high": 1e-3},
    "batch_size": {"type": "categorical", "choices": [4, 8, 16]},
    "optimizer": {"type": "categorical", "choices": ["adam", "adamw", "rmsprop", "sgd", "adagrad"]},
    "image_size": {"type": "categorical", "choices": [256, 288, 320]},
    "epochs": {"type": "int", "low": 10, "high": 100},
}
_ADAM = {"optimizer": ["adam", "adamw"]}
CLASSIFICATION_SPACE: dict[str, dict] = {
    "model": {"type": "categorical", "choices": ["resnet18", "densenet121", "inception_v3", "mobilenet_v3_large", "googlenet", "efficientnet_lite0"]},
    "lr": {"type": "loguniform", "low": 1e-5, "high": 1e-1},
    "batch_size": {"type": "categorical", "choices": [8, 16, 32]},
    "weight_decay": {"type": "loguniform", "low": 1e-5, "high": 1e-1},
    "focal_alpha": {"type": "uniform", "low": 0.3, "high": 0.75},
    "focal_gamma": {"type": "uniform", "low": 3.0, "high": 5.0},
    "optimizer": {"type": "categorical", "choices": ["sgd", "adam", "rmsprop", "adamw"]},
    # The paper gives no beta ranges; these hold its Table 5 values and torch's defaults.
    "beta1": {"type": "uniform", "low": 0.8, "high": 0.95, "when": _ADAM},
    "beta2": {"type": "uniform", "low": 0.9, "high": 0.999, "when": _ADAM},
    "epochs": {"type": "fixed", "value": 100},  # paper: 100 epochs per trial, early stopping after 10
}
SPACES = {"segmentation": SEGMENTATION_SPACE, "classification": CLASSIFICATION_SPACE}


# The paper's tuned settings (ArunKumar et al. 2025, Table 3 per encoder:decoder, Table 5 per
# model), transcribed. `--enqueue-paper` runs the row as a study's first trial, so "did tuning beat
# the paper's settings?" is answered under the same budget; the study's report prints them
# (study/paper.py). Table 3's U-Net++ weight decay is printed as 1.09011, outside the paper's own
# 1e-5..1e-3 range: stored as None, left to the sampler.
PAPER_SEGMENTATION_SETTINGS = {
    ("resnet18", "unet"): {"lr": 8.1e-5, "weight_decay": 7.9e-5, "batch_size": 8, "optimizer": "adam", "image_size": 288},
    ("resnet18", "unetplusplus"): {"lr": 1.55e-4, "weight_decay": None, "batch_size": 8, "optimizer": "rmsprop", "image_size": 288},
    ("resnet18", "deeplabv3"): {"lr": 1.9e-4, "weight_decay": 1.9e-4, "batch_size": 8, "optimizer": "adamw", "image_size": 256},
}
PAPER_CLASSIFICATION_SETTINGS = {
    "resnet18": {"optimizer": "rmsprop", "lr": 4.91e-5, "weight_decay": 2.7e-4, "focal_alpha": 0.57, "focal_gamma": 4.03, "batch_size": 32},
    "inception_v3": {
        "optimizer": "adam",
        "lr": 1.63e-5,
        "weight_decay": 9e-5,
        "focal_alpha": 0.33,
        "focal_gamma": 4.41,
        "batch_size": 16,
        "betas": (0.84, 0.98),
    },
    "densenet121": {"optimizer": "rmsprop", "lr": 2.46e-5, "weight_decay": 6e-4, "focal_alpha": 0.65, "focal_gamma": 3.55, "batch_size": 32},
    "mobilenet_v3_large": {
        "optimizer": "adamw",
        "lr": 1.12e-4,
        "weight_decay": 6.26e-3,
        "focal_alpha": 0.44,
        "focal_gamma": 4.86,
        "batch_size": 8,
        "betas": (0.81, 0.96),
    },
    "googlenet": {
        "optimizer": "adam",
        "lr": 8.705e-4,
        "weight_decay": 1.5e-4,
        "focal_alpha": 0.73,
        "focal_gamma": 4.24,
        "batch_size": 32,
        "betas": (0.91, 0.93),
    },
}


def _space_row(settings: dict) -> dict:
    row = {k: v for k, v in settings.items() if v is not None and k != "betas"}
    if settings.get("betas"):
        row["beta1"], row["beta2"] = settings["betas"]
    return row


PAPER_SETTINGS = {
    "segmentation": {decoder: _space_row(s) for (_encoder, decoder), s in PAPER_SEGMENTATION_SETTINGS.items()},
    "classification": {name: _space_row(s) for name, s in PAPER_CLASSIFICATION_SETTINGS.items()},
}
# Models the paper did not tune borrow the row of their nearest paper model (same family).
PAPER_SETTINGS_STANDIN = {"efficientnet_lite0": "mobilenet_v3_large"}
DIRECTIONS = {"segmentation": "minimize", "classification": "maximize"}
OBJECTIVES = {
    "segmentation": "lowest validation loss (Dice loss) of the trial",
    "classification": "validation macro-F1 at the epoch with the lowest validation loss",
}
_TYPES = ("loguniform", "uniform", "int", "categorical", "fixed")
BETAS = ("beta1", "beta2")  # sampled separately, stored as TrainConfig.betas


def default_space(task: str) -> dict[str, dict]:
    return copy.deepcopy(SPACES[task_name(task)])


def task_name(task: str) -> str:
    name = TASK_ALIASES.get(str(task).lower())
    if name not in SPACES:  # the paper's search spaces cover its two tasks only
        raise ConfigError(f"task '{task}': no search space; tune seg or cls")
    return name


def narrow_space(space: dict[str, dict], overrides: dict[str, Any], source: str = "--space") -> dict[str, dict]:
    """A copy of ``space`` narrowed by ``overrides`` (key -> value); values must stay inside the space.

    A value is ``"LOW:HIGH"`` (or ``[LOW, HIGH]``) for a numeric range, ``"A,B"`` (or a list) for a
    subset of choices, or one value, which fixes the parameter. Keys may use dashes.
    """
    space = copy.deepcopy(space)
    for raw_key, value in overrides.items():
        key = str(raw_key).strip().replace("-", "_")
        where = f"{source} {raw_key}={_show(value)}"
        if key not in space:
            raise ConfigError(f"{where}: unknown parameter; choose from {', '.join(space)}")
        spec = space[key]
        space[key] = _narrow_one(spec, value, where)
    return space


def _show(value: Any) -> str:
    return ",".join(map(str, value)) if isinstance(value, list) else str(value)


def _narrow_one(spec: dict, value: Any, where: str) -> dict:
    kind = spec["type"]
    keep = {k: spec[k] for k in ("when", "note") if k in spec}
    if kind == "fixed":
        raise ConfigError(f"{where}: fixed at {spec['value']} in this space; change it with --max-epochs / --image-size or --config")
    if kind == "categorical":
        items = value if isinstance(value, list) else [v for v in str(value).split(",") if v.strip()]
        if not items:
            raise ConfigError(f"{where}: no choices given; pass e.g. {spec['choices'][0]}")
        chosen = []
        for item in items:
            match = next((c for c in spec["choices"] if str(c) == str(item).strip()), None)
            if match is None:
                raise ConfigError(f"{where}: '{item}' is not in the space; choose from {', '.join(map(str, spec['choices']))}")
            if match not in chosen:
                chosen.append(match)
        if len(chosen) == 1:
            return {"type": "fixed", "value": chosen[0], **keep}
        return {"type": "categorical", "choices": chosen, **keep}
    # numeric: loguniform, uniform, int
    cast = int if kind == "int" else float
    if isinstance(value, list):
        parts = value
    elif isinstance(value, (int, float)):
        parts = [value]
    else:
        parts = str(value).split(":")
    if len(parts) not in (1, 2):
        raise ConfigError(f"{where}: expected LOW:HIGH or one value")
    try:
        bounds = [int(str(p).strip()) if cast is int else float(p) for p in parts]  # int("10.5") refuses a fraction
        if not all(math.isfinite(b) for b in bounds):
            raise ValueError
    except (TypeError, ValueError):
        raise ConfigError(f"{where}: not {'an integer' if cast is int else 'a number'}; write e.g. {spec['low']}:{spec['high']}") from None
    low, high = bounds[0], bounds[-1]
    if low > high:
        raise ConfigError(f"{where}: low {low} is above high {high}; write LOW:HIGH")
    if low < spec["low"] or high > spec["high"]:
        raise ConfigError(f"{where}: outside the space {spec['low']}..{spec['high']}; narrow within it")
    if low == high:
        return {"type": "fixed", "value": low, **keep}
    return {**spec, "low": low, "high": high}


def read_space_file(path: str | Path) -> dict[str, Any]:
    """A JSON object of overrides in :func:`narrow_space`'s syntax, e.g. ``{"lr": "1e-4:1e-3", "encoder": ["resnet18"]}``."""
    data = read_json(path, missing='space file not found; pass a JSON file like {"lr": "1e-4:1e-3"}', fix="fix the file")
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: must hold a JSON object of parameter -> range or choices")
    return data


def parse_space_flags(flags: list[str]) -> dict[str, str]:
    """``["lr=1e-4:1e-3", "encoder=resnet18,vgg16"]`` -> ``{"lr": "1e-4:1e-3", ...}``."""
    overrides = {}
    for flag in flags:
        key, sep, value = flag.partition("=")
        if not sep or not key.strip() or not value.strip():
            raise ConfigError(f"--space {flag}: expected KEY=VALUE, e.g. --space lr=1e-4:1e-3 or --space encoder=resnet18,vgg16")
        overrides[key.strip()] = value.strip()
    return overrides


def apply_budget(space: dict[str, dict], *, image_size: int | None = None, max_epochs: int | None = None) -> dict[str, dict]:
    """CPU-budget overrides, which may leave the paper's ranges: fixed image size, capped epochs (noted in the spec)."""
    space = copy.deepcopy(space)
    if image_size is not None:
        if not IMAGE_SIZE_RANGE[0] <= image_size <= IMAGE_SIZE_RANGE[1]:
            raise ConfigError(f"--image-size {image_size}: must be from {IMAGE_SIZE_RANGE[0]} to {IMAGE_SIZE_RANGE[1]} pixels")
        was = space.get("image_size")
        space["image_size"] = {
            "type": "fixed",
            "value": int(image_size),
            "note": f"--image-size (CPU budget; the space had {_describe(was) if was else 'the model default'})",
        }
    if max_epochs is not None:
        if max_epochs < 1:
            raise ConfigError(f"--max-epochs {max_epochs}: must be 1 or more")
        spec = space["epochs"]
        note = f"--max-epochs {max_epochs} (CPU budget; the space had {_describe(spec)})"
        if spec["type"] == "fixed":
            space["epochs"] = {"type": "fixed", "value": min(spec["value"], max_epochs), "note": note}
        elif spec["high"] > max_epochs:
            low = min(spec["low"], max_epochs)
            space["epochs"] = (
                {"type": "fixed", "value": max_epochs, "note": note} if low == max_epochs else {**spec, "low": low, "high": max_epochs, "note": note}
            )
    return space


def _describe(spec: dict) -> str:
    kind = spec["type"]
    if kind == "fixed":
        return f"{spec['value']}"
    if kind == "categorical":
        return "{" + ", ".join(map(str, spec["choices"])) + "}"
    return f"{kind} {spec['low']:g}..{spec['high']:g}"


def build_space(
    task: str, *, space_file: str | Path | None = None, space_flags: list[str] = (), image_size: int | None = None, max_epochs: int | None = None
) -> dict[str, dict]:
    """The task's paper space, narrowed by a file then by ``--space`` flags, then the CPU-budget overrides."""
    space = default_space(task)
    if space_file:
        space = narrow_space(space, read_space_file(space_file), source=str(space_file))
    if space_flags:
        space = narrow_space(space, parse_space_flags(list(space_flags)))
    return apply_budget(space, image_size=image_size, max_epochs=max_epochs)


def describe_space(space: dict[str, dict]) -> list[str]:
    """One line per parameter, for printing with the study."""
    width = max(map(len, space))
    lines = []
    for key, spec in space.items():
        extra = ""
        if "when" in spec:
            extra += " when " + ", ".join(f"{k} in {{{', '.join(v)}}}" for k, v in spec["when"].items())
        if "note" in spec:
            extra += f"  [{spec['note']}]"
        lines.append(f"{key:<{width}}  {_describe(spec)}{extra}")
    return lines


def validate_space(space: dict[str, dict], source: str = "space") -> None:
    for key, spec in space.items():
        if spec.get("type") not in _TYPES:
            raise ConfigError(f"{source}: parameter '{key}' has type {spec.get('type')!r}; use one of {', '.join(_TYPES)}")


def suggest_config(trial: optuna.trial.BaseTrial, space: dict[str, dict], base: TrainConfig) -> TrainConfig:
    """Sample one point of ``space`` with ``trial`` on top of ``base``; returns a validated TrainConfig."""
    values = base.to_dict()
    betas: dict[str, float] = {}
    for key, spec in space.items():
        if any(values.get(k) not in allowed for k, allowed in spec.get("when", {}).items()):
            continue
        kind = spec["type"]
        if kind == "fixed":
            value = spec["value"]
        elif kind == "categorical":
            value = trial.suggest_categorical(key, spec["choices"])
        elif kind == "int":
            value = trial.suggest_int(key, spec["low"], spec["high"])
        else:
            value = trial.suggest_float(key, spec["low"], spec["high"], log=kind == "loguniform")
        if key in BETAS:
            betas[key] = value
        else:
            values[key] = value
    if betas:
        default = base.betas or (0.9, 0.999)
        values["betas"] = (betas.get("beta1", default[0]), betas.get("beta2", default[1]))
    return TrainConfig.from_dict(values, source="search space")


def paper_trial_params(task: str, space: dict[str, dict]) -> tuple[dict, str]:
    """The paper's row for the space's (fixed) model, restricted to values the space can sample."""
    model = space.get("model", {})
    if model.get("type") != "fixed":
        raise ConfigError("--enqueue-paper: needs one model (the paper tuned each separately); add e.g. --space model=unet")
    name = model["value"]
    row = PAPER_SETTINGS_STANDIN.get(name, name)
    settings = PAPER_SETTINGS[task].get(row)
    if settings is None:
        raise ConfigError(f"--enqueue-paper: the paper has no tuned settings for {name}; drop the option")
    return {k: v for k, v in settings.items() if k in space and _samples(space[k], v)}, row


def _samples(spec: dict, value: Any) -> bool:
    if spec["type"] == "categorical":
        return value in spec["choices"]
    return spec["type"] != "fixed" and spec["low"] <= value <= spec["high"]
