"""One way in for every scan file: plain images, multi-page TIFFs and DICOM (every frame, or
one), and the folder listing that says what it left out and why."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from busai.errors import ConfigError, DataError
from busai.io.dicom import DicomGeometry, is_dicom

# Files predict itself writes, and the annotation masks that sit beside scans: left out silently.
OWN_OUTPUT_SUFFIXES = ("_pred_mask.png", "_overlay.png", "_probability.png", "_seg.dcm")
OWN_OUTPUT_NAMES = {"predictions.json", "predictions.csv"}


@dataclass
class ScanInput:
    """One scan to predict: the pixels, and for DICOM its frame number, geometry and dataset."""

    image: np.ndarray  # uint8 (H, W, 3)
    frame: int | None = None  # 1-based frame of a DICOM file, None for a plain image
    frames: int = 1
    geometry: DicomGeometry | None = None
    dataset: object | None = None  # the pydicom Dataset (for DICOM-SEG), never copied into tables


def list_inputs(inputs: list[str | Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
    """Files as given; a folder contributes the images and DICOM files directly inside it, in
    natural order. Returns (paths, skipped), skipped being (file, why) for every other file in a
    folder, so nothing is left out without a word. Annotation masks, predict's own outputs and
    hidden files are left out silently: a BUSI class folder or an output folder can be passed as it is.
    """
    from busai.data.discover import IMAGE_SUFFIXES, MASK_RE, natural_key

    paths: list[Path] = []
    skipped: list[tuple[Path, str]] = []
    for item in inputs:
        path = Path(item).expanduser()
        if not path.is_dir():
            paths.append(path)  # a missing or unreadable file becomes an error row, not a crash
            continue
        found = []
        for p in sorted(path.iterdir(), key=lambda p: natural_key(p.name)):
            if p.name.startswith(".") or p.name in OWN_OUTPUT_NAMES or p.name.endswith(OWN_OUTPUT_SUFFIXES):
                continue
            if not p.is_file():
                continue
            if p.suffix.lower() in IMAGE_SUFFIXES:
                if MASK_RE.match(p.stem):
                    continue  # NAME_mask.png beside NAME.png is an annotation
                found.append(p)
            elif is_dicom(p):
                found.append(p)
            else:
                why = (
                    "GIF is not a scan format busai reads (convert it to PNG)"
                    if p.suffix.lower() == ".gif"
                    else f"not an image or DICOM file (reads {', '.join(sorted(IMAGE_SUFFIXES))} and DICOM)"
                )
                skipped.append((p, why))
        if not found:
            raise DataError(f"{path}: no images found (looked for {', '.join(sorted(IMAGE_SUFFIXES))} and DICOM files); pass image files or another folder")
        paths.extend(found)
    if not paths:
        raise ConfigError("no input images given; pass image files or folders")
    return paths, skipped


def read_scans(path: str | Path, frame: int | None = None):
    """Yield the :class:`ScanInput` of a file: one for an image, one per frame for a DICOM cine or
    a multi-page TIFF (only ``frame``, 1-based, when given). Raises DataError for a file that
    cannot be read, or that has no frame ``frame``."""
    from busai.data.discover import image_frames, read_image

    path = Path(path)
    if path.is_file() and is_dicom(path):
        from busai.io.dicom import geometry, read_dataset, read_frames

        ds = read_dataset(path)
        shape = geometry(ds, path)
        for item in read_frames(path, frame, ds=ds):
            yield ScanInput(item.image, item.number, item.frames, shape, ds)
        return
    # A multi-page TIFF's pages are frames, as a cine's are: a row each, numbered from 1.
    frames = image_frames(path)
    for number in [frame] if frame is not None else range(1, frames + 1):
        image = read_image(path, mode="RGB", frame=number)
        yield ScanInput(image, number if frames > 1 else None, frames)
