"""Reading one uploaded scan in two steps, so the server's memory stays bounded.

:func:`receive_upload` runs for every request as it arrives: it checks the type, the size in bytes
and, from the image header alone, the pixel count; nothing is decoded. :func:`decode_upload` does
the decoding and is called inside the server's one-at-a-time section, so however many uploads
wait, at most one decoded image is in memory. A new upload kind (e.g. DICOM) adds its content
type to :data:`IMAGE_TYPES` and a branch to :func:`header_size` and :func:`decode_upload`.
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass
from pathlib import Path

from fastapi import HTTPException, UploadFile
from PIL import Image

from busai.errors import BusaiError

IMAGE_TYPES = {"image/png": ".png", "image/jpeg": ".jpg", "image/bmp": ".bmp", "image/x-ms-bmp": ".bmp", "image/tiff": ".tiff", "application/dicom": ".dcm"}
# Browsers send a .dcm file as application/octet-stream: accepted when its content is DICOM.
OCTET_STREAM = "application/octet-stream"
ACCEPTED = "a PNG, JPEG, BMP or TIFF image or a DICOM file"


@dataclass(frozen=True)
class Upload:
    """An upload that passed every check that needs no decoding."""

    name: str  # the client's file name, for messages only: never used as a path
    suffix: str  # the file suffix of its content type, for the decoder
    data: bytes
    width: int
    height: int


def receive_upload(file: UploadFile, *, max_bytes: int, max_pixels: int) -> Upload:
    """Check type, byte size and (from the header) pixel count; raise a 4xx HTTPException on failure."""
    content_type = (file.content_type or "").split(";")[0].strip().lower()
    if content_type not in IMAGE_TYPES and content_type != OCTET_STREAM:
        raise HTTPException(415, f"{file.filename}: type '{content_type or 'unknown'}' is not accepted; upload {ACCEPTED}")
    data = file.file.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise HTTPException(413, f"{file.filename}: {too_large(max_bytes)}")
    if not data:
        raise HTTPException(400, f"{file.filename}: the file is empty; upload an image")
    if content_type in (OCTET_STREAM, "application/dicom"):
        if data[128:132] != b"DICM":
            raise HTTPException(415, f"{file.filename}: not a DICOM file (no DICM marker); upload {ACCEPTED}")
        content_type = "application/dicom"
        width, height = _dicom_size(data, file.filename)
    else:
        width, height = header_size(data, file.filename, max_pixels)
    if width * height > max_pixels:
        raise HTTPException(413, f"{file.filename}: {width} x {height} pixels is {over_pixels(max_pixels)}")
    return Upload(file.filename or "upload", IMAGE_TYPES[content_type], data, width, height)


def header_size(data: bytes, name: str | None, max_pixels: int) -> tuple[int, int]:
    """(width, height) read from the image header; Pillow's ``open`` decodes no pixels."""
    try:
        with Image.open(io.BytesIO(data)) as probe:
            return probe.size
    except Image.DecompressionBombError:
        # Pillow refuses to even open images far over its own limit; the size is in its message only.
        raise HTTPException(413, f"{name}: the image is {over_pixels(max_pixels)}") from None
    except Exception:  # any header Pillow cannot read: say it cannot be decoded, never a 500
        raise HTTPException(400, f"{name}: cannot be decoded as an image; upload {ACCEPTED}") from None


def _dicom_size(data: bytes, name: str | None) -> tuple[int, int]:
    """(width, height) of a DICOM upload from its header (no pixel decoded)."""
    from busai.io.dicom import read_dataset

    with tempfile.TemporaryDirectory(prefix="busai-upload-") as tmp:
        path = Path(tmp) / "upload.dcm"  # never the client's file name
        path.write_bytes(data)
        try:
            ds = read_dataset(path)
        except BusaiError as exc:
            raise HTTPException(400, f"{name}: {str(exc).split(': ', 1)[-1]}") from None
        return int(getattr(ds, "Columns", 0) or 0), int(getattr(ds, "Rows", 0) or 0)


def decode_upload(upload: Upload, frame: int = 1):
    """Decode as (uint8 RGB, DICOM geometry or None), from a temporary folder removed on return.
    Call inside the bounded section."""
    from busai.data.discover import check_frame, image_frames, read_image

    with tempfile.TemporaryDirectory(prefix="busai-upload-") as tmp:
        path = Path(tmp) / ("upload" + upload.suffix)  # never the client's file name
        path.write_bytes(upload.data)
        if upload.suffix == ".dcm":
            from busai.io.dicom import geometry, read_dataset, read_frames

            try:
                ds = read_dataset(path)
                return next(read_frames(path, frame, ds=ds)).image, geometry(ds, path)
            except BusaiError as exc:
                raise HTTPException(400, f"{upload.name}: {str(exc).split(': ', 1)[-1]}") from None
        try:
            check_frame(path, frame, image_frames(path))  # a multi-page TIFF's pages are frames; a PNG has one
        except BusaiError as exc:
            raise HTTPException(400, f"{upload.name}: {str(exc).split(': ', 1)[-1]}") from None
        try:
            return read_image(path, mode="RGB", frame=frame), None
        except (BusaiError, Image.DecompressionBombError):
            raise HTTPException(400, f"{upload.name}: cannot be decoded as an image; upload {ACCEPTED}") from None


def too_large(max_bytes: int) -> str:
    return f"upload is over the {round(max_bytes / 2**20, 3):g} MB limit; upload a smaller image"


def over_pixels(max_pixels: int) -> str:
    return f"over the {max_pixels / 1e6:g} megapixel limit; upload a smaller image"
