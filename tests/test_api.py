"""busai.load / Model.predict / Model.save / busai.predict: round trips for a run folder, the
packaged release and an ONNX file; every bad input with its message; the lazy public namespace."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import busai
from busai.api import Model, Prediction
from busai.errors import CheckpointError, ConfigError, DataError

ONNX_TOLERANCE = 1e-3  # busai.export.PARITY_TOLERANCE, on logits; probabilities move less


@pytest.fixture(scope="module")
def scan(synthetic_dir):
    return synthetic_dir / "malignant" / "malignant (1).png"


def message(exc_info) -> str:
    return str(exc_info.value)


# --------------------------------------------------------------------------- the namespace
@pytest.mark.slow  # over a second on 2 idle cores: outside the fast loop (make test-fast)
def test_import_busai_exposes_exactly_all_and_pulls_in_no_torch():
    code = "import sys, json, busai\nprint(json.dumps({'torch_at_import': 'torch' in sys.modules}))\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout)["torch_at_import"] is False  # in a fresh interpreter: the star import below needs torch
    ns = {}
    exec("from busai import *", ns)
    assert sorted(k for k in ns if not k.startswith("__")) == sorted(busai.__all__)
    assert busai.__all__ == ["load", "Model", "TrainConfig", "train", "resume", "evaluate", "predict", "adapt", "list_models"]


def test_public_names_are_the_library_functions():
    from busai import api, config, training
    from busai.models import registry

    assert (busai.load, busai.Model, busai.TrainConfig) == (api.load, api.Model, config.TrainConfig)
    assert (busai.train, busai.resume, busai.list_models) == (training.train, training.resume, registry.list_models)
    with pytest.raises(AttributeError, match="no attribute 'nothing'"):
        busai.nothing  # noqa: B018


def test_no_submodule_shadows_a_public_name():
    # Importing busai.NAME binds the package attribute NAME to the module, so a module named like a
    # public function (busai/predict.py once) would replace busai.predict once anything imported it.
    import pkgutil

    assert not {m.name for m in pkgutil.iter_modules(busai.__path__)} & set(busai.__all__)


def test_predict_and_evaluate_are_the_api_functions_after_every_import(scan, seg_run, synthetic_dir, tiny_runs, tmp_path):
    from busai import api
    from busai.commands import evaluate as evaluate_command, predict as predict_command  # noqa: F401
    from busai.evaluation import evaluate_model
    from busai.prediction import predict_paths  # noqa: F401

    assert (busai.predict, busai.evaluate) == (api.predict, api.evaluate)
    seg = busai.load(seg_run)
    assert busai.predict(seg, scan).mask is not None
    with pytest.raises(ConfigError) as exc:
        busai.evaluate(seg, [])
    assert message(exc) == "pass the data to score with data=PATH (or data=NAME=PATH, repeatable)"
    # A Model is scored from its source: the same numbers as busai evaluate on the run folder.
    options = dict(splits_file=tiny_runs / "splits.json", split_names=["val"], n_boot=10, figures=False)
    by_model = busai.evaluate(seg, synthetic_dir, out=tmp_path / "a", **options)
    by_path = evaluate_model(seg_run, synthetic_dir, out=tmp_path / "b", device="cpu", **options)
    assert by_model["segmentation"]["val"]["dice"] == by_path["segmentation"]["val"]["dice"]


def test_trainconfig_has_per_task_defaults():
    cls = busai.TrainConfig(task="cls")
    assert (cls.task, cls.model, cls.encoder, cls.loss, cls.scheduler) == ("classification", "resnet18", None, "focal", "plateau")
    seg = busai.TrainConfig(task="seg")
    assert (seg.task, seg.model, seg.encoder, seg.loss, seg.scheduler) == ("segmentation", "unet", "resnet18", "dice", "none")
    assert busai.TrainConfig(task="cls", model="efficientnet_lite0").model == "efficientnet_lite0"


# --------------------------------------------------------------------------- round trips
def assert_same(a: Prediction, b: Prediction) -> None:
    assert (a.width, a.height, a.label, a.probabilities, a.measurements, a.review) == (b.width, b.height, b.label, b.probabilities, b.measurements, b.review)
    for field in ("mask", "lesion_probability"):
        x, y = getattr(a, field), getattr(b, field)
        assert (x is None and y is None) or np.array_equal(x, y)


def test_run_folders_predict_like_busai_predict_and_save_round_trip(seg_run, cls_run, scan, tmp_path):
    from busai.rendering import predict_array

    seg, cls = busai.load(seg_run, task="seg"), busai.load(cls_run, device="cpu")
    assert (seg.task, seg.backend, cls.task, str(cls.device)) == ("segmentation", "torch", "classification", "cpu")
    both = busai.predict([seg, cls], scan, pixel_spacing=0.1)
    row, mask = predict_array([seg, cls], np.asarray(Image.open(scan).convert("RGB")), pixel_spacing=0.1)
    row.pop("diameter_endpoints"), row.pop("perpendicular_endpoints", None)
    assert both.to_row() == row and np.array_equal(both.mask, mask)
    assert set(both.probabilities) == set(busai.CLASSES) and abs(sum(both.probabilities.values()) - 1) < 1e-5

    for model in (seg, cls):
        before = model.predict(scan, pixel_spacing=0.1)
        saved = model.save(tmp_path / model.task)
        assert sorted(p.name for p in saved.iterdir()) == ["config.json", "model.safetensors", "training_data.json"]
        again = busai.load(saved)
        assert (again.task, again.spec, again.preprocessing) == (model.task, model.spec, model.preprocessing)
        assert_same(again.predict(scan, pixel_spacing=0.1), before)
    assert both.label == busai.load(tmp_path / "classification").predict(scan).label


@pytest.mark.slow  # over a second on 2 idle cores: outside the fast loop (make test-fast)
def test_release_models_round_trip(scan, tmp_path):
    seg, cls = busai.load("release", task="seg"), busai.load("release", task="classification")
    assert (seg.task, cls.task) == ("segmentation", "classification")
    for model in (seg, cls):
        before = model.predict(scan, precision="fp32")
        again = busai.load(model.save(tmp_path / model.task))  # fp16 release weights saved as fp32: exact
        assert_same(again.predict(scan, precision="fp32"), before)
        assert again.temperature == model.temperature


def test_onnx_file_predicts_like_torch_and_saves(seg_run, cls_run, scan, tmp_path):
    pytest.importorskip("onnxruntime")
    for run in (seg_run, cls_run):
        model = busai.load(run)
        result = model.export(tmp_path / f"{model.task}.onnx")
        assert result.ok
        onnx = busai.load(result.path)
        assert (onnx.backend, onnx.task, onnx.network, str(onnx.device)) == ("onnx", model.task, None, "cpu")
        torch_pred, onnx_pred = model.predict(scan, precision="fp32"), onnx.predict(scan)
        if model.task == "segmentation":
            assert np.abs(torch_pred.lesion_probability - onnx_pred.lesion_probability).max() < ONNX_TOLERANCE
        else:
            assert max(abs(torch_pred.probabilities[c] - onnx_pred.probabilities[c]) for c in busai.CLASSES) < ONNX_TOLERANCE
        # The same backend interface, answered by PyTorch and by ONNX Runtime.
        assert (model.supports_gradients, onnx.supports_gradients) == (True, False)
        batch = torch.stack([model.preprocess(scan), onnx.preprocess(np.asarray(Image.open(scan).convert("RGB")))])
        assert torch.equal(batch[0], batch[1])
        logits = model.logits(batch, precision="fp32")
        assert (logits - onnx.logits(batch)).abs().max() < ONNX_TOLERANCE
        expected_shape = (2, 64, 64) if model.task == "segmentation" else (2, 3)
        probs = model.probabilities(batch, precision="fp32")
        assert probs.shape == expected_shape and (probs - onnx.probabilities(batch)).abs().max() < ONNX_TOLERANCE
        saved = onnx.save(tmp_path / f"{model.task}-onnx")
        assert [p.name for p in saved.iterdir()] == ["model.onnx"]
        assert_same(busai.load(saved).predict(scan), onnx_pred)
        with pytest.raises(ConfigError) as exc:
            busai.load(result.path, device="cuda")
        assert message(exc) == f"{result.path}: ONNX models run on the CPU here; pass device='cpu' (or load the run folder to use cuda)"


def test_gradcam_follows_supports_gradients(seg_run, cls_run, scan, tmp_path):
    pytest.importorskip("pytorch_grad_cam")
    cls = busai.load(cls_run)
    heat = cls.gradcam(scan)
    assert heat.shape == (*np.asarray(Image.open(scan)).shape[:2], 3) and heat.dtype == np.uint8
    seg = busai.load(seg_run)
    with pytest.raises(ConfigError) as exc:
        seg.gradcam(scan)
    assert message(exc) == f"{seg_run}: Grad-CAM needs a PyTorch classifier (not an ONNX file or a segmenter)"
    pytest.importorskip("onnxruntime")
    onnx = busai.load(cls.export(tmp_path / "cls.onnx").path)
    with pytest.raises(ConfigError) as exc:
        onnx.gradcam(scan)
    assert message(exc) == f"{tmp_path / 'cls.onnx'}: Grad-CAM needs a PyTorch classifier (not an ONNX file or a segmenter)"


def test_busai_predict_command_reads_saved_folders(seg_run, cls_run, scan, tmp_path, cli):
    seg, cls = busai.load(seg_run), busai.load(cls_run)
    expected = busai.predict([seg, cls], scan).to_row()
    seg_dir, cls_dir = seg.save(tmp_path / "seg"), cls.save(tmp_path / "cls")
    code, _, err = cli("predict", scan, "--seg", seg_dir, "--cls", cls_dir, "--out", tmp_path / "out", "--quiet")
    assert code == 0, err
    (row,) = json.loads((tmp_path / "out" / "predictions.json").read_text())
    assert {k: row[k] for k in expected} == expected


# --------------------------------------------------------------------------- inputs
def test_every_input_form_gives_the_same_answer(seg_run, scan):
    model = busai.load(seg_run)
    rgb = np.asarray(Image.open(scan).convert("RGB"))
    grey = rgb[..., 0]
    expected = model.predict(scan)
    for same in (str(scan), Image.open(scan), rgb, rgb.astype(np.float32) / 255, grey, grey[..., None]):
        assert_same(model.predict(same), expected)
    batch = model.predict([scan, rgb])
    assert len(batch) == 2 and all(isinstance(p, Prediction) for p in batch)
    assert_same(batch[1], expected)
    rgba = Image.fromarray(np.dstack([rgb, np.full(grey.shape, 255, np.uint8)]), mode="RGBA")
    assert_same(model.predict(rgba), expected)  # opaque alpha composited away


@pytest.mark.parametrize(
    ("image", "expected"),
    [
        (np.zeros((8, 8, 4), np.uint8), "image array of shape (8, 8, 4): pass H x W (grey) or H x W x 3 (RGB); drop an alpha channel with x[..., :3]"),
        (np.zeros((2, 8, 8, 3), np.uint8), "image array of shape (2, 8, 8, 3): pass H x W (grey) or H x W x 3 (RGB); drop an alpha channel with x[..., :3]"),
        (np.zeros((0, 8), np.uint8), "image array of shape (0, 8): pass H x W (grey) or H x W x 3 (RGB); drop an alpha channel with x[..., :3]"),
        (np.zeros((8, 8), np.uint16), "image array of dtype uint16: pass uint8 (0-255) or float in [0, 1], e.g. x.astype(np.float32) / x.max()"),
        (np.zeros((8, 8), bool), "image array of dtype bool: pass uint8 (0-255) or float in [0, 1], e.g. x.astype(np.float32) / x.max()"),
        (np.full((8, 8), 2.0), "float image array with values outside [0, 1] (or not finite): scale it into [0, 1], e.g. x / 255 for 0-255 values"),
        (np.full((8, 8), np.nan), "float image array with values outside [0, 1] (or not finite): scale it into [0, 1], e.g. x / 255 for 0-255 values"),
        (torch.zeros(8, 8), "image of type Tensor: pass a file path, a PIL image or a numpy array (H x W or H x W x 3)"),
        (b"png", "image of type bytes: pass a file path, a PIL image or a numpy array (H x W or H x W x 3)"),
    ],
)
def test_bad_images_are_refused_with_the_fix(seg_run, image, expected):
    model = busai.load(seg_run)
    with pytest.raises(DataError) as exc:
        model.predict(image)
    assert message(exc) == expected


def test_unreadable_files_name_the_file(seg_run, tmp_path):
    model = busai.load(seg_run)
    with pytest.raises(DataError) as exc:
        model.predict(tmp_path / "missing.png")
    assert message(exc) == f"{tmp_path / 'missing.png'}: file not found; check the path"
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(DataError) as exc:
        model.predict(tmp_path / "broken.png")
    assert message(exc) == f"{tmp_path / 'broken.png'}: cannot decode image (UnidentifiedImageError); replace or remove the file"


def test_bad_options_and_model_lists(seg_run, cls_run, scan):
    seg = busai.load(seg_run)
    cases = [
        (lambda: seg.predict(scan, threshold=1.5), "threshold=1.5: must be between 0 and 1 (exclusive)"),
        (lambda: seg.predict(scan, pixel_spacing=-1), "--pixel-spacing -1: give one positive number (mm per pixel) or two (row, column)"),
        (lambda: busai.predict([seg, busai.load(seg_run)], scan), "predict: two segmentation models given; pass at most one segmenter and one classifier"),
        (lambda: busai.predict([], scan), "predict: no model given; load one with busai.load(...)"),
        (lambda: busai.predict([str(seg_run)], scan), "predict: got a str where a model belongs; load one with busai.load(...)"),
    ]
    for call, expected in cases:
        with pytest.raises(ConfigError) as exc:
            call()
        assert message(exc) == expected


# --------------------------------------------------------------------------- bad sources
def test_bad_sources_are_refused_with_the_fix(seg_run, tmp_path):
    cases = [
        (lambda: busai.load("release"), ConfigError, 'load("release"): say which packaged model, task="seg" or task="cls"'),
        (
            lambda: busai.load(seg_run, task="cls"),
            ConfigError,
            f"{seg_run}: is a segmentation model, not classification; pass a classification model or leave task out",
        ),
        (
            lambda: busai.load(tmp_path / "nowhere"),
            CheckpointError,
            f"{tmp_path / 'nowhere'}: not found; pass 'release', a run folder, a saved model folder or an exported .onnx file",
        ),
        (
            lambda: busai.load(tmp_path),
            CheckpointError,
            f"{tmp_path / 'config.json'}: missing; {tmp_path} is not a busai run folder (train one with `busai train`)",
        ),
        (lambda: busai.load(seg_run, device="gpu"), ConfigError, "device 'gpu': unknown; choose auto, cpu, cuda or cuda:N"),
        (lambda: busai.load(seg_run, task="detection"), ConfigError, None),
    ]
    for call, kind, expected in cases:
        with pytest.raises(kind) as exc:
            call()
        if expected is not None:
            assert message(exc) == expected


def test_save_never_replaces_a_folder_unasked(seg_run, tmp_path, scan):
    model = busai.load(seg_run)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(CheckpointError) as exc:
        model.save(tmp_path / "mine")
    assert message(exc) == f"{tmp_path / 'mine'}: already exists; choose a new folder or pass overwrite=True"
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    model.save(tmp_path / "mine", overwrite=True)
    assert not (tmp_path / "mine" / "notes.txt").exists()
    assert_same(busai.load(tmp_path / "mine").predict(scan), model.predict(scan))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no temporary folder left behind


def test_model_describes_itself(seg_run):
    model = busai.load(seg_run)
    assert isinstance(model, Model) and isinstance(model.network, torch.nn.Module)
    assert model.preprocessing == {"image_size": 64, "mean": model.preprocessing["mean"], "std": model.preprocessing["std"], "color": "rgb"}
    assert len(model.preprocessing["mean"]) == 3
    assert repr(model) == f"Model(segmentation, efficientnet-lite0:unet, backend=torch, device=cpu, source={str(seg_run)!r})"
    assert model.config["model_spec"] == model.spec


# --------------------------------------------------------------------------- global state
def test_library_calls_leave_torch_threads_alone_unless_asked(monkeypatch, seg_run, scan):
    from busai.device import cores
    from busai.runs import ALL_CORES_ENV, best_threads

    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        monkeypatch.delenv(ALL_CORES_ENV, raising=False)
        best_threads()
        busai.load(seg_run).predict(scan)
        assert torch.get_num_threads() == 1
        monkeypatch.setenv(ALL_CORES_ENV, "1")
        best_threads()
        import os

        assert torch.get_num_threads() == max(1, len(os.sched_getaffinity(0)))
        torch.set_num_threads(cores() + 1)  # neither the default nor busai's count, so the reset is seen
        busai.load(seg_run)  # loading a PyTorch model applies the asked count once torch is there
        assert torch.get_num_threads() == cores()
    finally:
        torch.set_num_threads(before)


def test_the_busai_thread_count_waits_for_torch_instead_of_importing_it():
    """A prediction through ONNX Runtime must not pay torch's import to set torch's threads (a fresh
    interpreter); that loading a PyTorch model then sets them is checked in the test above."""
    import os
    import subprocess
    import sys

    from busai.runs import ALL_CORES_ENV

    code = "import sys\nfrom busai.device import best_threads\nbest_threads()\nassert 'torch' not in sys.modules, 'best_threads imported torch'\n"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, ALL_CORES_ENV: "1"})
    assert done.returncode == 0, done.stderr


def test_release_models_predicting_an_array_change_no_global_state(monkeypatch, synthetic_dir):
    from busai.runs import ALL_CORES_ENV

    monkeypatch.delenv(ALL_CORES_ENV, raising=False)
    array = np.asarray(Image.open(synthetic_dir / "benign" / "benign (1).png").convert("RGB"))
    import os

    before = torch.get_num_threads()
    chosen = len(os.sched_getaffinity(0)) + 1  # neither torch's default nor busai's all-cores count, so a reset is seen
    try:
        torch.set_num_threads(chosen)
        seg, cls = busai.load("release", task="seg"), busai.load("release", task="cls")
        result = busai.predict([seg, cls], array)
        assert result.input_check == "ok" and result.mask is not None and result.label is not None  # both networks ran
        assert torch.get_num_threads() == chosen
    finally:
        torch.set_num_threads(before)


def test_the_command_asks_for_all_cores_and_file_only_figures(monkeypatch, cli):
    for name in ("BUSAI_ALL_CORES", "MPLBACKEND"):
        monkeypatch.setenv(name, "placeholder")  # recorded, so the test restores the environment
        monkeypatch.delenv(name)
    code, _, _ = cli("models", "--task", "cls")
    import os

    assert code == 0 and (os.environ["BUSAI_ALL_CORES"], os.environ["MPLBACKEND"]) == ("1", "Agg")


def test_drawing_a_figure_selects_no_matplotlib_backend(tmp_path):
    code = (
        "import sys, numpy as np\n"
        "from busai.figures import confusion_matrix\n"
        f"confusion_matrix(np.eye(3, dtype=int), {str(tmp_path / 'cm.png')!r}, 'title')\n"
        "print('matplotlib.pyplot' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split() == ["False"]
    assert Image.open(tmp_path / "cm.png").size[0] > 100


# --------------------------------------------------------------------------- devices
@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without a GPU")
def test_cuda_without_a_gpu_is_refused(seg_run):
    for device, expected in (
        ("cuda", "device 'cuda': no CUDA GPU is visible; use --device cpu or auto"),
        ("cuda:1", "device 'cuda:1': no CUDA GPU is visible; use device='cpu' or 'auto'"),
    ):
        with pytest.raises(ConfigError) as exc:
            busai.load(seg_run, device=device)
        assert message(exc) == expected


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_gpu_model_predicts_like_the_cpu_one_and_saves(scan, tmp_path):
    cpu, gpu = busai.load("release", task="seg", device="cpu"), busai.load("release", task="seg", device="cuda")
    assert next(gpu.network.parameters()).is_cuda
    a, b = cpu.predict(scan, precision="fp32"), gpu.predict(scan, precision="fp32")
    assert np.abs(a.lesion_probability - b.lesion_probability).max() < 1e-2  # cuDNN may use TF32 convolutions
    assert_same(busai.load(gpu.save(tmp_path / "seg"), device="cpu").predict(scan, precision="fp32"), a)


# --------------------------------------------------------------------------- the one object
def test_model_evaluates_and_calibrates(cls_run, synthetic_dir, tiny_runs, tmp_path, monkeypatch):
    """busai.Model's evaluate and calibrate are the library's evaluate_model and fit_calibration, on the model's own source."""
    import shutil

    monkeypatch.setattr(busai.calibration, "MIN_IMAGES", 1)  # the synthetic split has a handful of validation images
    from busai.calibration import fit_calibration
    from busai.evaluation import evaluate_model

    run = shutil.copytree(cls_run, tmp_path / "cls")
    model = busai.load(run, device="cpu")
    options = dict(splits_file=tiny_runs / "splits.json", split_names=["val"], n_boot=10, figures=False)
    scores = model.evaluate(synthetic_dir, out=tmp_path / "a", **options)
    assert scores == evaluate_model(run, synthetic_dir, out=tmp_path / "b", **options)
    assert model.temperature == 1.0
    # The tiny run's fit hits the temperature search bound: refused through the Model exactly as through the library.
    with pytest.raises(ConfigError, match="stopped at its bound") as via_model:
        model.calibrate(synthetic_dir, tiny_runs / "splits.json")
    with pytest.raises(ConfigError) as via_library:
        fit_calibration(run, synthetic_dir, tiny_runs / "splits.json")
    assert str(via_model.value) == str(via_library.value)
    assert model.temperature == 1.0 and not (run / "calibration.json").exists()
