"""The web page and its JSON API (FastAPI): drop a scan, see the lesion, the class and the measurements.

``POST /api/predict`` takes one multipart ``file`` and returns the keys of a ``busai predict``
row (class probabilities, measurements), with ``mask`` and ``overlay`` as PNG data URLs, and
with ``?gradcam=1`` the classifier's Grad-CAM heat-map as ``gradcam``. Uploads are checked before any model
runs (size, type, header pixel count) and answered with a 4xx and one-line ``detail`` when they fail;
decoding and prediction run one request at a time (:mod:`busai.serve.upload`), and the requests held
at once are bounded (:mod:`busai.serve.guard`). ``GET /`` is the page. docs/serve.md lists the limits.
"""

from __future__ import annotations

import base64
import io
import math
import tempfile
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from pathlib import Path

import numpy as np
from fastapi import Depends, FastAPI, File, HTTPException, Query, Request, UploadFile
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse
from PIL import Image
from starlette.middleware.trustedhost import TrustedHostMiddleware

from busai.errors import ConfigError
from busai.api import Model, models_by_task
from busai.pipeline import load_models, predict_scan
from busai.prediction import ModelSource
from busai.rendering import COLUMNS, prediction_overlay, row_values, save_png
from busai.serve.guard import SecurityHeaders, UploadGate, content_security_policy, host_patterns
from busai.serve.limits import MAX_MEGAPIXELS, MAX_QUEUE, MAX_UPLOAD_MB, MULTIPART_OVERHEAD, PIXEL_SPACING_MM
from busai.serve.upload import Upload, decode_upload, receive_upload, too_large

NOTICE = "Research software, not a medical device: not for diagnosis or treatment decisions."
STATIC = Path(__file__).with_name("static")
FIELD_HINTS = {
    "pixel_spacing": f"give the pixel size in mm, from {PIXEL_SPACING_MM[0]:g} to {PIXEL_SPACING_MM[1]:g}",
    "file": "send the scan as the multipart form field 'file'",
}


