"""Masks, classes and lesion measurements for a folder of scans: the batch writer.

For each input ``NAME.ext`` :func:`predict_paths` writes ``OUT/NAME_pred_mask.png`` (0 / 255, the
input's own size) and ``OUT/NAME_overlay.png`` (lesion contour and longest diameter on the scan),
and for the batch one ``OUT/predictions.json`` (a list, one object per input, in input order)
with the same rows in ``OUT/predictions.csv``. Every row has every key of
:data:`busai.rendering.COLUMNS`; a file that cannot be read gets a row with ``error`` set and the
batch goes on. A DICOM file gives one row per frame (``frame``), with the pixel spacing it states
(``spacing_source``); a multi-page TIFF one row per page, as a cine.

The scans go through :mod:`busai.pipeline` ``batch_size`` at a time: files are decoded ahead and
each batch's post-processing and writing (masks, overlays) run in a small thread pool while the
models run on the next batch. Rows are kept in input order, and every batch size gives the same
files and rows as a batch of one.
"""

from __future__ import annotations

import csv
import json
import tempfile
from collections import deque
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Self

from PIL import Image

from busai.config import MASK_THRESHOLD, PREDICT_BATCH_SIZE
from busai import pipeline
from busai.errors import BusaiError, ConfigError, DataError
from busai.io.scans import list_inputs, read_scans
from busai.outputs import printable
from busai.pipeline import load_models, models_by_task, networks_by_task  # noqa: F401  (prediction.load_models / models_by_task kept for callers)
from busai.rendering import (
    COLUMNS,
    PROBABILITY_KEYS,
    MASK_SUFFIX,
    OVERLAY_SUFFIX,
    PROBABILITY_SUFFIX,
    SEG_SUFFIX,
    empty_row,
    prediction_overlay,
    row_values,
    save_png,
    save_probability_png,
)

