"""INT8 CPU inference: a model exported to ONNX, then statically quantized by ONNX Runtime (QDQ).

Static quantization fixes every activation's int8 range ahead of time from calibration images,
which must be training images only: ranges fitted on validation or test images would tune the
file to the images it is later scored on. :func:`calibration_records` therefore reads the
``train`` list of a split file, never another one.

The recipe is ONNX Runtime's own CPU advice (``quantize_static``'s documentation): QDQ format,
uint8 activations and int8 per-channel weights, no range reduction on CPUs with VNNI (without it,
int8 products may saturate, so ``reduce_range`` is turned on). ONNX Runtime fuses each
DequantizeLinear -> Conv -> QuantizeLinear group into one integer kernel when it loads the file;
:func:`kernel_profile` says which kernels actually ran.

Two things stay in fp32 on purpose. The shape arithmetic of the graph (the "same" padding of
EfficientNet's convolutions is computed from ``Shape`` at run time) is never quantized: rounding
it moves padding and feature-map sizes, not just values (:func:`shape_nodes`). And with
``keep_fp32`` the layers that tolerate int8 least stay float: :func:`sensitivity` ranks every
quantized node by the signal-to-quantization-noise ratio of the tensors it reads and writes
(ONNX Runtime's ``qdq_loss_debug``) on a few calibration images, and the worst ``K`` are
excluded; ``"auto"`` grows ``K`` until the Dice / accuracy drop on other *training* images is
within :data:`MAX_DROP` (validation and test images never choose ``K``). Calibration runs once
(ONNX Runtime's calibration cache); each ``K`` only re-quantizes.

The int8 file is an ordinary busai ONNX file (``busai predict --seg FILE.onnx`` runs it) whose
metadata also records how it was calibrated.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch

from busai.config import QUANTIZE_CALIB_IMAGES
from busai.errors import CheckpointError, ConfigError
from busai.backends import LoadedModel
from busai.outputs import atomic_path

QUANTIZE_CHOICES = ("int8",)
CALIBRATION_IMAGES = QUANTIZE_CALIB_IMAGES  # kept for callers
PARITY_IMAGES = 16
# Mean |probability difference| between the int8 file and PyTorch fp32 on held-back training images.
# A correctly calibrated file stays far below it; a broken one (wrong ranges, saturated products)
# moves probabilities by tenths.
INT8_TOLERANCE = 0.05
# --keep-fp32 auto: the largest Dice (segmentation) or accuracy (classification) drop from fp32
# on held-out training images at which the search stops (issue 33's target).
MAX_DROP = 0.01
SELECTION_IMAGES = 32  # held-out training images that choose K for --keep-fp32 auto
SENSITIVITY_IMAGES = 4  # calibration images the per-node error analysis runs on
# ReLU / ReLU6 are folded into the QuantizeLinear range of the node before them: nothing to keep
# fp32, and excluding them on their own (tried: 8 of them on the release models) broke the file.
FOLDED_ACTIVATIONS = ("Relu", "Clip")
SENSITIVITY_SHOWN = 20  # worst nodes recorded in the file's metadata


@dataclass
class Int8Result:
    path: str
    task: str
    calibration_images: int
    parity_images: int
    mean_abs_probability_diff: float
    max_abs_probability_diff: float
    tolerance: float
    settings: dict = field(default_factory=dict)
    kept_fp32: list = field(default_factory=list)  # quantizable nodes left in fp32 (--keep-fp32), worst first
    sensitivity: list = field(default_factory=list)  # the most sensitive nodes: {node, op, sqnr_db}
    selection: list = field(default_factory=list)  # --keep-fp32 auto: each K tried, its held-out drop and speed

    @property
    def ok(self) -> bool:
        return self.mean_abs_probability_diff <= self.tolerance

    def to_dict(self) -> dict:
        return {**asdict(self), "ok": self.ok}


def cpu_has_vnni() -> bool:
    """Whether this CPU has an 8-bit dot-product instruction (AVX512-VNNI, AVX-VNNI or AMX)."""
    try:
        flags = next(line for line in Path("/proc/cpuinfo").read_text().splitlines() if line.startswith("flags")).split()
    except (OSError, StopIteration):
        return False  # unknown: the safe recipe (reduced range) costs a little accuracy, never correctness
    return any(flag in flags for flag in ("avx512_vnni", "avx_vnni", "amx_int8"))


def parse_keep_fp32(value) -> str | int:
    """``--keep-fp32``: ``"auto"`` or a number of nodes (0 or more)."""
    text = str(value).strip().lower()
    if text == "auto":
        return "auto"
    if text.isdigit():
        return int(text)
    raise ConfigError(f"--keep-fp32 {value}: give auto, or how many of the most sensitive layers stay fp32 (0 or more)")


def calibration_records(data_dir, splits_file: str | Path, *, count: int = CALIBRATION_IMAGES, seed: int = 0, held_out: int = PARITY_IMAGES):
    """(calibration, held-out) records: up to ``count`` training images drawn with ``seed``, and up to
    ``held_out`` other training images to check the result on (the calibration ones when
    the split has no others)."""
    from busai.data.splits import load_split_records

    if count < 1:
        raise ConfigError(f"--calib-images {count}: must be at least 1")
    records = load_split_records(data_dir, splits_file, "train")
    if not records:
        raise ConfigError(f"{splits_file}: its train split is empty; calibration uses training images only")
    order = np.random.default_rng(seed).permutation(len(records))
    calibration = [records[i] for i in order[:count]]
    rest = [records[i] for i in order[count : count + held_out]]
    return calibration, rest or calibration[:held_out]


def calibration_source(loaded: LoadedModel, data_dir, splits_file: str | Path | None) -> tuple[list, str]:
    """The datasets (:class:`~busai.data.sources.DataSpec`, one per ``DIR`` / ``NAME=DIR``) and split
    file to calibrate on: those given, else the ones the run trained on."""
    from busai.data.sources import parse_data_specs

    train = loaded.config.get("train") or {}
    specs = parse_data_specs(data_dir or train.get("data"))
    splits_file = splits_file or train.get("splits")
    if not specs or not all(spec.path.is_dir() for spec in specs) or not splits_file or not Path(splits_file).is_file():
        raise ConfigError(
            f"{loaded.source}: --quantize int8 calibrates on training images, and the data folder or split file it trained on "
            f"({', '.join(str(spec.path) for spec in specs) or 'none recorded'}, {splits_file or 'none recorded'}) is not here; "
            "pass --calib-data DIR --calib-splits FILE"
        )
    return specs, str(splits_file)


def _batches(loaded: LoadedModel, records, batch_size: int = 8, key: str = "image"):
    """Normalised (N, 3, S, S) float32 arrays, through the training dataset's own preprocessing
    (``key="mask"`` / ``"label"``: the matching masks or labels)."""
    from busai.data.dataset import BusDataset, ImageCache

    dataset = BusDataset.for_model(records, loaded, cache=ImageCache())  # the model's own colour mode and view
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i][key] for i in range(start, min(start + batch_size, len(dataset)))]
        yield torch.stack(items)


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over the calibration images, one image per call."""

    def __init__(self, loaded: LoadedModel, records, input_name: str):
        self._items = ({input_name: x[None].numpy()} for batch in _batches(loaded, records) for x in batch)

    def get_next(self):
        return next(self._items, None)

    def __iter__(self):  # qdq_loss_debug.collect_activations iterates the reader
        return iter(self.get_next, None)


