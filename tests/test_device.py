"""`--device auto|cpu|cuda` on loading, predict, evaluate and serve; ONNX Runtime's provider choice."""

import pytest
import torch

from busai.errors import ConfigError
from busai.export import export_onnx, load_onnx, onnx_providers
from busai.release import resolve_model
from busai.runs import load_model

NO_GPU = "device 'cuda': no CUDA GPU is visible; use --device cpu or auto"
needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error a machine without a GPU gives")


def device_of(loaded):
    return {p.device for p in loaded.module.parameters()}


def test_auto_loads_onto_the_cpu_here(seg_run):
    expected = torch.device("cuda", 0) if torch.cuda.is_available() else torch.device("cpu")
    assert device_of(load_model(seg_run, device="auto")) == {expected}
    assert device_of(resolve_model(seg_run, "seg", device="cpu")) == {torch.device("cpu")}


@needs_no_gpu
def test_cuda_without_a_gpu_is_one_clear_error(seg_run, cls_run, synthetic_dir, tiny_runs, tmp_path, cli):
    with pytest.raises(ConfigError, match=NO_GPU):
        load_model(seg_run, device="cuda")
    with pytest.raises(ConfigError, match=NO_GPU):
        resolve_model("release", "seg", device="cuda")
    cli.fails("predict", synthetic_dir / "benign", "--seg", seg_run, "--cls", cls_run, "--out", tmp_path / "out", "--device", "cuda", expect=NO_GPU)
    assert not (tmp_path / "out" / "predictions.json").exists()
    cli.fails("evaluate", seg_run, "--data", synthetic_dir, "--splits", tiny_runs / "splits.json", "--split", "val", "--device", "cuda", expect=NO_GPU)
    from busai.serve import create_app

    with pytest.raises(ConfigError, match=NO_GPU):
        create_app(seg_run, cls_run, device="cuda")


def test_predict_and_evaluate_take_device(seg_run, cls_run, synthetic_dir, tiny_runs, tmp_path, cli):
    code, _, err = cli("predict", synthetic_dir / "benign", "--seg", seg_run, "--cls", cls_run, "--out", tmp_path / "out", "--device", "auto", "--quiet")
    assert code == 0, err
    assert (tmp_path / "out" / "predictions.json").is_file()
    code, _, err = cli(
        "evaluate",
        seg_run,
        "--data",
        synthetic_dir,
        "--splits",
        tiny_runs / "splits.json",
        "--split",
        "val",
        "--device",
        "cpu",
        "--n-boot",
        "10",
        "--no-figures",
        "--json",
    )
    assert code == 0, err


def test_onnx_providers(monkeypatch, seg_run, tmp_path):
    import onnxruntime as ort

    assert onnx_providers("cpu") == ["CPUExecutionProvider"]
    path = export_onnx(load_model(seg_run), tmp_path / "seg.onnx", dynamic_size=False).path
    assert load_onnx(path, "auto").module.session.get_providers() == onnx_providers("auto")
    # As on a machine with a GPU: CUDA first when this onnxruntime has the provider, else CPU for auto, an error for cuda.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CUDAExecutionProvider", "CPUExecutionProvider"])
    assert onnx_providers("cuda") == onnx_providers("auto") == ["CUDAExecutionProvider", "CPUExecutionProvider"]
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert onnx_providers("auto") == ["CPUExecutionProvider"]
    with pytest.raises(ConfigError, match="--device cuda: this onnxruntime has no CUDA provider; pip install onnxruntime-gpu, or use --device cpu"):
        onnx_providers("cuda")