ModelSource = str | Path | None  # or a busai.backends.LoadedModel, or a busai.Model (it holds its network as .loaded)
WORKERS = 2  # decode / post-process / write threads beside the models: enough to keep two cores busy, few enough to bound memory


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
OPTION_DEFAULTS = {"overlays": True}  # settings an options file written before them did not record


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
    changed = sorted(key for key in options if stored.get(key, OPTION_DEFAULTS.get(key)) != options[key])
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
    backend: str = "auto",
    tta: bool = False,
    pixel_spacing: float | tuple[float, float] | None = None,
    threshold: float = MASK_THRESHOLD,
    progress: bool = True,
    resume: bool = False,
    device: str = "cpu",
    frame: int | None = None,
    scan_region: bool = True,
    gate: bool = True,
    save_probabilities: bool = False,
    dicom_seg: bool = False,
    overlays: bool = True,
    batch_size: int = PREDICT_BATCH_SIZE,
    workers: int = WORKERS,
) -> list[dict]:
    """Predict every input image into ``out_dir`` and return the rows of predictions.json.

    A file that cannot be decoded gets ``{"image": ..., "error": ...}`` (other keys None) and the
    batch continues. ``pixel_spacing`` (mm per pixel) adds the mm measurements where a DICOM file
    states none. A DICOM cine or a multi-page TIFF gives a row per frame, or only ``frame``
    (1-based; a file without that frame gets an error row).
    ``save_probabilities`` writes ``NAME_probability.png`` (16-bit, lesion probability x 65535);
    ``dicom_seg`` writes ``NAME_seg.dcm`` (a DICOM Segmentation) for each single-frame DICOM input;
    ``overlays=False`` writes no ``NAME_overlay.png`` (the overlay column stays empty).
    ``batch_size`` scans share a forward pass and ``workers`` threads decode, post-process and write
    beside the models (0: everything on the calling thread); neither changes a file or a row.
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
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"--batch-size {batch_size}: give a whole number of 1 or more")
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
                "backend": backend,  # as asked; runtime.paths says what ran (auto may pick ONNX Runtime by speed)
                "tta": tta,
                "pixel_spacing": pixel_spacing,
                "threshold": threshold,
                "frame": frame,
                "scan_region": scan_region,
                "gate": gate,
                "overlays": overlays,
            },
            default=str,
        )
    )
    done = {row_key(row): row for row in _check_earlier_batch(out_dir, options, resume)}
    atomic_write_text(out_dir / OPTIONS_FILE, json.dumps(options, indent=2) + "\n")
    settings = {"tta": tta, "scan_region": scan_region, "gate": gate, "threshold": threshold, "pixel_spacing": pixel_spacing}
    pool = ThreadPoolExecutor(workers, thread_name_prefix="busai-predict") if workers > 0 else None
    try:
        with tempfile.TemporaryDirectory(prefix="busai-onnx-") as workdir, _RowLog(out_dir, paths, done) as rows:
            models = load_models(seg, cls, backend=backend, workdir=workdir, device=device)
            by_task = networks_by_task(models)
            options["runtime"] = runtime_options(by_task, batch_size, workers)  # how, not what: never compared by --resume
            atomic_write_text(out_dir / OPTIONS_FILE, json.dumps(options, indent=2) + "\n")
            used = rows.used_stems()
            writer = _BatchWriter(out_dir, by_task, rows, pool, settings, overlays, save_probabilities, dicom_seg)
            for chunk in _batches(_decoded(_track(rows.todo(), progress), frame, pool, 2 * batch_size), batch_size):
                writer.run(chunk, used)
            writer.flush(0)
    finally:
        if pool is not None:
            pool.shutdown(wait=True, cancel_futures=True)  # Ctrl-C: queued writes are dropped, running ones end before the tables are final
    return rows.ordered()


def runtime_options(by_task: dict, batch_size: int, workers: int) -> dict:
    """What predictions.json's numbers do not depend on but its speed does: the batch, the threads,
    and each model's inference path (busai.inference.path_name), with the CPU it was chosen for."""
    from busai.inference import path_name
    from busai.machine import cpu_flags

    return {
        "batch_size": batch_size,
        "workers": workers,
        "paths": {task: path_name(network) for task, network in by_task.items()},
        "cpu_flags": cpu_flags(),
    }