def shape_nodes(model) -> list[str]:
    """Nodes of an ONNX graph that compute sizes from ``Shape`` outputs, not image values.

    A node is on the data path when any input is the graph input or another data-path output;
    ``Shape`` cuts that path (its output is a size, not an activation). A node off the data path
    that reads a ``Shape`` output (directly or through another such node) computes a padding, a
    reshape target or a resize size, which quantization would round.
    """
    data = {value.name for value in model.graph.input}
    sizes: set[str] = set()
    found = []
    for node in model.graph.node:  # ONNX keeps nodes in topological order
        if node.op_type == "Shape":
            sizes.update(node.output)
            found.append(node.name)
        elif any(name in data for name in node.input):
            data.update(node.output)
        elif any(name in sizes for name in node.input):
            sizes.update(node.output)
            found.append(node.name)
    return found


def quantize_int8(
    loaded: LoadedModel,
    out: str | Path,
    calibration,
    parity_records,
    *,
    per_channel: bool = True,
    dynamic_size: bool = False,
    provenance: dict | None = None,
    keep_fp32: str | int = 0,
    selection_records=None,
) -> Int8Result:
    """Export ``loaded`` to ONNX, quantize it to int8 calibrated on ``calibration`` records, write ``out``.

    ``parity_records`` (training images too) measure how far int8 probabilities move from PyTorch fp32.
    ``keep_fp32``: how many of the most sensitive nodes stay fp32, or ``"auto"``: the fewest whose
    Dice / accuracy drop on ``selection_records`` (held-out training images; default
    ``parity_records``) is within :data:`MAX_DROP`.
    The file is written to a temporary name and renamed, so an existing ``out`` survives a failure.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from busai.export import export_onnx, load_onnx

    keep_fp32 = parse_keep_fp32(keep_fp32)
    if loaded.backend != "torch":
        raise CheckpointError(f"{loaded.source}: is already an ONNX file; quantize from a run folder or the release model")
    if not calibration:
        raise ConfigError("no calibration images; pass --calib-data DIR --calib-splits FILE with a non-empty train split")
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    vnni = cpu_has_vnni()
    settings = {
        "format": "QDQ",
        "activations": "uint8",
        "weights": "int8",
        "per_channel": per_channel,
        "reduce_range": not vnni,
        "calibration_method": "MinMax",
        "cpu_vnni": vnni,
    }
    with tempfile.TemporaryDirectory(prefix="busai-int8-") as tmp:
        tmp = Path(tmp)
        fp32 = export_onnx(loaded, tmp / "fp32.onnx", dynamic_size=dynamic_size)
        if not fp32.ok:
            raise CheckpointError(f"{loaded.source}: the fp32 ONNX graph differs from PyTorch by {fp32.max_abs_diff:.2g}; it cannot be quantized")
        prepared = tmp / "prepared.onnx"
        # Shape inference and constant folding first, as ONNX Runtime's quantization guide asks.
        quant_pre_process(str(fp32.path), str(prepared), skip_symbolic_shape=True)
        quantizer = _Quantizer(prepared, tmp / "activation_ranges.json", loaded, calibration, per_channel, vnni)
        kept, ranking, steps = [], [], []
        if keep_fp32 != 0:
            ranking = sensitivity(prepared, quantizer([], tmp / "int8_all.onnx"), loaded, calibration[:SENSITIVITY_IMAGES], quantizer.always_float)
            if keep_fp32 == "auto":
                kept, steps = _choose_kept(quantizer, ranking, loaded, load_onnx(fp32.path), selection_records or parity_records, tmp)
            else:
                kept = [row["node"] for row in ranking[:keep_fp32]]
        details = {
            "keep_fp32": keep_fp32,
            "kept_fp32": kept,
            "shape_nodes_fp32": len(quantizer.always_float),
            "sensitivity": ranking[:SENSITIVITY_SHOWN],
            "selection": steps,
        }
        with atomic_path(out) as staged:
            quantizer(kept, staged)
            _write_metadata(staged, fp32.path, {"type": "int8", **settings, "calibration_images": len(calibration), **details, **(provenance or {})})
    mean_diff, max_diff = probability_difference(loaded, load_onnx(out), parity_records)
    return Int8Result(
        str(out), loaded.task, len(calibration), len(parity_records), mean_diff, max_diff, INT8_TOLERANCE, settings, kept, ranking[:SENSITIVITY_SHOWN], steps
    )


class _Quantizer:
    """ONNX Runtime's static int8 quantization of one prepared graph, calibrated once (its calibration
    cache) and re-run for each set of nodes kept in fp32; shape arithmetic always stays fp32. A set
    quantized before is copied from its file: --keep-fp32 auto's K = 0 is the sensitivity pass's
    graph, and its chosen K is the last one it tried."""

    def __init__(self, prepared: Path, cache: Path, loaded, calibration, per_channel: bool, vnni: bool):
        import onnx

        self.prepared, self.cache, self.loaded, self.calibration = prepared, cache, loaded, calibration
        self.per_channel, self.vnni = per_channel, vnni
        self.always_float = shape_nodes(onnx.load(str(prepared)))
        self._made: dict[tuple[str, ...], Path] = {}

    def __call__(self, kept, out: Path) -> Path:
        from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

        from busai.export import INPUT

        key = tuple(sorted(kept))
        if key in self._made and self._made[key].is_file():
            shutil.copyfile(self._made[key], out)
            return out
        quantize_static(
            str(self.prepared),
            str(out),
            None if self.cache.is_file() else _Reader(self.loaded, self.calibration, INPUT),
            quant_format=QuantFormat.QDQ,
            per_channel=self.per_channel,
            reduce_range=not self.vnni,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
            nodes_to_exclude=self.always_float + list(kept),
            calibration_cache_path=str(self.cache),
        )
        self._made[key] = Path(out)
        return out


def _write_metadata(staged: Path, fp32_path, quantization: dict) -> None:
    """The fp32 file's busai metadata plus how the file was quantized."""
    import onnx

    from busai.export import METADATA_KEY

    model = onnx.load(str(staged))
    props = {p.key: p.value for p in onnx.load(str(fp32_path)).metadata_props}
    meta = json.loads(props[METADATA_KEY])
    meta["quantization"] = quantization
    onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(meta)})
    onnx.save(model, str(staged))


