"""The predicted mask as a DICOM Segmentation (highdicom), so a PACS viewer shows it on the scan.

The SEG object references its source image and belongs to the same patient and study: highdicom
copies the source's patient and study attributes into it, as the standard requires for a viewer
to place it. It is the one output of ``busai predict`` that carries the patient's identity, and
only when asked for (``--dicom-seg``); the tables, masks and overlays carry none.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from busai.errors import ConfigError, DataError
from busai.outputs import atomic_write

INSTALL = "pip install 'busai[dicom]'"


def require_highdicom():
    try:
        import highdicom
    except ModuleNotFoundError:
        raise ConfigError(f"--dicom-seg needs highdicom; {INSTALL}") from None
    return highdicom


def write_dicom_seg(source, mask: np.ndarray, path: str | Path) -> Path:
    """Write the {0, 1} (H, W) lesion ``mask`` of the single-frame pydicom dataset ``source`` as a
    binary DICOM SEG file at ``path`` (atomically).

    highdicom builds a SEG for a multi-frame source only when the frames have a patient
    coordinate system, which ultrasound cines lack: a cine gets PNG masks only.
    """
    hd = require_highdicom()
    from pydicom.sr.codedict import codes

    from busai import __version__

    if int(getattr(source, "NumberOfFrames", 1) or 1) > 1:
        raise DataError(
            f"{getattr(source, 'filename', 'DICOM input')}: a multi-frame (cine) file; a DICOM SEG is written for single-frame scans only, use the PNG masks"
        )
    pixels = np.asarray(mask)[None].astype(bool)
    description = hd.seg.SegmentDescription(
        segment_number=1,
        segment_label="lesion",
        segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
        segmented_property_type=codes.SCT.Lesion,
        algorithm_type=hd.seg.SegmentAlgorithmTypeValues.AUTOMATIC,
        algorithm_identification=hd.AlgorithmIdentificationSequence(name="busai", version=__version__, family=codes.cid7162.ArtificialIntelligence),
    )
    try:
        seg = hd.seg.Segmentation(
            source_images=[source],
            pixel_array=pixels,
            segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
            segment_descriptions=[description],
            series_instance_uid=hd.UID(),
            series_number=900,
            sop_instance_uid=hd.UID(),
            instance_number=1,
            manufacturer="busai",
            manufacturer_model_name="busai predict",
            software_versions=__version__,
            device_serial_number="none",
            omit_empty_frames=False,
        )
    except (ValueError, TypeError, AttributeError) as exc:
        raise DataError(
            f"{getattr(source, 'filename', 'DICOM input')}: cannot build a DICOM SEG for it ({str(exc).splitlines()[0][:160]}); use the PNG mask instead"
        ) from None
    path = Path(path)
    atomic_write(path, lambda tmp: seg.save_as(tmp))
    return path
