"""The web API: success, Grad-CAM, and every upload check with its 4xx answer."""

import base64
import hashlib
import io
import json
import os
import re
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from busai.errors import CheckpointError, ConfigError
from busai.pipeline import review_note
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


def test_serve_page_documents_every_key_of_the_predict_response(client):
    from pathlib import Path

    body = client.post("/api/predict?gradcam=1", files={"file": ("scan.png", png_bytes(), "image/png")}).json()
    doc = (Path(__file__).resolve().parents[1] / "docs" / "serve.md").read_text()
    schema = doc.split("**Response**", 1)[1].split("## Limits", 1)[0]
    documented = set(re.findall(r"`(\w+)`", schema))
    assert set(body) <= documented, f"docs/serve.md lacks {sorted(set(body) - documented)}"
    assert "PNG, JPEG, BMP, TIFF or DICOM" in client.get("/").text  # the page says it takes DICOM


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
        (
            ("scan.png", png_bytes(), "image/png"),
            "?pixel_spacing=-1",
            422,
            "pixel_spacing: Input should be greater than or equal to 0.001; give the pixel size in mm, from 0.001 to 10",
        ),
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
    monkeypatch.setattr("busai.runs.RELEASE_DIR", tmp_path)
    with pytest.raises(CheckpointError, match="no released segmentation model"):
        create_app()


# --------------------------------------------------------------------------- issue 21, items 10-13
def png_header_only(width: int, height: int) -> bytes:
    """A small PNG whose header declares ``width`` x ``height`` (1-bit grey): Pillow opens it
    without decoding, so a test can send a huge-dimension image without building one."""
    import struct
    import zlib

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


@pytest.mark.parametrize(
    "width, height, detail",
    [
        # Under Pillow's own bomb limit: the size is read from the header and refused by ours.
        (8000, 6000, "big.png: 8000 x 6000 pixels is over the 40 megapixel limit; upload a smaller image"),
        # Far over Pillow's limit (it refuses to open it at all): was an HTTP 500.
        (30000, 30000, "big.png: the image is over the 40 megapixel limit; upload a smaller image"),
    ],
)
def test_huge_dimensions_are_refused_from_the_header(client, monkeypatch, width, height, detail):
    def never_decode(upload):
        raise AssertionError("decoded an image that its header already refused")

    monkeypatch.setattr("busai.serve.app.decode_upload", never_decode)
    data = png_header_only(width, height)
    assert len(data) < 200
    response = client.post("/api/predict", files={"file": ("big.png", data, "image/png")})
    assert response.status_code == 413 and response.json()["detail"] == detail


def test_max_megapixels_option(seg_run):
    small = TestClient(create_app(seg_run, "none", max_megapixels=0.004), base_url=LOCAL)  # 4000 pixels
    assert small.get("/api/info").json()["max_megapixels"] == 0.004
    refused = small.post("/api/predict", files={"file": ("scan.png", png_bytes(60, 84), "image/png")})
    assert refused.status_code == 413 and refused.json()["detail"] == "scan.png: 84 x 60 pixels is over the 0.004 megapixel limit; upload a smaller image"
    assert small.post("/api/predict", files={"file": ("scan.png", png_bytes(40, 50), "image/png")}).status_code == 200


def asgi_post(app, chunks, headers=()):
    """POST ``chunks`` to /api/predict straight through ASGI, as a body without Content-Length
    (chunked); returns (status, body, number of chunks the server pulled)."""
    import asyncio

    pulled = 0
    sent = []

    async def receive():
        nonlocal pulled
        if pulled < len(chunks):
            pulled += 1
            return {"type": "http.request", "body": chunks[pulled - 1], "more_body": pulled < len(chunks)}
        return {"type": "http.disconnect"}

    async def send(message):
        sent.append(message)

    scope = {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": "/api/predict",
        "raw_path": b"/api/predict",
        "root_path": "",
        "query_string": b"",
        "headers": [(b"host", b"127.0.0.1:8000"), *headers],
        "client": ("127.0.0.1", 5000),
        "server": ("127.0.0.1", 8000),
    }
    asyncio.run(app(scope, receive, send))
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], body, pulled