class _BatchWriter:
    """One batch of decoded scans at a time: gate and crop (pool), the models (this thread), then each
    scan's post-processing and files (pool) while the next batch runs; rows join the log in input order."""

    def __init__(self, out_dir: Path, by_task: dict, rows: _RowLog, pool, settings: dict, overlays: bool, probabilities: bool, dicom_seg: bool):
        self.out_dir, self.by_task, self.rows, self.pool, self.settings = out_dir, by_task, rows, pool, settings
        self.overlays, self.probabilities, self.dicom_seg = overlays, probabilities, dicom_seg
        self.fusion = pipeline.diagnosis_fusion(by_task)  # the diagnosis, as busai.predict and serve answer
        self.pending: deque = deque()  # finished rows or futures of rows, in input order

    def _map(self, function, items):
        return list(self.pool.map(function, items)) if self.pool is not None else [function(item) for item in items]

    def _submit(self, function, *args):
        if self.pool is None:
            return function(*args)
        return self.pool.submit(function, *args)

    def flush(self, keep: int) -> None:
        """Append finished rows in order until at most ``keep`` are still pending."""
        while len(self.pending) > keep:
            item = self.pending.popleft()
            self.rows.append(item if isinstance(item, dict) else item.result())

    def run(self, chunk: list, used: set[str]) -> None:
        settings = self.settings
        scans = [(path, scan) for path, scan, _ in chunk if scan is not None]
        prepared = self._map(
            lambda item: pipeline.prepare_scan(
                self.by_task, item[1].image, scan_region=settings["scan_region"], gate=settings["gate"], geometry=item[1].geometry
            ),
            scans,
        )
        outputs = pipeline.run_models(self.by_task, prepared, tta=settings["tta"], threshold=settings["threshold"])
        self.flush(0)  # the previous batch's rows, post-processed while the models ran
        results = iter(zip(prepared, outputs))
        for path, scan, error in chunk:
            row = empty_row(str(path))
            if scan is None:
                row["error"] = error
                self.pending.append(row)
                continue
            row["frame"] = scan.frame
            prep, output = next(results)
            stem = None
            if "segmentation" in prep.inputs:  # a mask will be written: its name is taken now, in input order
                stem = _output_stem(path if scan.frames == 1 else path.with_name(f"{path.stem}_frame{scan.frame}"), used)
            self.pending.append(self._submit(self._finish, prep, output, row, stem, scan))

    def _finish(self, prepared, outputs: dict, row: dict, stem: str | None, scan) -> dict:
        settings = self.settings
        prediction = pipeline.finish_scan(
            prepared,
            outputs,
            threshold=settings["threshold"],
            pixel_spacing=settings["pixel_spacing"],
            keep_probability=self.probabilities,
            fusion=self.fusion,
        )
        row.update(row_values(prediction))
        if prediction.mask is None:
            return row
        row["mask"] = stem + MASK_SUFFIX
        save_png(prediction.mask * 255, self.out_dir / row["mask"])
        if self.overlays:
            row["overlay"] = stem + OVERLAY_SUFFIX
            save_png(prediction_overlay(prediction, scan.image), self.out_dir / row["overlay"])
        if prediction.lesion_probability is not None:
            row["probability"] = stem + PROBABILITY_SUFFIX
            save_probability_png(prediction.lesion_probability, self.out_dir / row["probability"])
        if self.dicom_seg and scan.dataset is not None and scan.frames == 1:
            from busai.io.dicom_seg import write_dicom_seg

            try:
                write_dicom_seg(scan.dataset, prediction.mask, self.out_dir / (stem + SEG_SUFFIX))
                row["dicom_seg"] = stem + SEG_SUFFIX
            except BusaiError as exc:  # the prediction stands; only its SEG copy failed
                row["error"] = str(exc)
        return row


def _read(path: Path, frame: int | None) -> tuple[list, str | None]:
    """Every scan of one file (a frame each for a cine) and the error that stopped reading it, if any."""
    scans: list = []
    try:
        for scan in read_scans(path, frame):
            scans.append(scan)
    except BusaiError as exc:
        return scans, str(exc)
    except Image.DecompressionBombError as exc:  # Pillow's guard against absurd pixel counts
        return scans, f"{path}: {exc}"
    return scans, None


def _decoded(paths, frame: int | None, pool, ahead: int):
    """(path, scan, None) per scan and (path, None, error) for a file that failed, in input order;
    with a pool, up to ``ahead`` files are decoded ahead of the models."""
    window: deque = deque()
    for path in paths:
        window.append((path, pool.submit(_read, path, frame) if pool is not None else _read(path, frame)))
        while len(window) > (ahead if pool is not None else 0):
            yield from _items(*window.popleft())
    while window:
        yield from _items(*window.popleft())


def _items(path: Path, read):
    scans, error = read if isinstance(read, tuple) else read.result()
    for scan in scans:
        yield path, scan, None
    if error is not None:
        yield path, None, error


def _batches(items, size: int):
    """Lists of ``size`` scans (error rows ride along with the scans beside them)."""
    chunk: list = []
    count = 0
    for item in items:
        chunk.append(item)
        count += item[1] is not None
        if count >= size:
            yield chunk
            chunk, count = [], 0
    if chunk:
        yield chunk


def _track(paths: list[Path], progress: bool):
    if not progress:
        return paths
    from rich.console import Console
    from rich.progress import track

    return track(paths, description=f"Predicting {len(paths)} images", console=Console(stderr=True), transient=True)
