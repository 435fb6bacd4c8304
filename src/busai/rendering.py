"""Renderings of a :class:`~busai.pipeline.Prediction`: the predictions row (CSV / JSON columns),
the overlay picture, and the web app's JSON answer. Nothing here runs a model."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from busai.measure import MEASUREMENT_KEYS
from busai.pipeline import CLASSIFIER_KEYS, DRAWING_KEYS, PROBABILITY_KEYS, Prediction

MASK_SUFFIX, OVERLAY_SUFFIX, PROBABILITY_SUFFIX, SEG_SUFFIX = "_pred_mask.png", "_overlay.png", "_probability.png", "_seg.dcm"
SCAN_KEYS = ("scan_x", "scan_y", "scan_width", "scan_height")  # the scan region; None when the scan is the whole image
SPACING_KEYS = ("spacing_row_mm", "spacing_column_mm", "spacing_source")
COLUMNS = (
    "image",
    "frame",
    "input_check",
    "label",
    *PROBABILITY_KEYS,
    "diagnosis",
    *CLASSIFIER_KEYS,
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


def empty_row(image: str) -> dict:
    return {key: None for key in COLUMNS} | {"image": image}


def row_values(prediction: Prediction) -> dict:
    """A prediction's values of a predictions row (no file columns: image, frame, mask, overlay, error)."""
    return prediction.to_row()


def predict_array(models, image_rgb: np.ndarray, *, keep_probability: bool = False, geometry=None, **options) -> tuple[dict, np.ndarray | None]:
    """One scan as a row: (row values plus ``diameter_endpoints`` / ``perpendicular_endpoints`` for
    drawing and ``probability_map`` with ``keep_probability``, the {0, 1} mask or None); the options
    of :func:`busai.pipeline.predict_scans`."""
    from busai.pipeline import predict_scan

    prediction = predict_scan(models, image_rgb, geometry=geometry, keep_probability=keep_probability, **options)
    row = row_values(prediction)
    if prediction.measurements is not None:
        row.update({k: prediction.measurements.get(k) for k in DRAWING_KEYS})
    if keep_probability and prediction.lesion_probability is not None:
        row["probability_map"] = prediction.lesion_probability
    return row, prediction.mask


def label_caption(row: dict) -> str | None:
    """The overlay's caption from a row: the class and its (rounded) probability."""
    if row.get("label") is None:
        return None
    return f"{row['label']} {row['p_' + row['label']]:.2f}"


def outline(mask: np.ndarray, thickness: int) -> np.ndarray:
    """The lesion's pixels within ``thickness`` steps (4-neighbour) of the background or the image's edge.

    Equal to ``lesion & ~binary_erosion(lesion, iterations=thickness, border_value=0)`` (tested), in
    one distance-transform pass over the lesion's bounding box instead of ``thickness`` erosions of the whole image.
    """
    lesion = mask.astype(bool)
    result = np.zeros_like(lesion)
    rows, cols = np.nonzero(lesion.any(1))[0], np.nonzero(lesion.any(0))[0]
    if not len(rows):
        return result
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    box = np.pad(lesion[y0:y1, x0:x1], 1)  # outside the box (or the image) is background, as border_value=0 says
    distance = ndimage.distance_transform_cdt(box, metric="taxicab")[1:-1, 1:-1]
    result[y0:y1, x0:x1] = lesion[y0:y1, x0:x1] & (distance <= thickness)
    return result


def draw_overlay(image_rgb: np.ndarray, mask: np.ndarray, diameter_endpoints=None, caption: str | None = None, perpendicular_endpoints=None) -> Image.Image:
    """The scan with the lesion contour, its longest (and perpendicular) diameter and an optional caption (e.g. the class)."""
    height, width = mask.shape
    thickness = max(1, round(max(height, width) / 300))
    overlay = image_rgb.copy()
    overlay[outline(mask, thickness)] = CONTOUR_RGB
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


def prediction_overlay(prediction: Prediction, image_rgb: np.ndarray) -> Image.Image:
    """:func:`draw_overlay` for a prediction: its mask (an empty one without a segmenter), diameters and class caption."""
    from busai.preprocessing import rgb_array

    measurements = prediction.measurements or {}
    mask = prediction.mask if prediction.mask is not None else np.zeros(np.asarray(image_rgb).shape[:2], dtype=np.uint8)
    return draw_overlay(
        rgb_array(image_rgb),
        mask,
        measurements.get("diameter_endpoints"),
        label_caption(row_values(prediction)),
        measurements.get("perpendicular_endpoints"),
    )


# zlib level 3: as small as Pillow's default level 6 on masks and overlays, and several times faster
# to write; at level 6 the encoder took more of `busai predict` than both networks.
PNG_LEVEL = 3


def save_png(picture: np.ndarray | Image.Image, target) -> None:
    """Write ``picture`` (an array or a PIL image) as a PNG to a path or a binary file object."""
    picture = picture if isinstance(picture, Image.Image) else Image.fromarray(picture)
    picture.save(target, format="PNG", compress_level=PNG_LEVEL)


def save_probability_png(probability: np.ndarray, path) -> None:
    """A lesion probability map as a 16-bit grey PNG: value / 65535 is the probability."""
    save_png((np.clip(probability, 0, 1) * 65535).round().astype(np.uint16), path)