def test_chunked_upload_is_cut_off_while_streaming(client):
    """A body with no Content-Length gets its 413 once it passes the limit, not after it is all read."""
    boundary = b"xyz"
    head = b'--xyz\r\nContent-Disposition: form-data; name="file"; filename="big.png"\r\nContent-Type: image/png\r\n\r\n'
    chunks = [head] + [b"\0" * 65536] * 2000  # 125 MB offered; the limit is 0.05 MB plus 64 KB of framing
    status, body, pulled = asgi_post(client.app, chunks, [(b"content-type", b"multipart/form-data; boundary=" + boundary)])
    assert status == 413
    assert json.loads(body)["detail"] == "upload is over the 0.05 MB limit; upload a smaller image"
    assert pulled <= 3, f"read {pulled} chunks of a body already over the limit"


def test_declared_length_over_the_limit_is_refused_before_reading(client):
    status, body, pulled = asgi_post(client.app, [b"x" * 10], [(b"content-length", b"999999999"), (b"content-type", b"multipart/form-data; boundary=xyz")])
    assert (status, pulled) == (413, 0)
    assert json.loads(body)["detail"] == "upload is over the 0.05 MB limit; upload a smaller image"


def test_uploads_held_at_once_are_bounded(seg_run, monkeypatch):
    """With --max-queue 2, a third upload while two are held gets 503 with Retry-After; the others finish."""
    import threading

    from busai import pipeline

    release, entered = threading.Event(), threading.Semaphore(0)
    real = pipeline.predict_scan

    def slow_predict(*args, **kwargs):
        entered.release()
        assert release.wait(30)
        return real(*args, **kwargs)

    monkeypatch.setattr("busai.serve.app.predict_scan", slow_predict)
    app = create_app(seg_run, "none", max_queue=2)
    with TestClient(app, base_url=LOCAL) as client:  # one event loop for every request, as under uvicorn
        upload = {"file": ("scan.png", png_bytes(), "image/png")}
        answers = []
        workers = [threading.Thread(target=lambda: answers.append(client.post("/api/predict", files=upload))) for _ in range(2)]
        for worker in workers:
            worker.start()
        assert entered.acquire(timeout=30)  # the first is predicting, the second waits for the lock (or is close behind)
        deadline = time.monotonic() + 30
        while client.app.middleware_stack is None or _held(client.app) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.01)
        busy = client.post("/api/predict", files=upload)
        assert busy.status_code == 503 and busy.headers["retry-after"] == "5"
        assert busy.json()["detail"] == "the server is busy with 2 uploads; retry in 5 seconds"
        assert client.get("/api/info").status_code == 200  # other routes keep answering
        release.set()
        for worker in workers:
            worker.join(60)
        assert [a.status_code for a in answers] == [200, 200]
        assert client.post("/api/predict", files=upload).status_code == 200  # and the slot is free again


def _held(app) -> int:
    from busai.serve.guard import UploadGate

    layer = app.middleware_stack
    while not isinstance(layer, UploadGate):
        layer = layer.app
    return layer.held


@pytest.mark.parametrize(
    "host, allow, status",
    [
        ("127.0.0.1:8000", (), 200),
        ("localhost:8000", (), 200),
        ("[::1]:8000", (), 200),
        ("attacker.example:8000", (), 400),  # a DNS-rebinding page reaching 127.0.0.1 sends its own name
        ("scanner.lan:8000", ("scanner.lan",), 200),
        ("::1", (), 400),  # malformed
        ("anything.example", ("*",), 200),
        ("a.scanners.lan", ("*.scanners.lan",), 200),
    ],
)
def test_host_header_check(seg_run, host, allow, status):
    client = TestClient(create_app(seg_run, "none", allow_hosts=allow), base_url=LOCAL)
    for path in ("/", "/api/info"):
        response = client.get(path, headers={"host": host})
        assert response.status_code == status, (path, response.text)
        assert response.headers["x-frame-options"] == "DENY"


