"""INT8 export: calibrated on training images only, parity with PyTorch fp32, int8 kernels, CLI and errors."""

import json

import numpy as np
import pytest
import torch

from busai.data.splits import read_splits
from busai.errors import CheckpointError, ConfigError
from busai.export import load_onnx
from busai.inference import predict_image
from busai.quantize import (
    INT8_TOLERANCE,
    calibration_records,
    calibration_source,
    kernel_profile,
    quantize_int8,
)
from busai.release import resolve_model


@pytest.fixture(scope="module")
def seg_int8(seg_run, tmp_path_factory):
    loaded = resolve_model(seg_run, "seg")
    data, splits = calibration_source(loaded, None, None)  # the run's own data and split file
    calibration, parity = calibration_records(data, splits, count=8)
    path = tmp_path_factory.mktemp("int8") / "seg_int8.onnx"
    return loaded, quantize_int8(loaded, path, calibration, parity), splits


def test_calibration_uses_training_images_only(seg_run):
    loaded = resolve_model(seg_run, "seg")
    data, splits = calibration_source(loaded, None, None)
    train = set(read_splits(splits)["train"])
    calibration, parity = calibration_records(data, splits, count=5, seed=3)
    assert len(calibration) == 5 and {r.key for r in calibration} <= train
    assert {r.key for r in parity} <= train and not {r.key for r in parity} & {r.key for r in calibration}
    again, _ = calibration_records(data, splits, count=5, seed=3)
    assert [r.key for r in again] == [r.key for r in calibration]  # seeded
    everything, held = calibration_records(data, splits, count=10_000)
    assert len(everything) == len(train) and held == everything[: len(held)]  # no other image: checked on the calibration ones


def test_int8_file_matches_fp32_and_runs_int8_kernels(seg_int8):
    loaded, result, _ = seg_int8
    assert result.ok and result.mean_abs_probability_diff <= INT8_TOLERANCE
    assert result.calibration_images == 8 and result.settings["format"] == "QDQ"
    int8 = resolve_model(result.path, "seg")  # an ordinary busai ONNX file: predict / serve take it as it is
    assert (int8.spec, int8.image_size, int8.mean, int8.std) == (loaded.spec, loaded.image_size, loaded.mean, loaded.std)
    meta = json.loads(int8.module.metadata["busai"])["quantization"]
    assert meta["type"] == "int8" and meta["calibration_images"] == 8
    image = (np.random.default_rng(0).random((50, 70, 3)) * 255).astype(np.uint8)
    got, expected = predict_image(int8, image), predict_image(loaded, image, precision="fp32")
    assert got.shape == expected.shape == (64, 64)
    assert float((got - expected).abs().mean()) <= INT8_TOLERANCE
    share = kernel_profile(result.path, np.zeros((1, 3, 64, 64), np.float32))
    assert share.get("QLinearConv", 0) > 0 and "Conv" not in share  # every convolution ran as an int8 kernel
    assert abs(sum(share.values()) - 1) < 0.01


def test_quantize_refuses_onnx_and_empty_calibration(seg_int8, tmp_path):
    loaded, result, _ = seg_int8
    with pytest.raises(CheckpointError, match="already an ONNX file; quantize from a run folder"):
        quantize_int8(load_onnx(result.path), tmp_path / "x.onnx", [object()], [])
    with pytest.raises(ConfigError, match="no calibration images"):
        quantize_int8(loaded, tmp_path / "x.onnx", [], [])
    assert not (tmp_path / "x.onnx").exists()


def test_cli_quantize(cls_run, synthetic_dir, tiny_runs, tmp_path, cli):
    """The command's own words, with calibration data named on the command line (its --json output is
    checked by the --keep-fp32 auto test; a segmenter is quantized by the fixtures above)."""
    out = tmp_path / "cls.onnx"
    args = ("--calib-images", "4", "--calib-data", synthetic_dir, "--calib-splits", tiny_runs / "splits.json", "--fixed-size", "--out", out)
    code, stdout, err = cli("export", cls_run, "--quantize", "int8", *args)
    assert f"{out}: classification, int8 (QDQ), calibrated on 4 training images of {tiny_runs / 'splits.json'}" in stdout, stdout
    # A one-epoch random-init classifier moves further under int8 than a trained one; the exit code says so.
    assert code == (0 if stdout.rstrip().endswith(" ok") else 1), err
    loaded = resolve_model(out, "cls")
    meta = json.loads(loaded.module.metadata["busai"])
    assert meta["quantization"]["calibration_images"] == 4 and meta["dynamic_size"] is False
    probs = predict_image(loaded, np.zeros((40, 40, 3), np.uint8))
    assert probs.shape == (3,) and torch.isclose(probs.sum(), torch.tensor(1.0), atol=1e-4)


