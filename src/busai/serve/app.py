"""The web page and its JSON API (FastAPI): drop a scan, see the lesion, the class and the measurements.

``POST /api/predict`` takes one multipart ``file`` and returns the keys of a ``busai predict``
row (class probabilities, measurements), with ``mask`` and ``overlay`` as PNG data URLs, and
with ``?gradcam=1`` the classifier's Grad-CAM heat-map as ``gradcam``. Uploads are checked before any model
runs (size, type, decodability) and answered with a 4xx and one-line ``detail`` when they fail;
the upload is decoded from a temporary folder that is removed at once. ``GET /`` is the page.
"""

from __future__ import annotations

import base64
import io
import tempfile
import threading
from pathlib import Path

import numpy as np
from fastapi import FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image

from busai.errors import BusaiError
from busai.predict import COLUMNS, Models, ModelSource, draw_overlay, label_caption, load_models, predict_array

NOTICE = "Research software, not a medical device: not for diagnosis or treatment decisions."
STATIC = Path(__file__).with_name("static")
IMAGE_TYPES = {"image/png": ".png", "image/jpeg": ".jpg", "image/bmp": ".bmp", "image/x-ms-bmp": ".bmp", "image/tiff": ".tiff",
               "application/dicom": ".dcm"}
# Browsers send a .dcm file as application/octet-stream: accepted when its content is DICOM.
OCTET_STREAM = "application/octet-stream"
MAX_PIXELS = 40_000_000  # far above any ultrasound frame; bounds the memory one request can take
MULTIPART_OVERHEAD = 64 * 1024


def png_data_url(image: np.ndarray | Image.Image) -> str:
    picture = image if isinstance(image, Image.Image) else Image.fromarray(image)
    buffer = io.BytesIO()
    picture.save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def create_app(
    seg: ModelSource = "release",
    cls: ModelSource = "release",
    *,
    backend: str = "torch",
    max_upload_mb: float = 10.0,
) -> FastAPI:
    """The app with its models loaded now, so a missing model fails before the server starts."""
    from busai.runs import best_threads

    best_threads()
    workdir = tempfile.TemporaryDirectory(prefix="busai-serve-")
    models = load_models(seg, cls, backend=backend, workdir=workdir.name)
    max_bytes = int(max_upload_mb * 2**20)
    lock = threading.Lock()  # one prediction at a time: Grad-CAM hooks and CPU threads are shared
    page = (STATIC / "index.html").read_text()

    app = FastAPI(title="busai", description=NOTICE, docs_url=None, redoc_url=None)
    app.state.workdir = workdir  # keeps the ONNX files of --backend onnx alive with the app

    @app.middleware("http")
    async def refuse_large_bodies(request: Request, call_next):
        # Checked on the header, before the multipart body is read at all.
        length = request.headers.get("content-length")
        if request.url.path == "/api/predict" and length and length.isdigit() and int(length) > max_bytes + MULTIPART_OVERHEAD:
            return JSONResponse({"detail": _too_large(max_bytes)}, status_code=413)
        return await call_next(request)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/api/info")
    def info() -> dict:
        return {
            "notice": NOTICE,
            "segmentation": _describe(models.seg),
            "classification": _describe(models.cls),
            "gradcam": _gradcam_available(models),
            "max_upload_mb": max_upload_mb,
        }

    @app.post("/api/predict")
    def predict(
        file: UploadFile = File(..., description="one ultrasound image (PNG, JPEG, BMP or TIFF)"),
        gradcam: bool = Query(False, description="add the classifier's Grad-CAM heat-map"),
        tta: bool = Query(False, description="average with the horizontally flipped image"),
        pixel_spacing: float | None = Query(None, gt=0, description="pixel size in mm, for mm / mm2 measurements (a DICOM file's own wins)"),
        frame: int = Query(1, ge=1, description="the frame of a multi-frame DICOM file, from 1"),
    ) -> dict:
        image, shape = _read_upload(file, max_bytes, frame)
        with lock:
            row, mask = predict_array(models, image, tta=tta, pixel_spacing=pixel_spacing, geometry=shape)
            ends = row.pop("diameter_endpoints", None)
            across = row.pop("perpendicular_endpoints", None)
            shown = mask if mask is not None else np.zeros(image.shape[:2], dtype=np.uint8)
            # The keys of a predictions.json row; mask and overlay are PNG data URLs instead of file names.
            result = {key: None for key in COLUMNS if key != "error"} | {"image": file.filename} | row
            result["notice"] = NOTICE
            result["mask"] = png_data_url(mask * 255) if mask is not None else None
            result["overlay"] = png_data_url(draw_overlay(image, shown, ends, label_caption(row), across))
            result["gradcam"] = None
            if gradcam:
                if not _gradcam_available(models):
                    raise HTTPException(400, "gradcam=1: needs a PyTorch classifier; start the server with --cls RUN_DIR and --backend torch")
                from busai.gradcam import gradcam_heatmap

                result["gradcam"] = png_data_url(gradcam_heatmap(models.cls, image))
        return result

    return app