def test_security_headers_and_csp_allow_the_page_script(client):
    page = client.get("/")
    scripts = re.findall(r"<script>(.*?)</script>", page.text, flags=re.DOTALL)
    assert len(scripts) == 1 and "fetch(" in scripts[0]
    digest = base64.b64encode(hashlib.sha256(scripts[0].encode()).digest()).decode()
    csp = page.headers["content-security-policy"]
    assert f"script-src 'sha256-{digest}';" in csp and "default-src 'none'" in csp
    assert "frame-ancestors 'none'" in csp and "img-src 'self' data:" in csp and "connect-src 'self'" in csp
    refused = client.post("/api/predict", files={"file": ("notes.txt", b"hello", "text/plain")})
    for response in (page, client.get("/api/info"), refused, client.get("/nowhere")):
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["x-frame-options"] == "DENY"
        assert response.headers["content-security-policy"] == csp


def test_openapi_only_with_the_flag(seg_run, client):
    assert client.get("/openapi.json").status_code == 404
    published = TestClient(create_app(seg_run, "none", openapi=True), base_url=LOCAL).get("/openapi.json")
    assert published.status_code == 200 and "/api/predict" in published.json()["paths"]


@pytest.mark.parametrize(
    "option, value, expect",
    [
        ("--max-upload-mb", "-1", "--max-upload-mb -1.0: give a number above 0"),
        ("--max-upload-mb", "0", "--max-upload-mb 0.0: give a number above 0"),
        ("--max-upload-mb", "nan", "--max-upload-mb nan: give a number above 0"),
        ("--max-upload-mb", "inf", "--max-upload-mb inf: give a number above 0"),
        ("--max-megapixels", "0", "--max-megapixels 0.0: give a number above 0"),
        ("--max-queue", "0", "--max-queue 0: give a whole number of 1 or more"),
    ],
)
def test_serve_refuses_bad_limits_before_loading_models(cli, monkeypatch, option, value, expect):
    monkeypatch.setattr("busai.serve.app.load_models", lambda *a, **k: pytest.fail("loaded models despite a bad limit"))
    cli.fails("serve", option, value, expect=expect)


def test_ctrl_c_removes_the_temporary_folder_and_stops_quietly(seg_run, tmp_path):
    """--backend onnx keeps its exported models in busai-serve-*; Ctrl-C (SIGINT, the usual way to stop a
    server) must not leave it behind, nor print a traceback or advice to --resume. SIGTERM is checked by
    tests/test_serve_load.py, whose server must leave no busai-serve-* folder either."""
    import signal
    import subprocess
    import sys
    import urllib.request

    port = free_port()
    env = {**os.environ, "TMPDIR": str(tmp_path), "PYTHONPATH": str(SRC)}
    command = [sys.executable, "-m", "busai", "serve", "--seg", str(seg_run), "--cls", "none", "--backend", "onnx", "--port", str(port)]
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until_up(f"http://127.0.0.1:{port}/api/info", server)
        (folder,) = tmp_path.glob("busai-serve-*")
        assert any(folder.rglob("*.onnx"))
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/info", timeout=10) as answer:
            assert answer.status == 200
        server.send_signal(signal.SIGINT)
        _, err = server.communicate(timeout=30)
        assert not folder.exists(), "Ctrl-C left the server's temporary folder behind"
        assert server.returncode == 0 and err.rstrip().endswith("busai: server stopped") and "Traceback" not in err
        assert not list(tmp_path.glob("busai-*"))
    finally:
        if server.poll() is None:
            server.kill()


SRC = Path(__file__).resolve().parents[1] / "src"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_until_up(url: str, server, timeout: float = 120) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while True:
        assert server.poll() is None, f"server exited: {server.communicate()[1][-2000:]}"
        try:
            with urllib.request.urlopen(url, timeout=5):
                return
        except OSError:
            assert time.monotonic() < deadline, "server did not start"
            time.sleep(0.2)


