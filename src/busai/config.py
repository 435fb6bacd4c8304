"""Run configuration: one dataclass for both tasks, defaults taken from the paper.

Keys use the paper's vocabulary (encoder, decoder, image_size, focal_alpha, focal_gamma) so a
config file reads like its Tables 3 and 5. A resolved config is written into every run folder.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from busai.errors import ConfigError, read_json

TASK_ALIASES = {
    "seg": "segmentation",
    "segmentation": "segmentation",
    "cls": "classification",
    "classification": "classification",
    "mt": "multitask",
    "multitask": "multitask",
    "multi-task": "multitask",
}


def resolve_task(task: str, *, multitask: bool = False) -> str:
    """The canonical task name. A model answers one task (segmentation or classification); only
    training and :func:`busai.models.registry.build` also know multitask, a network that answers both."""
    resolved = TASK_ALIASES.get(str(task).lower())
    if resolved is None or (resolved == "multitask" and not multitask):
        extra = ", multitask (mt)" if multitask else ""
        raise ConfigError(f"unknown task '{task}'; choose one of: segmentation (seg), classification (cls){extra}")
    return resolved


OPTIMIZERS = ("adam", "adamw", "rmsprop", "sgd", "adagrad")
PRECISIONS = ("auto", "bf16", "fp32")
# Built by busai.losses; named here so the CLI lists them without importing torch.
SEGMENTATION_LOSSES = ("dice", "dice_bce", "image_dice_bce", "dice_presence", "dice_topk", "lovasz")
AUGMENTATIONS = ("paper", "strong", "scanner", "framing", "none")
SELECTIONS = ("loss", "lesion_dice")
# Defaults the commands and the Python API share, each written once here (a torch-free module, so
# `busai CMD --help` stays fast) and read by both; tests/test_cli_defaults.py compares the two.
N_BOOT = 1000  # bootstrap resamples behind every 95% CI
MASK_THRESHOLD = 0.5  # lesion probability from which a pixel belongs to the mask
PREDICT_BATCH_SIZE = 8  # scans of one size run through a model together
SPLIT_VAL = 0.1  # the paper's 80:10:10
SPLIT_TEST = 0.1
SYNTH_IMAGES = 30
SYNTH_SIZE = (128, 160)  # height, width
QUANTIZE_CALIB_IMAGES = 64  # training images int8 calibration sees
ONNX_OPSET = 18
SERVE_HOST = "127.0.0.1"  # this computer only
SERVE_PORT = 8000
# busai adapt (busai.adaptation), here so its --help needs no torch:
ADAPT_MIN_LABELLED = 8  # fewer labelled scans cannot both fine-tune and early-stop (a hold-out of one or two scans at least)
ADAPT_HOLDOUT = 0.2  # share of the site's labelled scans held out for the report when it has no split file
ADAPT_FREEZE_ENCODER = 3  # encoder stages (from the input) kept fixed while fine-tuning: the early ones see pixels, not the site
ADAPT_EPOCHS = 30
ADAPT_PATIENCE = 5
ADAPT_LR = 1e-4  # well below training's: a fine-tune, not a new fit
ADAPT_BATCH_SIZE = 8
# --pseudo-label's rule (untuned: benchmarks/adapt.py --pseudo-label measures whether it pays): a scan's mask and its mirror
# image's must agree (Dice), its lesion pixels be far from 0.5 (mean |2p - 1|), and pixels within the band of 0.5 are ignored.
ADAPT_PSEUDO_AGREEMENT = 0.9
ADAPT_PSEUDO_CONFIDENCE = 0.8
ADAPT_PSEUDO_BAND = 0.2
DEVICES = ("auto", "cpu", "cuda")
COLORS = ("rgb", "gray")
VIEWS = ("scan", "lesion")  # what a classifier sees: the whole scan, or the lesion with its context (busai.preprocessing.lesion_view)
LESION_CLASSES = ["benign", "malignant"]  # a lesion view's default classes: a crop needs a lesion
SCHEDULERS = ("none", "plateau", "cosine")
TRACKERS = ("none", "tensorboard", "mlflow")
BACKENDS = ("auto", "torch", "onnx")  # what runs a loaded model for predict / serve; auto: torch where installed, else onnx
TRAIN_TASKS = ("seg", "cls", "mt")  # the short forms `busai train` takes
MODEL_TASKS = ("seg", "cls")  # the short forms of the tasks a single-task model answers
DEFAULT_MODELS = {"segmentation": "unet", "classification": "resnet18", "multitask": "unet"}  # what `busai train seg|cls` trains unasked
# Input sizes a run may ask for. 32: the encoders halve the image five times, so a smaller input
# leaves them less than one pixel. 2048: over the size of any ultrasound frame busai reads (BUSI's
# are about 500 px, BUS-UCLM's 800), where one batch of 8 through a U-Net already needs tens of GB;
# a larger value is a typo that would only run out of memory.
IMAGE_SIZE_RANGE = (32, 2048)
# Counts: a fraction (epochs: 1.5) would pass the range checks and fail mid-run.
_WHOLE_NUMBERS = ("batch_size", "epochs", "patience", "plateau_patience", "seed", "num_workers")


@dataclass
class TrainConfig:
    """Everything a training run needs, for either task; ``TrainConfig(task="cls")`` is complete.

    Every field has a default (the paper's, where it names one); fields left None resolve per task
    here: ``model``, ``loss``, ``scheduler`` (and ``encoder`` is dropped for classification).
    The comments beside the fields say what each does; ``busai train --help`` shows the same
    options, and docs/python-api.md groups them.
    """

    task: str = "segmentation"  # "seg"/"segmentation", "cls"/"classification" or "mt"/"multitask"
    # Segmentation: model = decoder (unet, unetplusplus, deeplabv3) on `encoder`.
    # Classification: model = classifier name; encoder unused. `busai models` lists both.
    # Multitask: a segmentation model whose encoder also feeds a classification head (one network, both outputs).
    model: str | None = None  # None: "unet" for segmentation and multitask, "resnet18" for classification
    encoder: str | None = "resnet18"
    weights: str = "imagenet"
    image_size: int | None = None  # None: the model's own default (224, 299 for InceptionV3, 256 for segmentation)

    optimizer: str = "adam"
    lr: float = 1e-4
    weight_decay: float = 0.0
    betas: tuple[float, float] | None = None  # Adam / AdamW only; None keeps torch's (0.9, 0.999)
    momentum: float = 0.9  # SGD / RMSprop
    batch_size: int = 8
    epochs: int = 100
    patience: int = 25  # early stopping on validation loss (paper: 25)

    loss: str | None = None  # None: "dice" for segmentation (and multitask's masks), "focal" for classification
    focal_alpha: float | list[float] = 0.25
    focal_gamma: float = 2.0
    # Multitask: the loss is the mask loss plus this weight times the focal loss of the class head.
    class_loss_weight: float = 1.0
    weighted_sampler: bool = True  # classification and multitask (paper: class-frequency WeightedRandomSampler)
    # Draw training images by how wrong the model last was on each (busai.data.dataset.HardExampleSampler).
    hard_examples: bool = False
    scheduler: str | None = None  # None: "plateau" for classification (paper), "none" for segmentation
    plateau_patience: int = 25
    plateau_factor: float = 0.1
    augment: str = "paper"  # paper, strong, scanner, framing or none (see busai.data.dataset.build_augmentations)
    # Which epoch's weights are kept: the lowest validation loss, or (segmentation, multitask) the
    # highest validation Dice over lesion scans, the score that matters across scanners.
    select: str = "loss"
    # Exponential moving average of the weights (decay per step, e.g. 0.999): validated, kept and
    # saved in place of the raw weights; None trains without it.
    ema: float | None = None
    # Segmentation: chance of pasting another training scan's lesion, faded toward the host's grey (busai.data.dataset.paste_lesion).
    lesion_paste: float = 0.0
    # gray: the model sees every scan as grey (luma copied to three channels), in training and
    # prediction alike, so a scanner's tinted grey map or colour overlays do not shift its input.
    color: str = "rgb"
    # Classification: "lesion" trains on the lesion with its context, cut from each image's mask
    # (busai.preprocessing.lesion_view), each side's margin drawn from crop_margin at every draw
    # (its middle for validation, and for prediction, which cuts around the segmenter's mask).
    view: str = "scan"
    crop_margin: tuple[float, float] = (0.15, 0.6)
    # Relative share of training draws per dataset (name -> weight); None draws images uniformly.
    dataset_weights: dict[str, float] | None = None

    # auto: channels_last, plus bf16 autocast where the CPU (or GPU) computes bf16 natively;
    # bf16: autocast whatever the hardware; fp32: plain fp32 eager, neither.
    precision: str = "auto"
    device: str = "auto"
    seed: int = 0
    num_workers: int = 0
    max_minutes: float | None = None  # wall-clock budget; training stops cleanly after the epoch that crosses it
    sync_bn: bool = False  # under torchrun on GPUs: BatchNorm statistics over the global batch
    log: str = "none"  # per-epoch tracking: none, tensorboard or mlflow (busai.tracking)

    # Classification and multitask: the classes to learn, None (the labels the data has), a list
    # (a subset, in output order) or a mapping of data label to class (busai.labels).
    classes: list[str] | dict[str, str] | None = None

    # A path, or NAME=PATH strings for several datasets; a dataset with reading options (layout,
    # column mapping, mask pattern) is a mapping (busai.data.sources.DataSpec.to_config).
    data: str | dict | list[str | dict] | None = None
    splits: str | None = None
    fold: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        task = TASK_ALIASES.get(str(self.task).lower())
        if task is None:
            raise ConfigError(f"task '{self.task}': unknown; use seg, cls or mt (multitask)")
        self.task = task
        self.optimizer = str(self.optimizer).lower()
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError(f"optimizer '{self.optimizer}': unknown; choose one of {', '.join(OPTIMIZERS)}")
        if self.precision not in PRECISIONS:
            raise ConfigError(f"precision '{self.precision}': unknown; choose auto, bf16 or fp32")
        if isinstance(self.augment, bool):  # run configs written before the named recipes stored true / false
            self.augment = "paper" if self.augment else "none"
        if self.augment not in AUGMENTATIONS:
            raise ConfigError(f"augment '{self.augment}': unknown; choose one of {', '.join(AUGMENTATIONS)}")
        if self.select not in SELECTIONS:
            raise ConfigError(f"select '{self.select}': unknown; choose loss or lesion_dice")
        if self.select == "lesion_dice" and task == "classification":
            raise ConfigError("select lesion_dice: segmentation and multitask only; use select loss for a classifier")
        if self.ema is not None and not (isinstance(self.ema, (int, float)) and not isinstance(self.ema, bool) and 0.0 < self.ema < 1.0):
            raise ConfigError(f"ema={self.ema!r}: must be a decay between 0 and 1 (e.g. 0.999), or left out")
        if not 0.0 <= self.lesion_paste <= 1.0:
            raise ConfigError(f"lesion_paste={self.lesion_paste}: must be a probability between 0 and 1")
        if self.lesion_paste and task != "segmentation":
            raise ConfigError("lesion_paste: segmentation only (a pasted lesion would make a normal scan's class label wrong); drop --lesion-paste")
        if self.color not in COLORS:
            raise ConfigError(f"color '{self.color}': unknown; choose rgb or gray")
        if self.dataset_weights is not None:
            bad = [f"{k}={v}" for k, v in self.dataset_weights.items() if not (isinstance(v, (int, float)) and v > 0 and v < float("inf"))]
            if bad:
                raise ConfigError(f"--dataset-weight {bad[0]}: a weight must be a positive number, e.g. --dataset-weight uclm=2")
        if self.device not in DEVICES:
            raise ConfigError(f"device '{self.device}': unknown; choose auto, cpu or cuda")
        if self.model is None:
            self.model = DEFAULT_MODELS[task]
        if self.log not in TRACKERS:
            raise ConfigError(f"log '{self.log}': unknown; choose tensorboard, mlflow or none")
        if self.loss is None:
            self.loss = "focal" if task == "classification" else "dice"
        if self.scheduler is None:
            self.scheduler = "plateau" if task == "classification" else "none"
        if task == "classification":
            self.encoder = None
        from busai.labels import parse_classes

        self.classes = parse_classes(self.classes)
        if self.classes is not None and task == "segmentation":
            raise ConfigError("classes: a segmentation model has no classes; drop --classes (or train cls / mt)")
        self._check_view(task)
        for name in (
            "lr",
            "batch_size",
            "epochs",
            "patience",
            "focal_gamma",
            "class_loss_weight",
            "weight_decay",
            "momentum",
            "plateau_patience",
            "plateau_factor",
        ):
            value = getattr(self, name)
            # isinstance first: a string from a hand-written JSON file would fail the comparison with a traceback.
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
                raise ConfigError(f"{name}={value!r}: must be a finite number")
        for name in _WHOLE_NUMBERS:
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name}={value!r}: must be a whole number")
        if self.fold is not None and (isinstance(self.fold, bool) or not isinstance(self.fold, int) or self.fold < 0):
            raise ConfigError(f"fold={self.fold!r}: must be a fold number (0, 1, ...)")
        if self.image_size is not None:
            low, high = IMAGE_SIZE_RANGE
            if isinstance(self.image_size, bool) or not isinstance(self.image_size, int) or not low <= self.image_size <= high:
                raise ConfigError(f"image_size={self.image_size!r}: must be a whole number of pixels from {low} to {high}")
        for name in ("lr", "batch_size", "epochs", "patience"):  # patience 0 would stop before the first epoch
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name}={getattr(self, name)}: must be positive")
        if self.class_loss_weight < 0:
            raise ConfigError(f"class_loss_weight={self.class_loss_weight}: must be zero or positive")
        if self.weight_decay < 0:
            raise ConfigError(f"weight_decay={self.weight_decay}: must be zero or positive")
        if self.max_minutes is not None and not (isinstance(self.max_minutes, (int, float)) and 0 < self.max_minutes < math.inf):
            raise ConfigError(f"max_minutes={self.max_minutes}: must be a positive number of minutes")
        if self.betas is not None:
            self.betas = (float(self.betas[0]), float(self.betas[1]))

    def _check_view(self, task: str) -> None:
        if self.view not in VIEWS:
            raise ConfigError(f"view '{self.view}': unknown; choose scan or lesion")
        margins = self.crop_margin
        if not (isinstance(margins, (list, tuple)) and len(margins) == 2 and all(isinstance(m, (int, float)) and not isinstance(m, bool) for m in margins)):
            raise ConfigError(f"crop_margin={margins!r}: give two shares of the lesion's size, e.g. --crop-margin 0.15 0.6")
        low, high = float(margins[0]), float(margins[1])
        if not 0.0 <= low <= high <= 2.0:
            raise ConfigError(f"--crop-margin {low:g} {high:g}: give 0 <= LOW <= HIGH <= 2 (shares of the lesion's height / width on each side)")
        self.crop_margin = (low, high)
        if self.view == "scan":
            return
        if task != "classification":
            raise ConfigError("--view lesion: classifiers only (a segmenter must see the whole scan to find the lesion); drop --view")
        if self.classes is None:
            self.classes = list(LESION_CLASSES)
        names = self.classes.values() if isinstance(self.classes, dict) else self.classes
        if "normal" in {str(n).strip().lower() for n in names}:
            raise ConfigError("--view lesion: a lesion crop needs a lesion, so there is no 'normal' class; use --classes benign,malignant")

    @property
    def view_margin(self) -> float:
        """The margin of a lesion view at validation and prediction: the middle of :attr:`crop_margin`."""
        return (self.crop_margin[0] + self.crop_margin[1]) / 2

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str = "config") -> "TrainConfig":
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ConfigError(f"{source}: unknown key(s) {', '.join(unknown)}; valid keys: {', '.join(sorted(known))}")
        return cls(**values)

    @classmethod
    def from_file(cls, path: str | Path) -> "TrainConfig":
        """A JSON or YAML (``.yaml`` / ``.yml``) config, or a run folder's ``config.json``."""
        path = Path(path)
        if path.suffix.lower() in (".yaml", ".yml"):
            values = _read_yaml(path)
        else:
            values = read_json(path, missing="config file not found", fix="fix the file")
        if not isinstance(values, dict):
            raise ConfigError(f"{path}: holds no mapping of config keys; write key: value lines (see `busai train --help`)")
        # A run folder's config.json nests the train config under "train".
        values = values.get("train", values)
        return cls.from_dict(values, source=str(path))


def _read_yaml(path: Path) -> dict:
    import yaml

    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: config file not found") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot read the file ({exc.__class__.__name__}); fix the file") from None
    try:
        return yaml.load(text, Loader=_unique_key_loader(path))  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        raise ConfigError(f"{path}: not valid YAML{where}; fix the file") from None


def _unique_key_loader(path: Path):
    """PyYAML's SafeLoader refusing a key given twice in one mapping (YAML forbids it; PyYAML keeps
    the last silently, so `lr` set twice would train with whichever came last). Hand-written:
    PyYAML has no option for it, and ruamel.yaml, which has, would be a second YAML library."""
    import yaml

    class UniqueKeyLoader(yaml.SafeLoader):
        def construct_mapping(self, node, deep=False):
            lines: dict = {}
            for key_node, _ in node.value:
                if key_node.tag == "tag:yaml.org,2002:merge":
                    continue
                key = self.construct_object(key_node, deep=deep)
                line = key_node.start_mark.line + 1
                try:
                    if key in lines:
                        raise ConfigError(f"{path}: key '{key}' is given twice (lines {lines[key]} and {line}); keep one")
                    lines[key] = line
                except TypeError:
                    continue  # an unhashable key: SafeLoader reports it
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader
