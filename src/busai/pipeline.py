"""The per-scan pipeline: one scan (or a batch of them) in, one :class:`Prediction` each out.

Each scan passes the input gate (``input_check``: ``ok`` or why it is not a B-mode scan; a
flagged scan gets no answer) and, inside a screenshot, is cropped to its scan region before the
models see it; masks and measurements are in the input's own pixels. The steps are separate
functions so a batch can run them overlapped (:mod:`busai.prediction`): :func:`prepare_scan`
(gate, crop, model inputs), :func:`run_models` (each model once per batch), :func:`finish_scan`
(probability map at the scan's size, mask, measurements, review note). :func:`predict_scans`
chains them; a batch of one is the single-scan path, and any batch size gives the same predictions.
Rows, overlays and the web app's JSON are renderings of a :class:`Prediction` (:mod:`busai.rendering`).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from busai.config import MASK_THRESHOLD, PREDICT_BATCH_SIZE
from busai import CLASSES
from busai.config import BACKENDS  # noqa: F401  (pipeline.BACKENDS kept for callers)
from busai.errors import ConfigError
from busai.labels import class_names
from busai.preprocessing import rgb_array

DEFAULT_BATCH_SIZE = PREDICT_BATCH_SIZE  # kept for callers
PROBABILITY_KEYS = tuple(f"p_{c}" for c in CLASSES)  # always columns; a model with other classes adds its own (busai.prediction.columns_for)
CLASSIFIER_KEYS = tuple(f"classifier_p_{c}" for c in CLASSES)  # the classifier's own answer where the diagnosis fused it with the mask
DRAWING_KEYS = ("diameter_endpoints", "perpendicular_endpoints")  # in measurements, for the overlay; not columns


@dataclass(eq=False)  # numpy fields: compare field by field (np.array_equal)
class Prediction:
    """What the models said about one scan; a field stays None when no model of its task ran.

    ``mask`` is uint8 {0, 1} at the scan's own height x width and ``lesion_probability`` the
    segmenter's float map it was thresholded from (kept only when asked); ``measurements`` holds
    the keys of :data:`busai.measure.MEASUREMENT_KEYS` (mm keys None without a pixel spacing)
    plus ``diameter_endpoints`` and ``perpendicular_endpoints``; ``review`` says why a person should
    look when the two models disagree. ``input_check`` is ``ok`` or why the image is not taken for
    a B-mode scan (then no model answered); ``extra`` holds the other columns of a predictions row
    (scan region, spacing and its source). ``diagnosis`` says where ``label`` / ``probabilities``
    come from: ``fusion`` (the segmenter's lesion evidence fused with the classifier,
    :mod:`busai.diagnosis`; the classifier's own answer is then ``classifier_probabilities``) or
    ``classifier``.
    """

    width: int | None
    height: int | None
    input_check: str | None = None
    extra: dict | None = None
    label: str | None = None
    probabilities: dict[str, float] | None = None
    mask: np.ndarray | None = None
    lesion_probability: np.ndarray | None = None
    measurements: dict | None = None
    review: str | None = None
    diagnosis: str | None = None
    classifier_probabilities: dict[str, float] | None = None

    def to_row(self) -> dict:
        """The values ``busai predict`` writes to predictions.csv for this scan (no file columns)."""
        row: dict = {"width": self.width, "height": self.height, "input_check": self.input_check, **(self.extra or {})}
        if self.probabilities is not None:
            row["label"] = self.label
            # the model's own classes; the standard columns stay empty for a model with other classes (busai.labels)
            row.update({key: None for key in PROBABILITY_KEYS} | {f"p_{c}": round(p, 5) for c, p in self.probabilities.items()})
            row["diagnosis"] = self.diagnosis
            row.update({f"classifier_p_{c}": round(p, 5) for c, p in (self.classifier_probabilities or {}).items()})
        if self.measurements is not None:
            row.update({k: v for k, v in self.measurements.items() if k not in DRAWING_KEYS})
        row["review"] = self.review
        return row


def load_models(seg="release", cls="release", *, backend: str = "auto", workdir: str | Path | None = None, device: str = "cpu", grad_cam: bool = False) -> list:
    """The segmenter and / or classifier to predict with, as networks (:class:`busai.backends.LoadedModel`:
    what :func:`predict_scans` takes; ``busai.Model(x)`` wraps one).

    Each source is ``"release"``/None, a run folder, a saved or release folder, an .onnx file, a
    loaded :class:`busai.Model`, or ``"none"`` to skip that task. ``backend``: ``"auto"`` (PyTorch where
    torch is installed, else ONNX Runtime on the folders' ``model.onnx``), ``"torch"``, or ``"onnx"`` (a
    folder's ``model.onnx``, or PyTorch models exported into ``workdir``), see :func:`busai.export.load_backend`.
    ``device``: auto, cpu or cuda. ``grad_cam``: keep an ``"auto"`` classifier in PyTorch even where ONNX
    Runtime measured faster, so that it can draw Grad-CAM (serve's page offers it).
    """
    if backend not in BACKENDS:
        raise ConfigError(f"--backend {backend}: unknown; choose {', '.join(BACKENDS)}")
    from busai.export import load_backend  # imported here: start-up without torch

    models = [
        load_backend(source, task, device=device, backend=backend, workdir=workdir, by_speed=not (grad_cam and task == "classification"))
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


def networks_by_task(models) -> dict:
    """{task: network} (:class:`busai.backends.LoadedModel`) for what :func:`models_by_task` takes: what the stages run."""
    by_task = {task: _network(model) for task, model in models_by_task(models).items()}
    if _lesion_view(by_task) and "segmentation" not in by_task:
        raise ConfigError(
            f"{by_task['classification'].source}: a lesion-view classifier sees the lesion the segmenter outlines; predict it with a segmenter (--seg)"
        )
    return by_task


def _lesion_view(by_task: dict) -> bool:
    """Whether the classifier of ``by_task`` sees the lesion (a crop around the segmenter's mask), not the scan."""
    return "classification" in by_task and getattr(by_task["classification"], "view", "scan") == "lesion"


def _network(model):
    """The network a :class:`busai.Model` holds, or ``model`` itself when it is one; None for anything else."""
    from busai.backends import EnsembleLoaded, LoadedModel  # imported here: start-up without torch

    network = getattr(model, "loaded", model)
    return network if isinstance(network, (LoadedModel, EnsembleLoaded)) else None


@dataclass
class PreparedScan:
    """One scan between :func:`prepare_scan` and :func:`finish_scan`."""

    prediction: Prediction
    image: np.ndarray | None = None  # uint8 (H, W, 3): the whole input
    region: object = None  # busai.scan_region.ScanRegion
    inputs: dict = field(default_factory=dict)  # task -> normalised (3, S, S) tensor (None: made from the mask); empty: no model answers
    geometry: object = None  # a DICOM file's busai.io.dicom.DicomGeometry
    classes: tuple = CLASSES  # the classifier's own label set (busai.labels.class_names)


def prepare_scan(by_task: dict, image, *, scan_region: bool = True, gate: bool = True, geometry=None) -> PreparedScan:
    """Gate, crop to the scan region, and the normalised input of each network of ``by_task`` ({task: LoadedModel}: :func:`networks_by_task`)."""
    from busai.inference import model_input
    from busai.input_check import OK, check_array, check_input, image_statistics
    from busai.scan_region import locate_scan, whole_image

    image = np.asarray(image)
    width, height = (int(image.shape[1]), int(image.shape[0])) if image.ndim >= 2 else (None, None)
    result = Prediction(width=width, height=height, extra={})
    problem = check_array(image)
    if problem != OK:  # not readable as 8-bit pixels: nothing sensible to predict, whatever ``gate`` says
        result.input_check = problem
        return PreparedScan(result)
    image = rgb_array(image)
    region, tissue = locate_scan(image) if scan_region else (whole_image(image.shape), None)
    scan = region.crop(image)
    # The gate's texture statistic reuses the region search's tissue map when the scan is the whole image.
    result.input_check = check_input(scan, image_statistics(scan, tissue=None if region.cropped else tissue))
    if region.cropped:
        result.extra.update(scan_x=region.x0, scan_y=region.y0, scan_width=region.width, scan_height=region.height)
    prepared = PreparedScan(result, image, region, geometry=geometry)
    if "classification" in by_task:
        prepared.classes = tuple(class_names(by_task["classification"].spec))
    if gate and result.input_check != OK:
        return prepared
    # ONNX Runtime takes numpy arrays: no torch import on its path, installed or not. A lesion-view
    # classifier's input is cut around the segmenter's mask, so it is made in run_models.
    later = "classification" if _lesion_view(by_task) else None
    prepared.inputs = {task: None if task == later else model_input(network, scan, as_array=_as_array(network)) for task, network in by_task.items()}
    return prepared


def _as_array(network) -> bool | None:
    return True if network.backend == "onnx" else None


def run_models(by_task: dict, scans: Sequence[PreparedScan], *, tta: bool = False, precision: str = "auto", threshold: float = MASK_THRESHOLD) -> list[dict]:
    """Each model once over the scans it answers (one batch): per scan {task: probabilities} (empty for a withheld answer).
    A lesion-view classifier runs after the segmenter, on the lesion its mask (``prob >= threshold``) outlines."""
    from busai.inference import model_input, predict_tensor, stack_inputs

    outputs: list[dict] = [{} for _ in scans]
    for task, model in sorted(by_task.items(), key=lambda item: item[0] != "segmentation"):
        answered = [i for i, s in enumerate(scans) if task in s.inputs]
        if not answered:
            continue
        inputs = [scans[i].inputs[task] for i in answered]
        if task == "classification" and _lesion_view(by_task):
            inputs = [
                model_input(model, scans[i].region.crop(scans[i].image), as_array=_as_array(model), mask=np.asarray(outputs[i]["segmentation"]) >= threshold)
                for i in answered
            ]
        probs = predict_tensor(model, stack_inputs(inputs), precision, tta=tta)
        for i, p in zip(answered, probs):
            outputs[i][task] = p
    return outputs


def diagnosis_fusion(by_task: dict):
    """The classifier's stored fusion with this segmenter (:func:`busai.diagnosis.fusion_for`), or None."""
    if "classification" not in by_task or "segmentation" not in by_task:
        return None
    from busai.diagnosis import Fusion, fusion_for

    classifier = by_task["classification"]
    fusion = fusion_for(classifier.source, by_task["segmentation"].source, class_names(classifier.spec))
    # A lesion-view classifier has no "normal": without a fitted fusion, lesion or not is the segmenter's say.
    return fusion if fusion is not None or not _lesion_view(by_task) else Fusion.segmenter_only()


def finish_scan(
    prepared: PreparedScan, outputs: dict, *, threshold: float = MASK_THRESHOLD, pixel_spacing=None, keep_probability: bool = False, fusion=None
) -> Prediction:
    """The models' outputs for one scan -> its :class:`Prediction`: class, mask at the scan's size, measurements, review.

    With a ``fusion`` (:func:`diagnosis_fusion`) and both models' outputs, the class comes from the
    segmenter's largest component fused with the classifier (the diagnosis), else from the classifier."""
    from busai.inference import upsample_probability
    from busai.measure import largest_component, measure_lesion

    result = prepared.prediction
    if not outputs and not prepared.inputs:
        return result
    if "classification" in outputs:
        probs = np.asarray(outputs["classification"])  # a CPU tensor, or an array without torch
        classes = prepared.classes
        result.label = classes[int(probs.argmax())]
        result.probabilities = {c: float(p) for c, p in zip(classes, probs)}
        result.diagnosis = "classifier"
    if "segmentation" in outputs:
        region, image = prepared.region, prepared.image
        scan_shape = (region.height, region.width)
        prob = region.paste(upsample_probability(outputs["segmentation"], scan_shape).astype(np.float32), image.shape[:2])
        mask = (prob >= threshold).astype(np.uint8)  # the rule busai.metrics scores by
        component = largest_component(mask)  # labelled once, for the measurements and the fusion
        spacing, source = lesion_spacing(mask, prepared.geometry, pixel_spacing, component)
        if spacing is not None:
            result.extra.update(spacing_row_mm=round(spacing[0], 6), spacing_column_mm=round(spacing[1], 6), spacing_source=source)
        result.mask = mask
        result.measurements = measure_lesion(mask, spacing, skin_row=region.y0, component=component)
        if keep_probability:
            result.lesion_probability = prob
        if fusion is not None and result.probabilities is not None:
            from busai.presence import component_features

            result.classifier_probabilities = result.probabilities
            result.probabilities = fusion.diagnose(
                component_features(prob, threshold, component=component), list(result.classifier_probabilities.values()), prepared.classes
            )
            result.label = max(result.probabilities, key=result.probabilities.get)
            result.diagnosis = "fusion"
    result.review = review_note(result.label, (result.measurements or {}).get("lesion_count"))
    return result


def predict_scans(
    models,
    images: Iterable,
    *,
    tta: bool = False,
    pixel_spacing=None,
    threshold: float = MASK_THRESHOLD,
    scan_region: bool = True,
    gate: bool = True,
    geometries: Iterable | None = None,
    keep_probability: bool = False,
    precision: str = "auto",
    batch_size: int = DEFAULT_BATCH_SIZE,
) -> list[Prediction]:
    """uint8 (H, W[, 3]) scans -> one :class:`Prediction` each, by at most one segmenter and one
    classifier (:func:`load_models`), ``batch_size`` scans per forward pass.

    ``scan_region`` crops a screenshot to the scan before the models (the mask comes back at the
    image's size); ``gate`` withholds the answer (no label, no mask) when ``input_check`` is not
    ``ok``. ``geometries`` (a DICOM file's :class:`~busai.io.dicom.DicomGeometry` per scan, or None)
    give the pixel spacing where the lesion lies; ``pixel_spacing`` (mm) is used where they give none.
    """
    by_task = networks_by_task(models)
    fusion = diagnosis_fusion(by_task)
    images = list(images)
    geometries = list(geometries) if geometries is not None else [None] * len(images)
    results: list[Prediction] = []
    for start in range(0, len(images), max(1, batch_size)):
        chunk = [
            prepare_scan(by_task, image, scan_region=scan_region, gate=gate, geometry=geometry)
            for image, geometry in zip(images[start : start + batch_size], geometries[start : start + batch_size])
        ]
        for prepared, outputs in zip(chunk, run_models(by_task, chunk, tta=tta, precision=precision, threshold=threshold)):
            results.append(finish_scan(prepared, outputs, threshold=threshold, pixel_spacing=pixel_spacing, keep_probability=keep_probability, fusion=fusion))
    return results


def predict_from_records(models, records: Sequence, *, chunk: int = 16, **options) -> Iterable[tuple[object, Prediction]]:
    """(record, :class:`Prediction`) for each of a dataset's records (:class:`~busai.data.records.Record`),
    read ``chunk`` at a time so a whole dataset is never held in memory (the options of :func:`predict_scans`)."""
    from busai.data.discover import read_image

    for start in range(0, len(records), chunk):
        part = records[start : start + chunk]
        yield from zip(part, predict_scans(models, [read_image(r.image, frame=r.frame) for r in part], **options))


def predict_scan(models, image, *, geometry=None, **options) -> Prediction:
    """One scan -> its :class:`Prediction` (the options of :func:`predict_scans`)."""
    return predict_scans(models, [image], geometries=[geometry], **options)[0]


def lesion_spacing(mask: np.ndarray, geometry, pixel_spacing, component: tuple[np.ndarray, int] | None = None) -> tuple[tuple[float, float] | None, str | None]:
    """(row, column) mm per pixel for the lesion in ``mask`` and where it came from: the DICOM
    region holding the lesion's centre (or the file's PixelSpacing), else ``pixel_spacing``.
    ``component`` is :func:`~busai.measure.largest_component` of ``mask`` when the caller has it."""
    from busai.measure import largest_component, spacing_mm

    if geometry is not None:
        region, count = component if component is not None else largest_component(mask)
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