def test_cli_quantize_errors(seg_run, tmp_path, cli):
    cli.fails(
        "export",
        seg_run,
        "--calib-data",
        tmp_path,
        "--out",
        tmp_path / "a.onnx",
        expect="--calib-data / --calib-splits / --keep-fp32 only apply with --quantize int8",
    )
    cli.fails("export", seg_run, "--quantize", "int8", "--calib-images", "0", "--out", tmp_path / "a.onnx", expect="--calib-images 0: must be at least 1")
    cli.fails(
        "export",
        seg_run,
        "--quantize",
        "int8",
        "--calib-data",
        tmp_path / "nowhere",
        "--out",
        tmp_path / "a.onnx",
        expect="is not here; pass --calib-data DIR --calib-splits FILE",
    )
    assert not (tmp_path / "a.onnx").exists()


def _producers(graph) -> dict:
    return {output: node for node in graph.node for output in node.output}


def test_shape_nodes_are_the_shape_arithmetic():
    """A hand-built graph: padding computed from Shape (as EfficientNet's "same" padding is) -> Pad -> Relu."""
    from onnx import TensorProto, helper

    from busai.quantize import shape_nodes

    const = helper.make_tensor("two", TensorProto.INT64, [1], [2])
    nodes = [
        helper.make_node("Shape", ["image"], ["shape"], name="shape"),
        helper.make_node("Gather", ["shape", "two"], ["height"], name="height"),
        helper.make_node("Concat", ["height", "height"], ["half"], name="pads_half", axis=0),
        helper.make_node("Concat", ["half", "half"], ["pads"], name="pads", axis=0),
        helper.make_node("Relu", ["image"], ["relu"], name="relu"),
        helper.make_node("Pad", ["relu", "pads"], ["padded"], name="pad"),
        helper.make_node("Add", ["padded", "padded"], ["logits"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 1, 4, 4])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, None)],
        [const],
    )
    assert shape_nodes(helper.make_model(graph)) == ["shape", "height", "pads_half", "pads"]


def test_int8_leaves_shape_arithmetic_float(seg_int8):
    """Rounding padding amounts moved feature-map sizes: no Quantize/DequantizeLinear may touch a shape tensor."""
    import onnx

    from busai.quantize import shape_nodes

    _, result, _ = seg_int8
    graph = onnx.load(result.path).graph
    names = set(shape_nodes(onnx.load(result.path)))
    assert names  # the EfficientNet's "same" padding is computed from Shape at run time
    producers = _producers(graph)
    quantized_inputs = [producers.get(node.input[0]) for node in graph.node if node.op_type == "QuantizeLinear"]
    assert not [node.name for node in quantized_inputs if node is not None and node.name in names]
    assert json.loads(resolve_model(result.path, "seg").module.metadata["busai"])["quantization"]["shape_nodes_fp32"] == len(names)


@pytest.fixture(scope="module")
def kept3(seg_run, tmp_path_factory):
    """quantize_int8 keeping its 3 most sensitive nodes fp32, and what its sensitivity pass saw (one
    export, calibration and sensitivity pass for the two tests below)."""
    import onnx

    import busai.quantize as Q

    seen = {}
    real = Q.sensitivity

    def spy(float_path, qdq_path, loaded, records, skip=()):
        ranking = real(float_path, qdq_path, loaded, records, skip)
        convs = [node.name for node in onnx.load(str(float_path)).graph.node if node.op_type == "Conv"]
        seen.update(ranking=ranking, skip=list(skip), convs=convs)
        return ranking

    loaded = resolve_model(seg_run, "seg")
    data, splits = calibration_source(loaded, None, None)
    calibration, parity = calibration_records(data, splits, count=4)
    patch = pytest.MonkeyPatch()
    patch.setattr(Q, "sensitivity", spy)
    try:
        result = quantize_int8(loaded, tmp_path_factory.mktemp("kept") / "kept.onnx", calibration, parity, keep_fp32=3)
    finally:
        patch.undo()
    return result, seen


