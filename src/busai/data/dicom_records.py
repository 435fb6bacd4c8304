"""What a dataset record takes from its DICOM image: which frame of a cine, and the pixel spacing.

Only the header is read here (frame count and geometry, through :mod:`busai.io.dicom`), never
the pixels and nothing of the patient's identity: the pixels are decoded when the image is used
(:func:`busai.data.discover.read_image`), which names the file when they cannot be, as it does
for a broken PNG.

- A cine needs a frame: the table's ``frame`` column (1-based, as viewers count), else its first
  frame, with a ``first_frame`` note (:data:`NOTE`) so that choice is never silent.
- The pixel spacing fills ``Record.pixel_spacing_mm`` when the table gives none: the largest
  calibrated ultrasound region, else PixelSpacing (the order :class:`~busai.io.dicom.DicomGeometry`
  uses without a lesion to place). A record holds one spacing, so pixels that are not square
  leave it unknown rather than wrong.
"""

from __future__ import annotations

import math
from dataclasses import replace

from busai.data.records import Problem, Record, Scan
from busai.errors import DataError

NOTE = "first_frame"
SPACING_MM = (0.001, 10.0)  # the range a table's pixel_spacing_mm accepts


def with_dicom_fields(record: Record, scan: Scan, frame: int | None = None, where: str | None = None) -> Record:
    """``record`` (a DICOM image) with its frame and, when it has none, its pixel spacing.

    ``frame`` is the table's frame number, checked against the file's frame count (``where``,
    e.g. ``TABLE row N``, names the row in the error).
    """
    from busai.io.dicom import frame_count, geometry, read_dataset

    try:
        ds = read_dataset(record.image, header_only=True)
    except DataError:
        return replace(record, frame=frame)  # reported, with the file's name, when the image is decoded
    frames = frame_count(ds)
    if frame is not None and frame > frames:
        raise DataError(f"{where or record.image}: frame {frame} is out of range; {record.relpath} holds {frames} frame(s), numbered from 1")
    if frame is None and frames > 1:
        frame = 1
        scan.problems.append(
            Problem(
                record.relpath,
                NOTE,
                f"{record.relpath}: a cine of {frames} frames; its first frame is used (name another in a frame column of a manifest or labels table)",
            )
        )
    spacing = record.pixel_spacing_mm if record.pixel_spacing_mm is not None else square_spacing(geometry(ds))
    return replace(record, frame=frame, pixel_spacing_mm=spacing)


def square_spacing(shape) -> float | None:
    """The one mm-per-pixel value of a :class:`~busai.io.dicom.DicomGeometry`, or None when it
    states none, its pixels are not square, or the value is outside :data:`SPACING_MM`."""
    spacing, _ = shape.spacing_at(None)
    if spacing is None or not math.isclose(spacing[0], spacing[1], rel_tol=1e-3):
        return None
    return float(spacing[0]) if SPACING_MM[0] <= spacing[0] <= SPACING_MM[1] else None
