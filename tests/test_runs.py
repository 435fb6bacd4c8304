"""busai.runs: the folder kinds, their file names, and the one model resolver every caller uses."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

import busai
from busai import runs
from busai.errors import CheckpointError
from busai.runs import RunFolder


def _folder(root: Path, *names: str, spec: dict | None = None) -> Path:
    root.mkdir(parents=True)
    for name in names:
        (root / name).write_bytes(b"")
    if spec is not None:
        (root / runs.CONFIG).write_text(json.dumps({"model_spec": spec}))
    return root


def test_folder_kinds(tmp_path):
    run = _folder(tmp_path / "run", runs.BEST_CHECKPOINT, runs.HISTORY, spec={"task": "segmentation"})
    release = _folder(tmp_path / "release", runs.WEIGHTS, spec={"task": "classification"})
    onnx_dir = _folder(tmp_path / "saved_onnx", runs.ONNX_FILE)
    mt = _folder(tmp_path / "mt", runs.BEST_CHECKPOINT, spec={"task": "multitask"})
    assert RunFolder(run).kind == "run" and RunFolder(run).weights == run / "checkpoint_best.safetensors"
    assert RunFolder(release).kind == "release" and RunFolder(release).weights == release / "model.safetensors"
    assert RunFolder(onnx_dir).kind == "onnx" and RunFolder(onnx_dir).onnx_file == onnx_dir / "model.onnx"
    assert RunFolder(tmp_path / "x.onnx").kind == "onnx"
    assert RunFolder(mt).multitask and RunFolder(mt).tasks() == ("segmentation", "classification")
    assert RunFolder(mt).scores_dir("classification") == mt / "classification"
    assert RunFolder(run).scores_dir("segmentation") == run
    # a run folder that also holds model.safetensors (e.g. copied next to it) is still a run: its best checkpoint loads
    (run / runs.WEIGHTS).write_bytes(b"")
    assert RunFolder(run).kind == "run"


def test_missing_sources_name_what_the_caller_accepts(tmp_path):
    with pytest.raises(CheckpointError, match=r"nowhere: not found; pass a run folder"):
        runs.resolve_model(tmp_path / "nowhere", "segmentation")
    with pytest.raises(CheckpointError, match=r"nowhere: my words"):
        runs.resolve_model(tmp_path / "nowhere", "segmentation", not_found="my words")


def test_every_caller_gets_the_same_model(seg_run, tmp_path):
    """busai.load, --seg (release.resolve_model), evaluate's resolver and a saved copy all load the same weights."""
    import torch

    from busai.evaluation import resolve_models
    from busai.release import resolve_model

    saved = busai.load(seg_run, device="cpu").save(tmp_path / "saved")
    models = [
        busai.load(seg_run, device="cpu").loaded,
        resolve_model(seg_run, "seg"),
        resolve_models(seg_run)[0][0],
        runs.resolve_model(saved),
    ]
    first = models[0].module.state_dict()
    for loaded in models[1:]:
        assert loaded.preprocessing == models[0].preprocessing
        assert all(torch.equal(first[k], v) for k, v in loaded.module.state_dict().items())
    assert resolve_models(saved)[0][2] is None  # a saved folder is not a run: its scores need --out


def test_a_loaded_model_is_the_trained_one_in_its_own_dtypes(seg_run, tmp_path):
    """Loading builds a storage-less skeleton and takes the file's tensors: the outputs are the trained
    network's, an fp16 file comes back float32 with integer counters still integers, and nothing stays on meta."""
    import torch
    from safetensors.torch import load_file, save_file

    from busai.models import build

    loaded = runs.resolve_model(seg_run, "seg")
    tensors = list(loaded.module.state_dict().values())
    assert not any(t.is_meta for t in tensors) and all(p.requires_grad for p in loaded.module.parameters())
    stored = load_file(str(RunFolder(seg_run).weights))
    reference = build("seg", loaded.spec["name"], encoder=loaded.spec["encoder"], weights="none").module
    reference.load_state_dict(stored)
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(loaded.module(x), reference.eval()(x))
    half = tmp_path / "half"
    busai.load(seg_run, device="cpu").save(half)  # a release-style folder, whose weights become fp16 below
    save_file({k: v.half() if v.is_floating_point() else v for k, v in stored.items()}, str(RunFolder(half).weights))
    again = runs.resolve_model(half).module.state_dict()
    counters = [k for k, v in stored.items() if not v.is_floating_point()]
    assert counters and all(again[k].dtype == stored[k].dtype for k in counters)
    assert all(again[k].dtype == torch.float32 for k, v in stored.items() if v.is_floating_point())


def test_a_tensor_outside_the_state_dict_cannot_be_loaded_from_a_skeleton(tmp_path):
    import torch
    from safetensors.torch import save_file

    class Scaled(torch.nn.Linear):
        def __init__(self):
            super().__init__(2, 2)
            self.register_buffer("scale", torch.ones(2), persistent=False)

    save_file(Scaled().state_dict(), str(tmp_path / "w.safetensors"))
    runs.load_weights_into(Scaled(), tmp_path / "w.safetensors")  # an initialised module takes it as it is
    with torch.device("meta"):
        skeleton = Scaled()
    with pytest.raises(RuntimeError, match="Scaled: scale not in its state dict"):
        runs.load_weights_into(skeleton, tmp_path / "w.safetensors")


def test_preprocessing_round_trips_through_config_and_metadata(seg_run):
    from busai.preprocessing import Preprocessing

    loaded = busai.load(seg_run, device="cpu").loaded
    stored = json.loads((seg_run / runs.CONFIG).read_text())["preprocessing"]
    assert Preprocessing.from_dict(stored) == loaded.preprocessing
    assert loaded.preprocessing.to_dict() == stored
    assert Preprocessing.from_dict({"image_size": 64, "mean": [0, 0, 0], "std": [1, 1, 1]}).color == "rgb"  # written before colour modes


# Hugging Face hub file names (models/) and an example in an error message (data/splits.py) are not
# model-folder files; the study modules leave the package.
_LITERAL_EXEMPT = {"runs.py", "models/registry.py", "models/weights.py", "data/splits.py", "study_report.py", "paper.py"}


def test_model_folder_file_names_live_in_runs():
    """Every other module names a model folder's files through busai.runs' constants."""
    src = Path(runs.__file__).parent
    names = {v for k, v in vars(runs).items() if k.isupper() and isinstance(v, str) and v.count(".") == 1 and "/" not in v}
    assert {"config.json", "checkpoint_best.safetensors", "metrics.json", "history.csv", "fit.json"} <= names
    found = []
    for path in src.rglob("*.py"):
        rel = path.relative_to(src).as_posix()
        if rel in _LITERAL_EXEMPT:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Constant) and node.value in names:
                found.append(f"{rel}:{node.lineno} {node.value!r}")
    assert not found, found