def test_serve_command_passes_hosts_limits_and_flags(cli, monkeypatch):
    import uvicorn

    seen = {}
    monkeypatch.setattr("busai.serve.create_app", lambda *args, **kwargs: seen.update(args=args, kwargs=kwargs) or "app")
    monkeypatch.setattr(uvicorn, "run", lambda app, **kwargs: seen.update(app=app, run=kwargs))
    code, _, err = cli(
        "serve", "--host", "::1", "--port", "8123", "--seg", "none", "--allow-host", "scanner.lan", "--max-queue", "3", "--max-megapixels", "12.5", "--openapi"
    )
    assert code == 0, err
    assert seen["kwargs"] == {
        "backend": "auto",
        "max_upload_mb": 10.0,
        "max_megapixels": 12.5,
        "max_queue": 3,
        "allow_hosts": ["::1", "scanner.lan"],
        "openapi": True,
        "device": "auto",
    }
    assert seen["app"] == "app" and seen["run"] == {"host": "::1", "port": 8123, "log_level": "warning"}
    assert "http://[::1]:8123/" in err


def test_a_measurement_option_refused_by_the_library_is_a_422(client, monkeypatch):
    from busai.errors import ConfigError

    def refuse(*args, **kwargs):
        raise ConfigError("--pixel-spacing 0.5: give one positive number (mm per pixel) or two (row, column)")

    monkeypatch.setattr("busai.serve.app.predict_scan", refuse)
    response = client.post("/api/predict?pixel_spacing=0.5", files={"file": ("scan.png", png_bytes(), "image/png")})
    assert response.status_code == 422 and response.json()["detail"].startswith("--pixel-spacing 0.5: give one positive number")


@pytest.mark.parametrize("pattern", ["scan*.lan", "*scanner.lan", "**"])
def test_bad_host_patterns_fail_before_serving(seg_run, pattern):
    with pytest.raises(ConfigError, match=r"a wildcard is allowed only as '\*' or '\*.example.com'"):
        create_app(seg_run, "none", allow_hosts=[pattern])


# --- issue 30, item 19: options the server used to ignore without a word ---------------------------
def test_a_frame_the_upload_lacks_is_a_400(client):
    response = client.post("/api/predict?frame=2", files={"file": ("scan.png", png_bytes(), "image/png")})
    assert response.status_code == 400
    assert response.json()["detail"] == "scan.png: --frame 2 is out of range; the file holds 1 frame(s), numbered from 1"
    assert client.post("/api/predict?frame=1", files={"file": ("scan.png", png_bytes(), "image/png")}).status_code == 200


def test_a_multi_page_tiff_upload_answers_for_the_frame_asked(client):
    pages = [(np.random.default_rng(i).random((60, 84)) * 255).astype(np.uint8) for i in range(2)]
    buffer = io.BytesIO()
    Image.fromarray(pages[0]).save(buffer, format="TIFF", save_all=True, append_images=[Image.fromarray(pages[1])])
    answers = [client.post(f"/api/predict?frame={n}", files={"file": ("sweep.tif", buffer.getvalue(), "image/tiff")}) for n in (1, 2, 3)]
    assert [a.status_code for a in answers] == [200, 200, 400]
    assert answers[0].json()["mask"] != answers[1].json()["mask"]
    assert answers[2].json()["detail"] == "sweep.tif: --frame 3 is out of range; the file holds 2 frame(s), numbered from 1"


@pytest.mark.parametrize("field", ["pixel_spacing", "tta"])
def test_an_option_sent_as_a_form_field_is_a_422(client, field):
    response = client.post("/api/predict", files={"file": ("scan.png", png_bytes(), "image/png")}, data={field: "0.08"})
    assert response.status_code == 422
    assert response.json()["detail"] == (
        f"{field}: sent as a form field, where it is ignored; give it in the query string (/api/predict?{field}=...), the form holds only 'file'"
    )


def test_an_empty_allow_host_fails_before_serving(seg_run, cli):
    with pytest.raises(ConfigError, match="--allow-host '': an empty host name answers no request"):
        create_app(seg_run, "none", allow_hosts=["127.0.0.1", ""])
    cli.fails("serve", "--seg", seg_run, "--cls", "none", "--allow-host", "", expect="--allow-host '': an empty host name answers no request; give a name")