def sensitivity(float_path: str | Path, qdq_path: str | Path, loaded: LoadedModel, records, skip=()) -> list[dict]:
    """Every quantized node of ``qdq_path`` with the error its quantization adds, worst first.

    ONNX Runtime's ``qdq_loss_debug`` runs the int8 graph on ``records``; for each quantized tensor the
    signal-to-quantization-noise ratio (dB) of its values before vs after its
    Quantize/DequantizeLinear pair, and for each weight that of float vs dequantized weights.
    A node scores the lowest ratio among the tensors it reads and writes: the most error it lets
    in. Nodes in ``skip`` (kept float anyway), nodes with no quantized tensor and activations the
    quantizer folds into the range of the node before (:data:`FOLDED_ACTIVATIONS`) are left out.
    """
    import onnx
    from onnxruntime.quantization import qdq_loss_debug as debug

    from busai.export import INPUT

    with tempfile.TemporaryDirectory(prefix="busai-int8-debug-") as tmp:
        augmented = str(Path(tmp) / "qdq.onnx")
        debug.modify_model_output_intermediate_tensors(str(qdq_path), augmented)
        matched = debug.create_activation_matching(debug.collect_activations(augmented, _Reader(loaded, records, INPUT)))
    graph = onnx.load(str(qdq_path)).graph
    constants = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    tensor_db = {}
    for name, match in matched.items():
        scale, zero = constants.get(f"{name}_scale"), constants.get(f"{name}_zero_point")
        if scale is None or zero is None or scale.size != 1:
            continue
        # The quantizer folds a ReLU / Clip into the QuantizeLinear's range, so values outside that range
        # are the activation at work, not rounding: the error is measured on values clipped to it.
        info = np.iinfo(zero.dtype)
        low, high = float(scale) * (info.min - float(zero)), float(scale) * (info.max - float(zero))
        pre = [np.clip(x, low, high) for x in match["pre_qdq"]]
        if not all(np.array_equal(a, b) for a, b in zip(pre, match["post_qdq"])):
            tensor_db[name] = debug.compute_signal_to_quantization_noice_ratio(pre, match["post_qdq"])
    # Weights that int8 holds exactly (a Clip's bounds, a Pad's zero) add no error; the library's
    # ratio would score them 0 dB (zero signal). Scalars go in as 1-element arrays, the arrays it takes.
    weights = {
        name: {k: np.atleast_1d(v) for k, v in pair.items()}
        for name, pair in debug.create_weight_matching(str(float_path), str(qdq_path)).items()
        if not np.array_equal(pair["float"], pair["dequantized"])
    }
    weight_db = debug.compute_weight_error(weights)
    skip = set(skip)
    rows = []
    for node in onnx.load(str(float_path)).graph.node:
        scores = [tensor_db[t] for t in [*node.input, *node.output] if t in tensor_db] + [weight_db[t] for t in node.input if t in weight_db]
        if scores and node.name not in skip and node.op_type not in FOLDED_ACTIVATIONS:
            rows.append({"node": node.name, "op": node.op_type, "sqnr_db": round(float(min(scores)), 2)})
    return sorted(rows, key=lambda row: row["sqnr_db"])


