"""DICOM scans as a clinic exports them: frames as uint8 RGB, and the pixel size the file states.

Reading goes through pydicom (``pip install 'busai[dicom]'``, which also brings the pylibjpeg
decoders for JPEG-compressed files). Every frame of a cine is a scan of its own. Grey images
(MONOCHROME2; MONOCHROME1 is inverted so tissue is bright), RGB, YBR (converted to RGB by
pydicom) and palette colour come out as uint8 RGB; more than 8 bits are windowed by the file's
Window Center / Width, else scaled by their own range, as a display would show them.

Pixel spacing comes, in order of preference, from the ultrasound region sequence
(SequenceOfUltrasoundRegions: PhysicalDeltaX / Y in cm when PhysicalUnitsX / YDirection is 3),
choosing the region that holds the lesion; then from PixelSpacing; then ImagerPixelSpacing.
Only pixels and these geometry attributes are read into outputs: nothing of the patient's identity.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from busai.errors import DataError

DICOM_SUFFIXES = {".dcm", ".dicom"}
CM_UNITS = 3  # PhysicalUnitsX/YDirection code for centimetres (DICOM PS3.3 C.8.5.5.1.15)
INSTALL = "pip install 'busai[dicom]'"


@dataclass(frozen=True)
class UltrasoundRegion:
    """One calibrated region of an ultrasound frame: its box (x1, y1 inclusive, as DICOM has it)
    and its pixel size in mm as (row, column)."""

    x0: int
    y0: int
    x1: int
    y1: int
    spacing_mm: tuple[float, float]

    def holds(self, x: float, y: float) -> bool:
        return self.x0 <= x <= self.x1 and self.y0 <= y <= self.y1

    @property
    def area(self) -> int:
        return (self.x1 - self.x0 + 1) * (self.y1 - self.y0 + 1)


@dataclass(frozen=True)
class DicomGeometry:
    """What a DICOM file says about pixel size, for any of its frames."""

    regions: tuple[UltrasoundRegion, ...] = ()
    pixel_spacing: tuple[float, float] | None = None
    pixel_spacing_source: str | None = None  # "PixelSpacing" or "ImagerPixelSpacing"

    def spacing_at(self, point: tuple[float, float] | None) -> tuple[tuple[float, float] | None, str | None]:
        """(row, column) mm per pixel at ``point`` (x, y; e.g. the lesion's centre) and where it came from.

        Without a point, or when no region holds it, the largest calibrated region is used: it is
        the B-mode image on a screen that also shows, e.g., a small Doppler strip.
        """
        if self.regions:
            holding = [r for r in self.regions if point is not None and r.holds(*point)]
            region = min(holding, key=lambda r: r.area) if holding else max(self.regions, key=lambda r: r.area)
            return region.spacing_mm, f"SequenceOfUltrasoundRegions[{self.regions.index(region)}]"
        if self.pixel_spacing is not None:
            return self.pixel_spacing, self.pixel_spacing_source
        return None, None


@dataclass
class DicomFrame:
    image: np.ndarray  # uint8 (H, W, 3)
    number: int  # 1-based frame number, as DICOM viewers count
    frames: int  # frames in the file


def _pydicom():
    try:
        import pydicom
    except ModuleNotFoundError:
        raise DataError(f"reading DICOM files needs pydicom; {INSTALL}") from None
    return pydicom


def is_dicom(path: str | Path) -> bool:
    """A ``.dcm`` / ``.dicom`` file, or any file with the DICM marker after its 128-byte preamble
    (scanners export files named ``IM000001`` with no extension)."""
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with path.open("rb") as fh:
            head = fh.read(132)
    except OSError:
        return False
    return len(head) == 132 and head[128:] == b"DICM"


def read_dataset(path: str | Path, *, header_only: bool = False):
    """The pydicom Dataset, with one-line errors for a file that is not DICOM or holds no image.
    ``header_only`` stops before the pixel data: what a dataset reader needs (frames, geometry)
    without reading a whole cine."""
    pydicom = _pydicom()
    path = Path(path)
    try:
        ds = pydicom.dcmread(path, stop_before_pixels=header_only)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; check the path") from None
    except (pydicom.errors.InvalidDicomError, OSError, ValueError, EOFError) as exc:
        raise DataError(f"{path}: not a readable DICOM file ({exc.__class__.__name__}); replace or remove the file") from None
    if "PixelData" not in ds and not (header_only and "Rows" in ds):
        kind = getattr(ds, "Modality", None) or "non-image"
        raise DataError(f"{path}: a DICOM {kind} object with no image in it; pass the scan's image file")
    return ds


def frame_count(ds) -> int:
    return int(getattr(ds, "NumberOfFrames", 1) or 1)


def geometry(ds, path: str | Path = "") -> DicomGeometry:
    """The calibrated regions and pixel spacing a dataset states (see the module docstring).

    A stated spacing that is no plausible pixel size (:func:`busai.measure.stated_spacing`) is a
    DataError naming ``path`` and the tag: every B-mode region's, and PixelSpacing /
    ImagerPixelSpacing when no region calibrates the image (then they are what would be used).
    """
    from busai.measure import stated_spacing

    fix = "correct or remove the tag in the file"
    regions = []
    for index, item in enumerate(getattr(ds, "SequenceOfUltrasoundRegions", []) or []):
        try:
            units = (int(item.PhysicalUnitsXDirection), int(item.PhysicalUnitsYDirection))
            delta = (abs(float(item.PhysicalDeltaY)), abs(float(item.PhysicalDeltaX)))
            box = [int(getattr(item, k)) for k in ("RegionLocationMinX0", "RegionLocationMinY0", "RegionLocationMaxX1", "RegionLocationMaxY1")]
        except (AttributeError, TypeError, ValueError):
            continue  # an incomplete region cannot calibrate anything
        if units != (CM_UNITS, CM_UNITS) or not all(np.isfinite(d) and d > 0 for d in delta):
            continue  # Doppler / M-mode regions measure time or velocity, not distance
        for axis, cm in zip("YX", delta):
            stated_spacing(cm * 10.0, f"{path}: SequenceOfUltrasoundRegions[{index}] PhysicalDelta{axis} {cm:g} cm", fix)
        regions.append(UltrasoundRegion(*box, spacing_mm=(delta[0] * 10.0, delta[1] * 10.0)))
    for keyword in ("PixelSpacing", "ImagerPixelSpacing"):
        value = getattr(ds, keyword, None)
        try:
            spacing = (float(value[0]), float(value[1])) if value is not None else None
        except (TypeError, ValueError, IndexError):
            spacing = None
        if spacing and all(np.isfinite(v) and v > 0 for v in spacing):
            if not regions:
                for v in spacing:
                    stated_spacing(v, f"{path}: {keyword} {v:g} mm", fix)
            return DicomGeometry(tuple(regions), spacing, keyword)
    return DicomGeometry(tuple(regions))


def to_uint8_rgb(pixels: np.ndarray, ds) -> np.ndarray:
    """One decoded frame (H, W) or (H, W, 3) -> uint8 (H, W, 3) as a display shows it."""
    photometric = str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        pixels = apply_color_lut(pixels, ds)
    pixels = np.asarray(pixels)
    if pixels.dtype != np.uint8:
        pixels = _window(pixels.astype(np.float64), ds)
    if photometric == "MONOCHROME1":
        pixels = 255 - pixels  # MONOCHROME1 shows low values white
    if pixels.ndim == 2:
        pixels = np.repeat(pixels[..., None], 3, axis=2)
    return np.ascontiguousarray(pixels[..., :3])


def _first_number(value) -> float | None:
    """A DICOM DS value that may be multi-valued (several windows): the first, or None."""
    if value is None:
        return None
    try:
        return float(value if isinstance(value, (int, float, str)) else value[0])
    except (TypeError, ValueError, IndexError):
        return None


def _window(values: np.ndarray, ds) -> np.ndarray:
    center, width = _first_number(getattr(ds, "WindowCenter", None)), _first_number(getattr(ds, "WindowWidth", None))
    if center is not None and width is not None and width > 1:
        lo, hi = center - 0.5 - (width - 1) / 2, center - 0.5 + (width - 1) / 2
    else:
        lo, hi = float(values.min()), float(values.max())
    scaled = (values - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(values)
    return np.clip(scaled, 0, 255).round().astype(np.uint8)


def read_frames(path: str | Path, frame: int | None = None, ds=None):
    """Yield each frame of ``path`` (or only 1-based ``frame``) as a :class:`DicomFrame`, one at a time,
    so a long cine never sits in memory whole."""
    from pydicom.pixels import pixel_array

    from busai.data.records import check_frame

    path = Path(path)
    ds = read_dataset(path) if ds is None else ds
    total = frame_count(ds)
    if frame is not None:
        check_frame(path, frame, total)
    for number in [frame] if frame is not None else range(1, total + 1):
        try:
            pixels = pixel_array(ds, index=number - 1) if total > 1 else pixel_array(ds)
        except (RuntimeError, NotImplementedError, ValueError) as exc:
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            name = getattr(syntax, "name", syntax) or "unknown transfer syntax"
            # Uncompressed pixels need no decoder: what fails there is the file itself (too few bytes).
            fix = (
                "the file is truncated or damaged; export it again from the scanner or PACS"
                if getattr(syntax, "is_compressed", True) is False
                else f"install the decoders with {INSTALL}, or export the scan uncompressed"
            )
            raise DataError(f"{path}: cannot decode its pixel data ({name}: {str(exc).splitlines()[0][:120]}); {fix}") from None
        yield DicomFrame(to_uint8_rgb(pixels, ds), number, total)
