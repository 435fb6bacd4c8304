"""What a dataset record takes from its DICOM image (or multi-page TIFF): which frame, and the pixel spacing.

Only the header is read here (frame count and geometry, through :mod:`busai.io.dicom`), never
the pixels and nothing of the patient's identity: the pixels are decoded when the image is used
(:func:`busai.data.discover.read_image`), which names the file when they cannot be, as it does
for a broken PNG.

- A cine (or a multi-page TIFF, whose pages are frames) needs a frame: the table's ``frame``
  column (1-based, as viewers count), else its first frame, with a ``first_frame`` note
  (:data:`NOTE`) so that choice is never silent.
- The pixel spacing fills ``Record.pixel_spacing_mm`` when the table gives none: the largest
  calibrated ultrasound region, else PixelSpacing (the order :class:`~busai.io.dicom.DicomGeometry`
  uses without a lesion to place). A record holds one spacing, so pixels that are not square
  leave it unknown rather than wrong. A stated spacing that is no plausible pixel size is a
  ``bad_pixel_spacing`` problem naming the file and the tag (``busai predict`` gives the same
  file an error row): the file is unusable until the tag is corrected.
"""

from __future__ import annotations

import math
from dataclasses import replace

from busai.data.records import TIFF_SUFFIXES, Problem, Record, Scan
from busai.errors import DataError

NOTE = "first_frame"
BAD_SPACING = "bad_pixel_spacing"


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
    record = with_frame(record, scan, frame_count(ds), frame, where)
    spacing = record.pixel_spacing_mm
    if spacing is None:
        try:
            spacing = square_spacing(geometry(ds, record.image))
        except DataError as exc:
            scan.problems.append(Problem(record.relpath, BAD_SPACING, str(exc)))
    return replace(record, pixel_spacing_mm=spacing)


def with_frame(record: Record, scan: Scan, frames: int, frame: int | None = None, where: str | None = None) -> Record:
    """``record`` with the frame it is of a file of ``frames`` frames (a DICOM cine or a multi-page
    TIFF): the table's ``frame``, checked, else the first frame of a file that has several, with
    a :data:`NOTE` in ``scan.problems``."""
    if frame is not None and frame > frames:
        raise DataError(f"{where or record.image}: frame {frame} is out of range; {record.relpath} holds {frames} frame(s), numbered from 1")
    if frame is None and frames > 1:
        frame = 1
        tiff = record.image.suffix.lower() in TIFF_SUFFIXES
        what = f"a multi-page TIFF of {frames} pages" if tiff else f"a cine of {frames} frames"
        scan.problems.append(
            Problem(
                record.relpath,
                NOTE,
                f"{record.relpath}: {what}; its first frame is used (name another in a frame column of a manifest or labels table)",
            )
        )
    return replace(record, frame=frame)


def square_spacing(shape) -> float | None:
    """The one mm-per-pixel value of a :class:`~busai.io.dicom.DicomGeometry`, or None when it
    states none or its pixels are not square."""
    spacing, _ = shape.spacing_at(None)
    if spacing is None or not math.isclose(spacing[0], spacing[1], rel_tol=1e-3):
        return None
    return float(spacing[0])