def _k_steps(count: int) -> list[int]:
    """0, 1, 2, 4, ... up to ``count``: the numbers of nodes kept fp32 that --keep-fp32 auto tries."""
    steps, k = [0], 1
    while k < count:
        steps.append(k)
        k *= 2
    return steps + [count] if count else steps


def _choose_kept(quantizer: _Quantizer, ranking: list[dict], loaded: LoadedModel, fp32: LoadedModel, records, tmp: Path) -> tuple[list[str], list[dict]]:
    """--keep-fp32 auto: keep the worst K nodes fp32 for K = 0, 1, 2, 4, ... until the Dice / accuracy
    drop from fp32 on ``records`` (held-out training images) is within :data:`MAX_DROP`; each K's drop
    and speed recorded. None within it: the K with the smallest drop."""
    from busai.export import load_onnx

    x = next(_batches(loaded, records[:1]))
    reference, reference_ms = held_out_score(fp32, loaded, records), _ms_per_image(fp32, x)
    steps = []
    for k in _k_steps(len(ranking)):
        kept = [row["node"] for row in ranking[:k]]
        model = load_onnx(quantizer(kept, tmp / f"int8_{k}.onnx"))
        drop = reference - held_out_score(model, loaded, records)
        ms = _ms_per_image(model, x)
        steps.append({"keep_fp32": k, "drop": round(drop, 5), "ms_per_image": round(ms, 2), "speedup_vs_onnxruntime_fp32": round(reference_ms / ms, 2)})
        if drop <= MAX_DROP:
            return kept, steps
    best = min(steps, key=lambda step: step["drop"])["keep_fp32"]
    return [row["node"] for row in ranking[:best]], steps


