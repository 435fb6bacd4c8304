"""Helpers for the clinical-input tests. DICOM files built with pydicom: an ultrasound frame with
its region sequence, a cine, an extensionless export, MONOCHROME1, YBR, 16-bit and compressed
variants (the patient attributes are invented and must never reach busai's tables); a drawn
lesion of known size and a stand-in segmenter whose answer is known."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from busai.api import Model
from busai.runs import LoadedModel

PATIENT_NAME, PATIENT_ID = "Testpatient^Secret", "PID-31415"
US_IMAGE_STORAGE = "1.2.840.10008.5.1.4.1.1.6.1"
US_MULTIFRAME_STORAGE = "1.2.840.10008.5.1.4.1.1.3.1"


def speckle_scan(height=240, width=320, seed=0, lesion=None) -> np.ndarray:
    """uint8 grey (H, W) speckled tissue; ``lesion`` = (cy, cx, ry, rx) draws a dark ellipse."""
    rng = np.random.default_rng(seed)
    tissue = 90 + 40 * np.sin(np.linspace(0, 6, height))[:, None]
    image = tissue * rng.rayleigh(0.8, (height, width))
    if lesion is not None:
        cy, cx, ry, rx = lesion
        yy, xx = np.mgrid[:height, :width]
        image[((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1] *= 0.15
    return np.clip(image, 0, 255).astype(np.uint8)


def region(x0, y0, x1, y1, delta_cm_x, delta_cm_y, units=3):
    from pydicom.dataset import Dataset

    item = Dataset()
    item.RegionSpatialFormat = 1
    item.RegionDataType = 1
    item.RegionFlags = 0
    item.RegionLocationMinX0, item.RegionLocationMinY0 = x0, y0
    item.RegionLocationMaxX1, item.RegionLocationMaxY1 = x1, y1
    item.PhysicalUnitsXDirection = item.PhysicalUnitsYDirection = units
    item.PhysicalDeltaX, item.PhysicalDeltaY = delta_cm_x, delta_cm_y
    return item


def write_dicom(path, pixels: np.ndarray, *, photometric=None, regions=(), pixel_spacing=None, extra=None, compress=None) -> Path:
    """``pixels``: (H, W) grey, (H, W, 3) colour, or (frames, H, W[, 3]) for a cine."""
    from pydicom.dataset import FileDataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    pixels = np.asarray(pixels)
    colour = pixels.shape[-1] == 3 and pixels.ndim in (3, 4) and not (pixels.ndim == 3 and photometric and photometric.startswith("MONO"))
    frames = pixels.shape[0] if pixels.ndim == (4 if colour else 3) else 1
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = US_MULTIFRAME_STORAGE if frames > 1 else US_IMAGE_STORAGE
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID, ds.SOPInstanceUID = meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID
    ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = PATIENT_NAME, PATIENT_ID, "19700101", "F"
    ds.StudyInstanceUID, ds.SeriesInstanceUID = generate_uid(), generate_uid()
    ds.StudyDate, ds.StudyTime, ds.StudyID, ds.AccessionNumber = "20260101", "100000", "1", "ACC1"
    ds.ReferringPhysicianName = "Doctor^Ref"
    ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "US", 1, 1
    ds.Manufacturer = "TestScanner"
    ds.FrameOfReferenceUID = generate_uid()
    ds.PositionReferenceIndicator = ""
    rows, columns = pixels.shape[-3:-1] if colour else pixels.shape[-2:]
    ds.Rows, ds.Columns = rows, columns
    ds.SamplesPerPixel = 3 if colour else 1
    ds.PhotometricInterpretation = photometric or ("RGB" if colour else "MONOCHROME2")
    if colour:
        ds.PlanarConfiguration = 0
    bits = 16 if pixels.dtype == np.uint16 else 8
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    if frames > 1:
        ds.NumberOfFrames = frames
        ds.FrameIncrementPointer = (0x0018, 0x1063)
        ds.FrameTime = 33.3
    if regions:
        ds.SequenceOfUltrasoundRegions = list(regions)
    if pixel_spacing is not None:
        ds.PixelSpacing = list(pixel_spacing)
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    ds.PixelData = np.ascontiguousarray(pixels).tobytes()
    if compress is not None:
        ds.compress(compress)
    ds.save_as(path, enforce_file_format=True)
    return Path(path)


class DarkIsLesion(torch.nn.Module):
    """A 'segmenter' whose answer is known: lesion wherever the scan is dark (grey < 60)."""

    def __init__(self):
        super().__init__()
        self.unused = torch.nn.Parameter(torch.zeros(1))  # inference code reads the device from a parameter

    def forward(self, x):
        return (60 / 255 - x[:, :1]) * 500


def dark_is_lesion(size=320) -> list[Model]:
    loaded = LoadedModel(DarkIsLesion().eval(), "segmentation", {"name": "stub"}, size, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), {}, "stub")
    return [Model(loaded)]


def ellipse_scan(height=240, width=320, centre=(120, 100), radii=(20, 50), seed=0) -> np.ndarray:
    """Grey speckled tissue (never darker than 60) with a black ellipse of known size."""
    rng = np.random.default_rng(seed)
    image = np.clip(125 + rng.normal(0, 15, (height, width)), 70, 255)
    yy, xx = np.mgrid[:height, :width]
    image[((yy - centre[0]) / radii[0]) ** 2 + ((xx - centre[1]) / radii[1]) ** 2 <= 1] = 10
    return image.astype(np.uint8)
