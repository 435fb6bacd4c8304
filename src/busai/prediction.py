"""Masks, classes and lesion measurements for a folder of scans.

For each input ``NAME.ext`` :func:`predict_paths` writes ``OUT/NAME_pred_mask.png`` (0 / 255, the
input's own size) and ``OUT/NAME_overlay.png`` (lesion contour and longest diameter on the scan),
and for the batch one ``OUT/predictions.json`` (a list, one object per input, in input order)
with the same rows in ``OUT/predictions.csv``. Every row has every key of :data:`COLUMNS`; a file
that cannot be read gets a row with ``error`` set and the batch goes on.

Each scan passes the input gate (``input_check``: ``ok`` or why it is not a B-mode scan; a
flagged scan gets no answer) and, inside a screenshot, is cropped to its scan region before the
models see it; masks and measurements are in the input's own pixels. A DICOM file gives one row
per frame (``frame``), with the pixel spacing it states (``spacing_source``); a multi-page TIFF
one row per page, as a cine.
"""

from __future__ import annotations

import csv
import json
import tempfile
from pathlib import Path
from typing import Self

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from busai import CLASSES
from busai.backends import LoadedModel
from busai.config import BACKENDS
from busai.labels import class_names
from busai.errors import BusaiError, ConfigError, DataError
from busai.export import load_backend
from busai.inference import predict_image, upsample_probability
from busai.input_check import OK, check_array, check_input
from busai.io.scans import list_inputs, read_scans
from busai.measure import MEASUREMENT_KEYS, measure_lesion
from busai.outputs import printable
from busai.preprocessing import rgb_array
from busai.scan_region import find_scan_region, whole_image

MASK_SUFFIX, OVERLAY_SUFFIX, PROBABILITY_SUFFIX, SEG_SUFFIX = "_pred_mask.png", "_overlay.png", "_probability.png", "_seg.dcm"
PROBABILITY_KEYS = tuple(f"p_{c}" for c in CLASSES)  # always columns; a model with other classes adds its own (columns_for)
SCAN_KEYS = ("scan_x", "scan_y", "scan_width", "scan_height")  # the scan region; None when the scan is the whole image
SPACING_KEYS = ("spacing_row_mm", "spacing_column_mm", "spacing_source")
COLUMNS = (
    "image",
    "frame",
    "input_check",
    "label",
    *PROBABILITY_KEYS,
    *MEASUREMENT_KEYS,
    "review",
    "width",
    "height",
    *SCAN_KEYS,
    *SPACING_KEYS,
    "mask",
    "overlay",
    "probability",
    "dicom_seg",
    "error",
)
CONTOUR_RGB, DIAMETER_RGB = (255, 214, 0), (0, 200, 255)
ModelSource = str | Path | LoadedModel | None  # or a busai.Model (it holds its network as .loaded)


