"""ONNX export: parity with PyTorch, dynamic axes, self-describing files, CLI and errors."""

import json

import numpy as np
import pytest
import torch

from busai.errors import CheckpointError
from busai.export import OnnxModule, export_onnx, load_onnx
from busai.inference import predict_image
from busai.release import resolve_model


def test_segmentation_export_parity_and_dynamic_axes(seg_onnx):
    loaded, result = seg_onnx
    assert result.ok and result.max_abs_diff < 1e-3
    assert result.dynamic_size  # a U-Net takes any multiple of 32
    module = OnnxModule(result.path)
    for batch, size in ((1, 64), (3, 96)):
        x = torch.randn(batch, 3, size, size, generator=torch.Generator().manual_seed(size))
        with torch.inference_mode():
            expected = loaded.module.float()(x.contiguous())
        got = module(x)
        assert got.shape == (batch, 1, size, size)
        assert (got - expected).abs().max() < 1e-3


def test_exported_file_describes_itself_and_predicts_like_torch(seg_onnx, cls_run, tmp_path):
    loaded, result = seg_onnx
    from_file = resolve_model(result.path, "seg")
    assert isinstance(from_file.module, OnnxModule)
    assert (from_file.spec, from_file.image_size, from_file.mean, from_file.std) == (loaded.spec, loaded.image_size, loaded.mean, loaded.std)
    image = (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)
    assert torch.allclose(predict_image(from_file, image), predict_image(loaded, image, precision="fp32"), atol=1e-4)

    cls = resolve_model(cls_run, "cls")
    cls_result = export_onnx(cls, tmp_path / "cls.onnx")
    assert cls_result.ok and cls_result.task == "classification"
    assert OnnxModule(cls_result.path)(torch.zeros(4, 3, 64, 64)).shape == (4, 3)
    with pytest.raises(Exception, match="is a classification model"):
        resolve_model(cls_result.path, "seg")
    with pytest.raises(CheckpointError, match="already an ONNX file"):
        export_onnx(from_file, tmp_path / "again.onnx")


def test_cli_export_prints_parity(seg_run, tmp_path, cli):
    out = tmp_path / "model.onnx"
    code, stdout, err = cli("export", seg_run, "--format", "onnx", "--out", out, "--fixed-size")
    assert code == 0, err
    assert "max |difference|" in stdout and "ok" in stdout and "dynamic axes: batch" in stdout
    assert load_onnx(out).task == "segmentation"
    code, stdout, _ = cli("export", seg_run, "--out", tmp_path / "m2.onnx", "--fixed-size", "--json")
    assert json.loads(stdout)["ok"] is True


def test_cli_exports_a_saved_model_folder_and_names_a_missing_one(seg_run, tmp_path, cli):
    import busai

    model = busai.load(seg_run, device="cpu")
    saved = model.save(tmp_path / "saved")  # model.safetensors, no run checkpoint: loaded through busai.load
    code, _, err = cli("export", saved, "--out", tmp_path / "saved.onnx", "--fixed-size")
    assert code == 0, err
    onnx = busai.load(tmp_path / "saved.onnx")
    batch = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    assert (onnx.logits(batch) - model.logits(batch, precision="fp32")).abs().max() < 1e-3
    missing = tmp_path / "nowhere"
    cli.fails(
        "export",
        missing,
        "--out",
        tmp_path / "x.onnx",
        expect=f"{missing}: not found; pass a run folder (or a saved model folder), or seg / cls for the release model",
    )
    cli.fails(
        "export",
        tmp_path / "saved.onnx",
        "--out",
        tmp_path / "x.onnx",
        expect=f"{tmp_path / 'saved.onnx'}: is already an ONNX file; export from a run folder or a release",
    )
    assert not (tmp_path / "x.onnx").exists()


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_bad_onnx_files(tmp_path, seg_run):
    garbage = tmp_path / "garbage.onnx"
    garbage.write_bytes(b"not a protobuf")
    with pytest.raises(CheckpointError, match="ONNX Runtime cannot load it"):
        load_onnx(garbage)
    with pytest.raises(CheckpointError, match="file not found"):
        load_onnx(tmp_path / "missing.onnx")
    # A valid ONNX graph from elsewhere: no busai metadata, so its preprocessing is unknown.
    plain = tmp_path / "plain.onnx"
    torch.onnx.export(torch.nn.Conv2d(3, 1, 1), (torch.zeros(1, 3, 8, 8),), str(plain), input_names=["image"], output_names=["logits"], dynamo=False)
    with pytest.raises(CheckpointError, match="no busai metadata"):
        load_onnx(plain)


def test_exported_graph_has_batch_norm_folded_into_its_convolutions(seg_onnx):
    """The exporter folds each eval-mode batch norm into the convolution before it (its constant
    folding), so ONNX Runtime never runs one; docs/scale.md says so."""
    import onnx

    loaded, result = seg_onnx
    ops = [node.op_type for node in onnx.load(str(result.path)).graph.node]
    assert "Conv" in ops and "BatchNormalization" not in ops
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in loaded.module.modules())  # there were some to fold
