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

The int8 file is an ordinary busai ONNX file (``busai predict --seg FILE.onnx`` runs it) whose
metadata also records how it was calibrated.
"""

from __future__ import annotations

import json
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


def calibration_records(data_dir: str | Path, splits_file: str | Path, *, count: int = CALIBRATION_IMAGES, seed: int = 0):
    """(calibration, parity) records: up to ``count`` training images drawn with ``seed``, and up to
    :data:`PARITY_IMAGES` other training images to check the result on (the calibration ones when
    the split has no others)."""
    from busai.data.splits import load_split_records

    if count < 1:
        raise ConfigError(f"--calib-images {count}: must be at least 1")
    records = load_split_records(data_dir, splits_file, "train")
    if not records:
        raise ConfigError(f"{splits_file}: its train split is empty; calibration uses training images only")
    order = np.random.default_rng(seed).permutation(len(records))
    calibration = [records[i] for i in order[:count]]
    rest = [records[i] for i in order[count : count + PARITY_IMAGES]]
    return calibration, rest or calibration[:PARITY_IMAGES]


def calibration_source(loaded: LoadedModel, data_dir: str | Path | None, splits_file: str | Path | None) -> tuple[str, str]:
    """The data folder and split file to calibrate on: those given, else the ones the run trained on."""
    train = loaded.config.get("train") or {}
    data_dir = data_dir or train.get("data")
    splits_file = splits_file or train.get("splits")
    if not data_dir or not splits_file or not Path(data_dir).is_dir() or not Path(splits_file).is_file():
        raise ConfigError(
            f"{loaded.source}: --quantize int8 calibrates on training images, and the data folder or split file it trained on "
            f"({data_dir or 'none recorded'}, {splits_file or 'none recorded'}) is not here; pass --calib-data DIR --calib-splits FILE"
        )
    return str(data_dir), str(splits_file)


def _batches(loaded: LoadedModel, records, batch_size: int = 8):
    """Normalised (N, 3, S, S) float32 arrays, through the training dataset's own preprocessing."""
    from busai.data.dataset import BusDataset, ImageCache

    dataset = BusDataset(records, loaded.image_size, loaded.mean, loaded.std, cache=ImageCache())
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i]["image"] for i in range(start, min(start + batch_size, len(dataset)))]
        yield torch.stack(items)


class _Reader:
    """ONNX Runtime's CalibrationDataReader protocol over the calibration images, one image per call."""

    def __init__(self, loaded: LoadedModel, records, input_name: str):
        self._items = ({input_name: x[None].numpy()} for batch in _batches(loaded, records) for x in batch)

    def get_next(self):
        return next(self._items, None)


def quantize_int8(
    loaded: LoadedModel,
    out: str | Path,
    calibration,
    parity_records,
    *,
    per_channel: bool = True,
    dynamic_size: bool = False,
    provenance: dict | None = None,
) -> Int8Result:
    """Export ``loaded`` to ONNX, quantize it to int8 calibrated on ``calibration`` records, write ``out``.

    ``parity_records`` (training images too) measure how far int8 probabilities move from PyTorch fp32.
    The file is written to a temporary name and renamed, so an existing ``out`` survives a failure.
    """
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from busai.export import export_onnx, load_onnx

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
        fp32 = export_onnx(loaded, Path(tmp) / "fp32.onnx", dynamic_size=dynamic_size)
        if not fp32.ok:
            raise CheckpointError(f"{loaded.source}: the fp32 ONNX graph differs from PyTorch by {fp32.max_abs_diff:.2g}; it cannot be quantized")
        prepared = Path(tmp) / "prepared.onnx"
        # Shape inference and constant folding first, as ONNX Runtime's quantization guide asks.
        quant_pre_process(str(fp32.path), str(prepared), skip_symbolic_shape=True)
        with atomic_path(out) as staged:
            _quantize(prepared, staged, fp32.path, loaded, calibration, settings, provenance, per_channel, vnni)
    mean_diff, max_diff = probability_difference(loaded, load_onnx(out), parity_records)
    return Int8Result(str(out), loaded.task, len(calibration), len(parity_records), mean_diff, max_diff, INT8_TOLERANCE, settings)


def _quantize(prepared: Path, staged: Path, fp32_path, loaded, calibration, settings: dict, provenance, per_channel: bool, vnni: bool) -> None:
    """ONNX Runtime's static int8 quantization of ``prepared`` into ``staged``, with the fp32 file's metadata plus the settings."""
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from busai.export import INPUT, METADATA_KEY

    quantize_static(
        str(prepared),
        str(staged),
        _Reader(loaded, calibration, INPUT),
        quant_format=QuantFormat.QDQ,
        per_channel=per_channel,
        reduce_range=not vnni,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=CalibrationMethod.MinMax,
    )
    model = onnx.load(str(staged))
    props = {p.key: p.value for p in onnx.load(str(fp32_path)).metadata_props}
    meta = json.loads(props[METADATA_KEY])
    meta["quantization"] = {"type": "int8", **settings, "calibration_images": len(calibration), **(provenance or {})}
    onnx.helper.set_model_props(model, {METADATA_KEY: json.dumps(meta)})
    onnx.save(model, str(staged))


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