def held_out_score(model: LoadedModel, reference: LoadedModel, records) -> float:
    """Mean Dice over images (segmentation) or accuracy (classification) of ``model`` on ``records``,
    at the model's input size, preprocessed as ``reference`` (the PyTorch model) was trained."""
    from busai.inference import predict_tensor
    from busai.metrics import image_overlap, segmentation_counts

    key = "mask" if reference.task == "segmentation" else "label"
    scores = []
    for batch, truth in zip(_batches(reference, records), _batches(reference, records, key=key)):
        prob = predict_tensor(model, batch, precision="fp32")
        if reference.task == "segmentation":
            scores += [image_overlap(segmentation_counts(p.numpy(), t[0].numpy()))["dice"] for p, t in zip(prob, truth)]
        else:
            scores += (prob.argmax(1) == truth).float().tolist()
    return float(np.mean(scores))


def _ms_per_image(model: LoadedModel, x: torch.Tensor, runs: int = 5) -> float:
    """Median milliseconds of one call on ``x`` after a warm-up call (a rough figure for choosing K)."""
    import statistics
    import time

    from busai.inference import predict_tensor

    predict_tensor(model, x, precision="fp32")
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        predict_tensor(model, x, precision="fp32")
        times.append((time.perf_counter() - start) * 1000 / len(x))
    return statistics.median(times)


def probability_difference(reference: LoadedModel, other: LoadedModel, records) -> tuple[float, float]:
    """(mean, max) |probability difference| of ``other`` from ``reference`` in fp32 over ``records``."""
    from busai.inference import predict_tensor

    total, count, largest = 0.0, 0, 0.0
    for batch in _batches(reference, records):
        diff = (predict_tensor(other, batch, precision="fp32") - predict_tensor(reference, batch, precision="fp32")).abs()
        total, count, largest = total + float(diff.sum()), count + diff.numel(), max(largest, float(diff.max()))
    return total / max(count, 1), largest


def kernel_profile(path: str | Path, x: np.ndarray, runs: int = 3) -> dict[str, float]:
    """Share of ONNX Runtime's kernel time per operator type over ``runs`` calls on ``x``, largest first.

    Which kernels ran tells whether the int8 file computes in int8 (QLinearConv, ...) or falls back
    to float operators between quantize / dequantize pairs.
    """
    import onnxruntime as ort

    from busai.backends import INPUT
    from busai.device import cores as _cores

    with tempfile.TemporaryDirectory(prefix="busai-profile-") as tmp:
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        options.intra_op_num_threads = _cores()
        options.enable_profiling = True
        options.profile_file_prefix = str(Path(tmp) / "profile")
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        for _ in range(runs):
            session.run(None, {INPUT: x})
        events = json.loads(Path(session.end_profiling()).read_text())
    time_by_op: Counter = Counter()
    for event in events:
        if event.get("cat") == "Node" and event.get("name", "").endswith("_kernel_time"):
            time_by_op[event["args"]["op_name"]] += event["dur"]
    total = sum(time_by_op.values()) or 1
    return {op: round(us / total, 4) for op, us in time_by_op.most_common()}
