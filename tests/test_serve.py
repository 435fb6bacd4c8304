"""The web API: success, Grad-CAM, and every upload check with its 4xx answer."""

import base64
import io
import os
import re
import tempfile

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from busai.errors import CheckpointError
from busai.predict import review_note
from busai.serve import NOTICE, create_app


LOCAL = "http://127.0.0.1"  # TestClient's default Host, testserver, is refused like any unknown host


def png_bytes(height=60, width=84, mode="L") -> bytes:
    array = (np.random.default_rng(0).random((height, width)) * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buffer, format="PNG")
    return buffer.getvalue()


def decode_data_url(url: str) -> Image.Image:
    assert url.startswith("data:image/png;base64,")
    return Image.open(io.BytesIO(base64.b64decode(url.split(",", 1)[1])))


@pytest.fixture(scope="module")
def client(seg_run, cls_run):
    return TestClient(create_app(seg_run, cls_run, max_upload_mb=0.05), base_url=LOCAL)


def test_page_and_info(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "not a medical device" in page.text and 'id="drop-zone"' in page.text
    assert not re.search(r"""(src|href)=["']?(https?:)?//""", page.text), "the page must not load anything from elsewhere"
    info = client.get("/api/info").json()
    assert info["notice"] == NOTICE and info["gradcam"] is True
    assert info["segmentation"]["model"]["name"] == "unet"


def test_predict_returns_probabilities_measurements_overlay_and_gradcam(client):
    response = client.post("/api/predict?gradcam=1&pixel_spacing=0.1", files={"file": ("scan.png", png_bytes(), "image/png")})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["image"] == "scan.png" and body["notice"] == NOTICE
    assert body["label"] in ("normal", "benign", "malignant")
    assert sum(body[f"p_{c}"] for c in ("normal", "benign", "malignant")) == pytest.approx(1, abs=1e-4)
    for key in ("area_px", "area_mm2", "longest_diameter_px", "bbox_x", "lesion_count"):
        assert key in body
    assert body["area_mm2"] == pytest.approx(body["area_px"] * 0.01, abs=1e-3)
    assert body["review"] == review_note(body["label"], body["lesion_count"])
    assert (body["width"], body["height"]) == (84, 60)
    assert decode_data_url(body["overlay"]).size == (84, 60)
    assert decode_data_url(body["gradcam"]).size == (84, 60)
    plain = client.post("/api/predict", files={"file": ("scan.png", png_bytes(mode="RGBA"), "image/png")}).json()
    assert plain["gradcam"] is None and plain["overlay"]
    assert decode_data_url(plain["mask"]).mode == "L" and "error" not in plain


@pytest.mark.parametrize(
    "upload, query, status, detail",
    [
        (("notes.txt", b"hello", "text/plain"), "", 415, "upload a PNG, JPEG, BMP or TIFF image"),
        (("scan.png", b"\x89PNG garbage", "image/png"), "", 400, "cannot be decoded"),
        (("scan.png", b"", "image/png"), "", 400, "empty"),
        (("big.png", os.urandom(200_000), "image/png"), "", 413, "limit"),
        (("scan.png", png_bytes(), "image/png"), "?pixel_spacing=-1", 422, "pixel_spacing: Input should be greater than or equal to 0.001; give the pixel size in mm, from 0.001 to 10"),
        (("scan.png", png_bytes(), "image/png"), "?pixel_spacing=0", 422, "pixel_spacing: Input should be greater than or equal to 0.001"),
        (("scan.png", png_bytes(), "image/png"), "?pixel_spacing=1e308", 422, "pixel_spacing: Input should be less than or equal to 10; give"),
        (("scan.png", png_bytes(), "image/png"), "?pixel_spacing=inf", 422, "pixel_spacing: Input should be a finite number; give"),
        (("scan.png", png_bytes(), "image/png"), "?pixel_spacing=nan", 422, "pixel_spacing: Input should be a finite number; give"),
        (("scan.png", png_bytes(), "image/png"), "?pixel_spacing=0.1mm", 422, "pixel_spacing: Input should be a valid number"),
    ],
)
def test_upload_errors(client, upload, query, status, detail):
    response = client.post("/api/predict" + query, files={"file": upload})
    assert response.status_code == status, response.text
    if detail:
        assert detail in response.json()["detail"]


def test_missing_file(client):
    response = client.post("/api/predict")
    assert response.status_code == 422
    assert response.json()["detail"] == "file: Field required; send the scan as the multipart form field 'file'"


def test_uploads_leave_nothing_behind(client, tmp_path, monkeypatch):
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    monkeypatch.chdir(tmp_path)
    before = set(tmp_path.rglob("*"))
    assert client.post("/api/predict", files={"file": ("../../escape.png", png_bytes(), "image/png")}).status_code == 200
    assert set(tmp_path.rglob("*")) == before


def test_gradcam_needs_a_torch_classifier(seg_run):
    client = TestClient(create_app(seg_run, "none"), base_url=LOCAL)
    assert client.get("/api/info").json()["gradcam"] is False
    response = client.post("/api/predict?gradcam=1", files={"file": ("scan.png", png_bytes(), "image/png")})
    assert response.status_code == 400 and "--cls RUN_DIR" in response.json()["detail"]
    ok = client.post("/api/predict", files={"file": ("scan.png", png_bytes(), "image/png")}).json()
    assert ok["label"] is None and ok["area_px"] is not None


def test_missing_release_fails_before_serving(tmp_path, monkeypatch):
    monkeypatch.setattr("busai.release.RELEASE_DIR", tmp_path)
    with pytest.raises(CheckpointError, match="no released segmentation model"):
        create_app()