def test_sensitivity_ranks_every_quantized_node(kept3):
    result, seen = kept3
    names = [row["node"] for row in seen["ranking"]]
    assert len(names) == len(set(names))  # one error per node
    assert set(seen["convs"]) <= set(names)  # every convolution is quantized, so every one is scored
    assert not set(names) & set(seen["skip"])
    errors = [row["sqnr_db"] for row in seen["ranking"]]
    assert errors == sorted(errors)  # worst (lowest signal-to-noise) first
    assert all(np.isfinite(errors))
    assert result.sensitivity == seen["ranking"][: len(result.sensitivity)]


def test_keep_fp32_leaves_the_worst_nodes_float(kept3):
    import onnx

    result, _ = kept3
    assert result.kept_fp32 == [row["node"] for row in result.sensitivity[:3]]
    graph = onnx.load(result.path).graph
    producers = _producers(graph)
    initializers = {tensor.name for tensor in graph.initializer}
    for name in result.kept_fp32:
        node = next(node for node in graph.node if node.name == name)
        assert node.op_type in ("Conv", "Add", "Mul", "Concat", "Resize", "Clip", "Relu", "Pad", "Gemm", "Sigmoid")
        # Its weights are the float initializers themselves, not dequantized int8 ones.
        weights = [i for i in node.input[1:] if i in initializers or (producers.get(i) and producers[i].op_type == "DequantizeLinear")]
        assert all(i in initializers for i in weights), (name, weights)
    meta = json.loads(resolve_model(result.path, "seg").module.metadata["busai"])["quantization"]
    assert meta["kept_fp32"] == result.kept_fp32 and meta["keep_fp32"] == 3 and meta["sensitivity"][0] == result.sensitivity[0]
    got = predict_image(resolve_model(result.path, "seg"), np.zeros((40, 50, 3), np.uint8))
    assert got.shape == (64, 64) and torch.isfinite(got).all()


def test_keep_fp32_auto_records_each_k(seg_run, tmp_path, cli, monkeypatch):
    import onnxruntime.quantization

    calls = []
    real = onnxruntime.quantization.quantize_static
    monkeypatch.setattr(onnxruntime.quantization, "quantize_static", lambda *a, **k: calls.append(k["nodes_to_exclude"]) or real(*a, **k))
    code, stdout, err = cli("export", seg_run, "--quantize", "int8", "--calib-images", "4", "--keep-fp32", "auto", "--out", tmp_path / "auto.onnx", "--json")
    result = json.loads(stdout)
    steps = result["selection"]
    assert steps and steps[0]["keep_fp32"] == 0 and [s["keep_fp32"] for s in steps] == sorted(s["keep_fp32"] for s in steps)
    assert {"drop", "ms_per_image", "speedup_vs_onnxruntime_fp32"} <= set(steps[0])
    chosen = len(result["kept_fp32"])
    assert chosen in [s["keep_fp32"] for s in steps]
    # Stopped at the first K within the target, else took the smallest drop.
    within = [s for s in steps if s["drop"] <= 0.01]
    assert chosen == (within[0]["keep_fp32"] if within else min(steps, key=lambda s: s["drop"])["keep_fp32"])
    # One quantization per K tried: K = 0 is the sensitivity pass's graph, the chosen K is copied from its try.
    assert len(calls) == len(steps) and len({tuple(sorted(c)) for c in calls}) == len(calls)
    assert code == (0 if result["ok"] else 1), err


def test_keep_fp32_errors(seg_run, tmp_path, cli):
    cli.fails("export", seg_run, "--quantize", "int8", "--keep-fp32", "most", "--out", tmp_path / "a.onnx", expect="--keep-fp32 most: give auto, or how many")
    cli.fails("export", seg_run, "--quantize", "int8", "--keep-fp32", "-2", "--out", tmp_path / "a.onnx", expect="--keep-fp32 -2: give auto")
    cli.fails("export", seg_run, "--keep-fp32", "auto", "--out", tmp_path / "a.onnx", expect="--keep-fp32 only apply with --quantize int8")
    assert not (tmp_path / "a.onnx").exists()