def png_data_url(image: np.ndarray | Image.Image) -> str:
    buffer = io.BytesIO()
    save_png(image, buffer)
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def create_app(
    seg: ModelSource = "release",
    cls: ModelSource = "release",
    *,
    backend: str = "auto",
    max_upload_mb: float = MAX_UPLOAD_MB,
    max_megapixels: float = MAX_MEGAPIXELS,
    max_queue: int = MAX_QUEUE,
    allow_hosts: tuple[str, ...] | list[str] = (),
    openapi: bool = False,
    device: str = "cpu",
) -> FastAPI:
    """The app with its models loaded now, so a missing model or a bad limit fails before the server starts.

    Only Host headers naming a loopback address or one of ``allow_hosts`` are answered (``"*"``: any);
    ``openapi`` publishes the API schema at /openapi.json.
    """
    from busai.device import best_threads

    _check_limits(max_upload_mb, max_megapixels, max_queue)
    hosts = host_patterns(allow_hosts)
    best_threads()
    max_bytes = int(min(max_upload_mb * 2**20, 2**62))
    max_pixels = int(min(max_megapixels * 1e6, 2**62))
    workdir = tempfile.TemporaryDirectory(prefix="busai-serve-")
    try:
        models = [Model(getattr(m, "loaded", m)) for m in load_models(seg, cls, backend=backend, workdir=workdir.name, device=device, grad_cam=True)]
    except BaseException:
        workdir.cleanup()
        raise
    # Every decode and prediction runs on this one thread: one at a time (Grad-CAM hooks and CPU threads
    # are shared), and all their large allocations come from one malloc arena, which is reused, rather
    # than one arena per request thread, each keeping its own decoded image's worth of memory.
    by_task = models_by_task(models)
    segmenter, classifier = by_task.get("segmentation"), by_task.get("classification")
    worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="busai-predict")
    page = (STATIC / "index.html").read_text()

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        worker.shutdown(wait=True, cancel_futures=True)
        # On shutdown, SIGTERM included: uvicorn re-raises the signal after shutting down, which
        # ends the process before atexit would remove the folder (it holds the ONNX files of --backend onnx).
        workdir.cleanup()

    app = FastAPI(title="busai", description=NOTICE, docs_url=None, redoc_url=None, openapi_url="/openapi.json" if openapi else None, lifespan=lifespan)
    app.state.workdir = workdir
    # Added last = outermost: the headers go on every answer, the Host check precedes any work.
    app.add_middleware(UploadGate, path="/api/predict", max_body=max_bytes + MULTIPART_OVERHEAD, max_held=max_queue, too_large=too_large(max_bytes))
    app.add_middleware(TrustedHostMiddleware, allowed_hosts=hosts, www_redirect=False)
    app.add_middleware(SecurityHeaders, csp=content_security_policy(page))

    @app.exception_handler(RequestValidationError)
    async def one_line_validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse({"detail": _validation_message(exc)}, status_code=422)

    @app.exception_handler(413)
    async def body_too_large(request: Request, exc: HTTPException) -> JSONResponse:
        # FastAPI's streaming limit (max_body_size) says only "Content Too Large"; say the limit and the fix.
        detail = too_large(max_bytes) if exc.detail == "Content Too Large" else exc.detail
        return JSONResponse({"detail": detail}, status_code=413)

    @app.get("/", response_class=HTMLResponse)
    def index() -> str:
        return page

    @app.get("/api/info")
    def info() -> dict:
        return {
            "notice": NOTICE,
            "segmentation": _describe(segmenter),
            "classification": _describe(classifier),
            "gradcam": _gradcam_available(classifier),
            "max_upload_mb": max_upload_mb,
            "max_megapixels": max_megapixels,
        }

    @app.post("/api/predict", max_body_size=max_bytes + MULTIPART_OVERHEAD, dependencies=[Depends(_only_the_file)])
    def predict(
        file: UploadFile = File(..., description="one ultrasound image (PNG, JPEG, BMP or TIFF) or DICOM file"),
        gradcam: bool = Query(False, description="add the classifier's Grad-CAM heat-map"),
        tta: bool = Query(False, description="average with the horizontally flipped image"),
        pixel_spacing: float | None = Query(
            None,
            ge=PIXEL_SPACING_MM[0],
            le=PIXEL_SPACING_MM[1],
            allow_inf_nan=False,
            description="pixel size in mm, for mm / mm2 measurements (a DICOM file's own wins)",
        ),
        frame: int = Query(1, ge=1, description="the frame of a DICOM cine or a multi-page TIFF, from 1; an image has only frame 1"),
    ) -> dict:
        upload = receive_upload(file, max_bytes=max_bytes, max_pixels=max_pixels)
        if gradcam and not _gradcam_available(classifier):
            raise HTTPException(400, "gradcam=1: needs a PyTorch classifier; start the server with --cls RUN_DIR and --backend torch")
        return worker.submit(analyse, upload, gradcam=gradcam, tta=tta, pixel_spacing=pixel_spacing, frame=frame).result()

    def analyse(upload: Upload, *, gradcam: bool, tta: bool, pixel_spacing: float | None, frame: int = 1) -> dict:
        image, shape = decode_upload(upload, frame)
        try:
            prediction = predict_scan(models, image, tta=tta, pixel_spacing=pixel_spacing, geometry=shape)
        except ConfigError as exc:  # an option the query checks missed (pixel_spacing): the caller's to fix
            raise HTTPException(422, str(exc)) from None
        # The keys of a predictions.json row; mask and overlay are PNG data URLs instead of file names.
        result = {key: None for key in COLUMNS if key != "error"} | {"image": upload.name} | row_values(prediction)
        result["notice"] = NOTICE
        result["mask"] = png_data_url(prediction.mask * 255) if prediction.mask is not None else None
        result["overlay"] = png_data_url(prediction_overlay(prediction, image))
        result["gradcam"] = None
        if gradcam:
            result["gradcam"] = png_data_url(classifier.gradcam(image))
        return result

    return app


async def _only_the_file(request: Request) -> None:
    """Options are query parameters only: a form field beside ``file`` (``pixel_spacing`` sent as
    one, say) would otherwise be ignored without a word. FastAPI has parsed the form already; this reads it back."""
    form = await request.form()
    extra = next((key for key in form.keys() if key != "file"), None)
    if extra is not None:
        raise HTTPException(
            422, f"{extra}: sent as a form field, where it is ignored; give it in the query string (/api/predict?{extra}=...), the form holds only 'file'"
        )


def _check_limits(max_upload_mb: float, max_megapixels: float, max_queue: int) -> None:
    for option, value, unit in (("--max-upload-mb", max_upload_mb, 2**20), ("--max-megapixels", max_megapixels, 1e6)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value * unit < 1:
            raise ConfigError(f"{option} {value}: give a number above 0")
    if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
        raise ConfigError(f"--max-queue {max_queue}: give a whole number of 1 or more")


def _validation_message(exc: RequestValidationError) -> str:
    """One line for the first invalid field: its name, what is wrong, and what to send instead."""
    error = exc.errors()[0]
    field = str(error["loc"][-1]) if error.get("loc") else "request"
    hint = FIELD_HINTS.get(field)
    return f"{field}: {error['msg']}" + (f"; {hint}" if hint else "")


def _describe(model: Model | None) -> dict | None:
    if model is None:
        return None
    return {"model": model.spec, "image_size": model.preprocessing["image_size"], "source": Path(model.source).name}


def _gradcam_available(classifier: Model | None) -> bool:
    return classifier is not None and classifier.supports_gradients