def _read_upload(file: UploadFile, max_bytes: int, frame: int = 1):
    """Check and decode an upload (inside a temporary folder, removed on return): (uint8 RGB, DICOM geometry or None)."""
    from busai.data.discover import read_image

    content_type = (file.content_type or "").split(";")[0].strip().lower()
    if content_type not in IMAGE_TYPES and content_type != OCTET_STREAM:
        raise HTTPException(415, f"{file.filename}: type '{content_type or 'unknown'}' is not accepted; upload a PNG, JPEG, BMP or TIFF image or a DICOM file")
    data = file.file.read(max_bytes + 1)
    if content_type == OCTET_STREAM or content_type == "application/dicom":
        if data[128:132] != b"DICM":
            raise HTTPException(415, f"{file.filename}: not a DICOM file (no DICM marker); upload a PNG, JPEG, BMP or TIFF image or a DICOM file")
        if len(data) > max_bytes:
            raise HTTPException(413, f"{file.filename}: {_too_large(max_bytes)}")
        return _read_dicom_upload(file.filename, data, frame)
    if len(data) > max_bytes:
        raise HTTPException(413, f"{file.filename}: {_too_large(max_bytes)}")
    if not data:
        raise HTTPException(400, f"{file.filename}: the file is empty; upload an image")
    with tempfile.TemporaryDirectory(prefix="busai-upload-") as tmp:
        path = Path(tmp) / ("upload" + IMAGE_TYPES[content_type])  # never the client's file name
        path.write_bytes(data)
        try:
            with Image.open(path) as probe:
                pixels = probe.size[0] * probe.size[1]
        except Exception:  # undecodable: read_image below says so in one line
            pixels = 0
        if pixels > MAX_PIXELS:
            raise HTTPException(413, f"{file.filename}: {pixels / 1e6:.0f} megapixels is over the {MAX_PIXELS / 1e6:.0f} megapixel limit; upload a smaller image")
        try:
            return read_image(path, mode="RGB"), None
        except BusaiError:
            raise HTTPException(400, f"{file.filename}: cannot be decoded as an image; upload a PNG, JPEG, BMP or TIFF scan") from None


def _read_dicom_upload(filename: str | None, data: bytes, frame: int):
    """One frame of an uploaded DICOM file and its geometry; the file's pixel count is checked
    from its header before any pixel is decoded."""
    from busai.io.dicom import geometry, read_dataset, read_frames

    with tempfile.TemporaryDirectory(prefix="busai-upload-") as tmp:
        path = Path(tmp) / "upload.dcm"  # never the client's file name
        path.write_bytes(data)
        try:
            ds = read_dataset(path)
            pixels = int(getattr(ds, "Rows", 0) or 0) * int(getattr(ds, "Columns", 0) or 0)
            if pixels > MAX_PIXELS:
                raise HTTPException(413, f"{filename}: {pixels / 1e6:.0f} megapixels is over the {MAX_PIXELS / 1e6:.0f} megapixel limit; upload a smaller image")
            image = next(read_frames(path, frame, ds=ds)).image
        except BusaiError as exc:
            raise HTTPException(400, f"{filename}: {str(exc).split(': ', 1)[-1]}") from None
        return image, geometry(ds)


def _too_large(max_bytes: int) -> str:
    return f"upload is over the {max_bytes / 2**20:g} MB limit; upload a smaller image"


def _describe(loaded) -> dict | None:
    if loaded is None:
        return None
    return {"model": loaded.spec, "image_size": loaded.image_size, "source": Path(loaded.source).name}


def _gradcam_available(models: Models) -> bool:
    from busai.export import OnnxModule

    return models.cls is not None and not isinstance(models.cls.module, OnnxModule)