def load_models(
    seg: ModelSource = "release", cls: ModelSource = "release", *, backend: str = "torch", workdir: str | Path | None = None, device: str = "cpu"
) -> list[LoadedModel]:
    """The segmenter and / or classifier to predict with (what :func:`predict_array` takes; ``busai.Model(x)`` wraps one).

    Each source is ``"release"``/None, a run folder, a saved or release folder, an .onnx file, a
    loaded :class:`busai.Model`, or ``"none"`` to skip that task. ``backend="onnx"`` exports PyTorch
    models into ``workdir`` and runs them in ONNX Runtime. ``device``: auto, cpu or cuda (see :func:`busai.export.load_backend`).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend}: unknown; choose torch or onnx")
    models = [
        load_backend(source, task, device=device, backend=backend, workdir=workdir)
        for task, source in (("segmentation", seg), ("classification", cls))
        if not (isinstance(source, str) and source.lower() == "none")
    ]
    if not models:
        raise ConfigError("--seg none --cls none: nothing to predict; keep at least one model")
    return models


def models_by_task(models) -> dict:
    """{task: model} for a model or a list of them (:class:`busai.Model` objects or the networks they
    hold, returned as given); at most one per task, at least one in all."""
    models = [models] if _network(models) is not None else list(models)
    by_task: dict = {}
    for model in models:
        network = _network(model)
        if network is None:
            raise ConfigError(f"predict: got a {type(model).__name__} where a model belongs; load one with busai.load(...)")
        if network.task in by_task:
            raise ConfigError(f"predict: two {network.task} models given; pass at most one segmenter and one classifier")
        by_task[network.task] = model
    if not by_task:
        raise ConfigError("predict: no model given; load one with busai.load(...)")
    return by_task


def _network(model) -> LoadedModel | None:
    """The network a :class:`busai.Model` holds, or ``model`` itself when it is one; None for anything else."""
    from busai.backends import EnsembleLoaded

    network = getattr(model, "loaded", model)
    return network if isinstance(network, (LoadedModel, EnsembleLoaded)) else None


def empty_row(image: str) -> dict:
    return {key: None for key in COLUMNS} | {"image": image}


def predict_array(
    models,
    image_rgb: np.ndarray,
    *,
    tta: bool = False,
    pixel_spacing=None,
    threshold: float = 0.5,
    scan_region: bool = True,
    gate: bool = True,
    geometry=None,
    keep_probability: bool = False,
    precision: str = "auto",
) -> tuple[dict, np.ndarray | None]:
    """One uint8 (H, W, 3) scan -> (row values, {0, 1} mask at the scan's size or None), by at most
    one segmenter and one classifier (:func:`load_models`, or :class:`busai.Model` objects).

    ``scan_region`` crops a screenshot to the scan before the models (the mask comes back at the
    image's size); ``gate`` withholds the answer (no label, no mask) when ``input_check`` is not
    ``ok``. ``geometry`` (a DICOM file's :class:`~busai.io.dicom.DicomGeometry`) gives the pixel
    spacing where the lesion lies; ``pixel_spacing`` (mm) is used where it gives none.
    The row has no file fields (image, mask, overlay, error) and carries ``diameter_endpoints``
    and ``perpendicular_endpoints`` for drawing, and ``probability_map`` with ``keep_probability``.
    """
    by_task = {task: _network(model) for task, model in models_by_task(models).items()}
    seg, cls = by_task.get("segmentation"), by_task.get("classification")
    image_rgb = np.asarray(image_rgb)
    row: dict = {"width": None, "height": None}
    if image_rgb.ndim >= 2:
        row.update(width=int(image_rgb.shape[1]), height=int(image_rgb.shape[0]))
    problem = check_array(image_rgb)
    if problem != OK:  # not readable as 8-bit pixels: nothing sensible to predict, whatever ``gate`` says
        return row | {"input_check": problem}, None
    image_rgb = rgb_array(image_rgb)
    region = find_scan_region(image_rgb) if scan_region else whole_image(image_rgb.shape)
    scan = region.crop(image_rgb)
    row["input_check"] = check_input(scan)
    if region.cropped:
        row.update(scan_x=region.x0, scan_y=region.y0, scan_width=region.width, scan_height=region.height)
    if gate and row["input_check"] != OK:
        return row, None
    if cls is not None:
        probs = predict_image(cls, scan, tta=tta, precision=precision).numpy()
        classes = class_names(cls.spec)
        row["label"] = classes[int(probs.argmax())]
        row.update({f"p_{c}": round(float(p), 5) for c, p in zip(classes, probs)})
    mask = None
    if seg is not None:
        prob = upsample_probability(predict_image(seg, scan, tta=tta, precision=precision), scan.shape[:2])
        prob = region.paste(prob.astype(np.float32), image_rgb.shape[:2])
        mask = (prob > threshold).astype(np.uint8)
        spacing, source = lesion_spacing(mask, geometry, pixel_spacing)
        if spacing is not None:
            row.update(spacing_row_mm=round(spacing[0], 6), spacing_column_mm=round(spacing[1], 6), spacing_source=source)
        row.update(measure_lesion(mask, spacing, skin_row=region.y0))
        if keep_probability:
            row["probability_map"] = prob
    row["review"] = review_note(row.get("label"), row.get("lesion_count"))
    return row, mask


def lesion_spacing(mask: np.ndarray, geometry, pixel_spacing) -> tuple[tuple[float, float] | None, str | None]:
    """(row, column) mm per pixel for the lesion in ``mask`` and where it came from: the DICOM
    region holding the lesion's centre (or the file's PixelSpacing), else ``pixel_spacing``."""
    from busai.measure import largest_component, spacing_mm

    if geometry is not None:
        region, count = largest_component(mask)
        centre = None
        if count:
            ys, xs = np.nonzero(region)
            centre = (float(xs.mean()), float(ys.mean()))
        spacing, source = geometry.spacing_at(centre)
        if spacing is not None:
            return spacing, source
    spacing = spacing_mm(pixel_spacing)
    return (spacing, "--pixel-spacing") if spacing is not None else (None, None)


def review_note(label: str | None, lesion_count: int | None) -> str | None:
    """Why a scan needs a human look when the two models disagree on whether it shows a lesion; None otherwise.

    The segmenter's misses are scans it takes for lesion-free tissue (benchmarks/missed_lesions.py);
    where the classifier still names a lesion class, saying so is the only hint a user gets.
    """
    if label is None or lesion_count is None:
        return None
    if label != "normal" and lesion_count == 0:
        return f"classified {label} but no lesion outlined: check the scan for a lesion the outline missed"
    if label == "normal" and lesion_count > 0:
        return "lesion outlined on a scan classified normal: check whether the outline marks a lesion"
    return None


def draw_overlay(image_rgb: np.ndarray, mask: np.ndarray, diameter_endpoints=None, caption: str | None = None, perpendicular_endpoints=None) -> Image.Image:
    """The scan with the lesion contour, its longest (and perpendicular) diameter and an optional caption (e.g. the class)."""
    height, width = mask.shape
    thickness = max(1, round(max(height, width) / 300))
    overlay = image_rgb.copy()
    lesion = mask.astype(bool)
    contour = lesion & ~ndimage.binary_erosion(lesion, iterations=thickness, border_value=0)
    overlay[contour] = CONTOUR_RGB
    picture = Image.fromarray(overlay)
    draw = ImageDraw.Draw(picture)
    if diameter_endpoints:
        draw.line([tuple(p) for p in diameter_endpoints], fill=DIAMETER_RGB, width=thickness)
    if perpendicular_endpoints:
        draw.line([tuple(p) for p in perpendicular_endpoints], fill=DIAMETER_RGB, width=thickness)
    if caption:
        font = ImageFont.load_default(size=max(10, height // 22))
        box = draw.textbbox((4, 4), caption, font=font)
        draw.rectangle((box[0] - 3, box[1] - 3, box[2] + 3, box[3] + 3), fill=(0, 0, 0))
        draw.text((4, 4), caption, fill=(255, 255, 255), font=font)
    return picture


def label_caption(row: dict) -> str | None:
    if row.get("label") is None:
        return None
    return f"{row['label']} {row['p_' + row['label']]:.2f}"


def collect_inputs(inputs: list[str | Path]) -> list[Path]:
    """The files :func:`busai.io.scans.list_inputs` finds (images and DICOM), without the skipped list."""
    return list_inputs(inputs)[0]


def _output_stem(path: Path, used: set[str]) -> str:
    """``NAME`` for ``NAME.ext``; a second input with the same name gets ``NAME-2`` so nothing is overwritten."""
    base = printable(path.stem)  # the name the tables can hold, so they name the file as it is on disk
    stem, n = base, 1
    while (stem if n == 1 else f"{base}-{n}") in used:
        n += 1
    stem = stem if n == 1 else f"{base}-{n}"
    used.add(stem)
    return stem


TABLES = ("predictions.json", "predictions.csv")
ROW_LOG = "predictions.jsonl"  # one finished row per line while a batch runs; removed once the tables are complete
OPTIONS_FILE = "predict_options.json"  # what produced the rows, so --resume never mixes two settings


def columns_for(rows: list[dict]) -> list[str]:
    """:data:`COLUMNS`, plus a ``p_<class>`` column after the standard three for each class of a
    classifier with its own label set (see :mod:`busai.labels`)."""
    extra = [key for key in dict.fromkeys(k for row in rows for k in row) if key.startswith("p_") and key not in COLUMNS]
    at = COLUMNS.index(PROBABILITY_KEYS[-1]) + 1
    return [*COLUMNS[:at], *extra, *COLUMNS[at:]]


def write_tables(rows: list[dict], out_dir: Path) -> None:
    """predictions.json and predictions.csv, each written whole to a temporary file and renamed."""
    from busai.outputs import atomic_write, atomic_write_text

    atomic_write_text(out_dir / "predictions.json", json.dumps(rows, indent=2) + "\n")

    def write_csv(tmp: Path) -> None:
        with tmp.open("w", newline="", encoding="utf-8") as fh:
            writer = csv.DictWriter(fh, fieldnames=columns_for(rows), extrasaction="ignore")
            writer.writeheader()
            writer.writerows(rows)

    atomic_write(out_dir / "predictions.csv", write_csv)


class _RowLog(list):
    """A batch's rows. Each new row is also written at once, one JSON line, to ``predictions.jsonl``, so a
    kill mid-batch keeps every finished row; leaving the ``with`` block (done, failed or Ctrl-C) writes
    the tables from every row so far. Rows of an earlier batch (``--resume``) come in through ``done``."""

    def __init__(self, out_dir: Path, paths: list[Path], done: dict[str, dict]):
        super().__init__()
        self.out_dir, self.paths, self.done = out_dir, paths, done
        self.file = None

    def todo(self) -> list[Path]:
        """The inputs without a row, or with a row that is an error (retried: the file may have been fixed)."""
        by_image: dict[str, list[dict]] = {}
        for row in self.done.values():
            by_image.setdefault(row["image"], []).append(row)
        return [p for p in self.paths if not by_image.get(printable(str(p))) or any(r.get("error") for r in by_image[printable(str(p))])]

    def used_stems(self) -> set[str]:
        """Output names the kept rows already use, so a new row never takes one."""
        return {row["mask"].removesuffix(MASK_SUFFIX) for row in self.done.values() if row.get("mask")}

    def __enter__(self) -> Self:
        self.file = (self.out_dir / ROW_LOG).open("a", encoding="utf-8")
        return self

    def append(self, row: dict) -> None:
        row = {key: printable(value) for key, value in row.items()}
        super().append(row)
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()

    def ordered(self) -> list[dict]:
        """Rows only the earlier batch has, then each input's rows (one per frame of a cine) in input order."""

        def by_image(rows) -> dict[str, list[dict]]:
            grouped: dict[str, list[dict]] = {}
            for row in rows:
                grouped.setdefault(row["image"], []).append(row)
            return grouped

        new, old = by_image(self), by_image(self.done.values())
        inputs = [printable(str(p)) for p in self.paths]
        given = set(inputs)
        earlier_only = [row for key, rows in old.items() if key not in given for row in rows]
        return earlier_only + [row for key in inputs for row in (new.get(key) or old.get(key) or [])]

    def __exit__(self, exc_type, exc, tb) -> None:
        self.file.close()
        if self or self.done:
            write_tables(self.ordered(), self.out_dir)
        if exc_type is None or not self:  # complete (or nothing new to keep): the tables say it all
            (self.out_dir / ROW_LOG).unlink(missing_ok=True)


def row_key(row: dict) -> str:
    """A row's identity: its image, and the frame for the second and later frames of a cine."""
    frame = row.get("frame")
    return row["image"] if frame in (None, 1) else f"{row['image']}#frame{frame}"


def finished_rows(out_dir: Path) -> list[dict]:
    """Rows an earlier batch in ``out_dir`` left: the tables, then the row log of a batch that was stopped."""
    rows: dict[str, dict] = {}
    tables = out_dir / "predictions.json"
    if tables.exists():
        try:
            rows = {row_key(row): row for row in json.loads(tables.read_text(encoding="utf-8"))}
        except (ValueError, TypeError, KeyError):
            raise DataError(f"{tables}: not a predictions table written by busai; choose a new --out folder") from None
    log = out_dir / ROW_LOG
    if log.exists():
        for line in log.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                row = json.loads(line)
                rows[row_key(row)] = row
            except (ValueError, TypeError, KeyError):
                continue  # the line being written when the process was killed
    return list(rows.values())


def _check_earlier_batch(out_dir: Path, options: dict, resume: bool) -> list[dict]:
    """Refuse to drop an earlier batch's table unasked; with ``resume`` return its rows (same options only)."""
    earlier = [name for name in (*TABLES, ROW_LOG) if (out_dir / name).exists()]
    if not earlier:
        return []
    if not resume:
        raise ConfigError(
            f"{out_dir}: already holds {earlier[0]} from an earlier batch; pass --resume to predict only the images it lacks, or choose a new --out folder"
        )
    from busai.errors import read_json

    stored = read_json(
        out_dir / OPTIONS_FILE, missing="missing, so the earlier rows' settings are unknown; choose a new --out folder", fix="choose a new --out folder"
    )
    changed = sorted(key for key in options if stored.get(key) != options[key])
    if changed:
        raise ConfigError(
            f"--resume: {out_dir} was predicted with other {', '.join(changed)} ({', '.join(f'{k}={stored.get(k)!r}' for k in changed)}); "
            "use the same options, or choose a new --out folder"
        )
    return finished_rows(out_dir)


def predict_paths(
    inputs: list[str | Path],
    out_dir: str | Path,
    *,
    seg: ModelSource = "release",
    cls: ModelSource = "release",
    backend: str = "torch",
    tta: bool = False,
    pixel_spacing: float | tuple[float, float] | None = None,
    threshold: float = 0.5,
    progress: bool = True,
    resume: bool = False,
    device: str = "cpu",
    frame: int | None = None,
    scan_region: bool = True,
    gate: bool = True,
    save_probabilities: bool = False,
    dicom_seg: bool = False,
) -> list[dict]:
    """Predict every input image into ``out_dir`` and return the rows of predictions.json.

    A file that cannot be decoded gets ``{"image": ..., "error": ...}`` (other keys None) and the
    batch continues. ``pixel_spacing`` (mm per pixel) adds the mm measurements where a DICOM file
    states none. A DICOM cine or a multi-page TIFF gives a row per frame, or only ``frame``
    (1-based; a file without that frame gets an error row).
    ``save_probabilities`` writes ``NAME_probability.png`` (16-bit, lesion probability x 65535);
    ``dicom_seg`` writes ``NAME_seg.dcm`` (a DICOM Segmentation) for each single-frame DICOM input.
    Files a folder holds that are not scans are left out: :func:`busai.io.scans.list_inputs` lists them.

    Each finished row is written at once to ``predictions.jsonl``; the tables are written at the end,
    and also when the batch is interrupted. An ``out_dir`` holding an earlier batch is refused
    unless ``resume``: then its rows are kept and only the images without one (or with an error) are predicted.
    """
    from busai.device import best_threads
    from busai.measure import spacing_mm
    from busai.outputs import atomic_write_text, output_dir

    spacing_mm(pixel_spacing)  # a bad value fails before any model is loaded
    if not 0 < threshold < 1:
        raise ConfigError(f"--threshold {threshold}: must be between 0 and 1")
    if frame is not None and frame < 1:
        raise ConfigError(f"--frame {frame}: frames are numbered from 1")
    if dicom_seg:
        from busai.io.dicom_seg import require_highdicom

        require_highdicom()
    paths = collect_inputs(inputs)
    best_threads()
    out_dir = output_dir(out_dir)
    options = json.loads(
        json.dumps(
            {
                "seg": str(seg),
                "cls": str(cls),
                "backend": backend,
                "tta": tta,
                "pixel_spacing": pixel_spacing,
                "threshold": threshold,
                "frame": frame,
                "scan_region": scan_region,
                "gate": gate,
            },
            default=str,
        )
    )
    done = {row_key(row): row for row in _check_earlier_batch(out_dir, options, resume)}
    atomic_write_text(out_dir / OPTIONS_FILE, json.dumps(options, indent=2) + "\n")
    with tempfile.TemporaryDirectory(prefix="busai-onnx-") as workdir, _RowLog(out_dir, paths, done) as rows:
        models = load_models(seg, cls, backend=backend, workdir=workdir, device=device)
        used = rows.used_stems()
        for path in _track(rows.todo(), progress):
            scans = read_scans(path, frame)
            while True:
                row = empty_row(str(path))
                try:
                    scan = next(scans, None)
                except BusaiError as exc:
                    row["error"] = str(exc)
                    rows.append(row)
                    break
                except Image.DecompressionBombError as exc:  # Pillow's guard against absurd pixel counts
                    row["error"] = f"{path}: {exc}"
                    rows.append(row)
                    break
                if scan is None:
                    break
                row["frame"] = scan.frame
                values, mask = predict_array(
                    models,
                    scan.image,
                    tta=tta,
                    pixel_spacing=pixel_spacing,
                    threshold=threshold,
                    scan_region=scan_region,
                    gate=gate,
                    geometry=scan.geometry,
                    keep_probability=save_probabilities,
                )
                ends = values.pop("diameter_endpoints", None)
                across = values.pop("perpendicular_endpoints", None)
                probability = values.pop("probability_map", None)
                row.update(values)
                if mask is not None:
                    name = path if scan.frames == 1 else path.with_name(f"{path.stem}_frame{scan.frame}")
                    stem = _output_stem(name, used)
                    row["mask"], row["overlay"] = stem + MASK_SUFFIX, stem + OVERLAY_SUFFIX
                    Image.fromarray(mask * 255).save(out_dir / row["mask"])
                    draw_overlay(scan.image, mask, ends, label_caption(row), across).save(out_dir / row["overlay"])
                    if probability is not None:
                        row["probability"] = stem + PROBABILITY_SUFFIX
                        save_probability_png(probability, out_dir / row["probability"])
                    if dicom_seg and scan.dataset is not None and scan.frames == 1:
                        from busai.io.dicom_seg import write_dicom_seg

                        try:
                            write_dicom_seg(scan.dataset, mask, out_dir / (stem + SEG_SUFFIX))
                            row["dicom_seg"] = stem + SEG_SUFFIX
                        except BusaiError as exc:  # the prediction stands; only its SEG copy failed
                            row["error"] = str(exc)
                rows.append(row)
    return rows.ordered()


def save_probability_png(probability: np.ndarray, path: Path) -> None:
    """A lesion probability map as a 16-bit grey PNG: value / 65535 is the probability."""
    Image.fromarray((np.clip(probability, 0, 1) * 65535).round().astype(np.uint16)).save(path)


def _track(paths: list[Path], progress: bool):
    if not progress:
        return paths
    from rich.console import Console
    from rich.progress import track

    return track(paths, description=f"Predicting {len(paths)} images", console=Console(stderr=True), transient=True)
