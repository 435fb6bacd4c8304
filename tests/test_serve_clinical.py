"""The web API with clinic files: DICOM uploads with their spacing, and the input gate's answer."""

import io

import numpy as np
import pytest
from dicom_files import PATIENT_NAME, region, write_dicom
from fastapi.testclient import TestClient
from PIL import Image

from busai.data import not_ultrasound
from busai.serve import create_app

pytest.importorskip("pydicom")


@pytest.fixture(scope="module")
def client(seg_run, cls_run):
    return TestClient(create_app(seg_run, cls_run, max_upload_mb=1), base_url="http://127.0.0.1")  # testserver is no allowed Host


def scan(height=96, width=128, seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.clip(110 + rng.normal(0, 25, (height, width)), 0, 255).astype(np.uint8)


@pytest.mark.parametrize("content_type", ["application/dicom", "application/octet-stream"])
def test_dicom_upload_uses_the_files_spacing(client, tmp_path, content_type):
    cine = np.stack([scan(seed=0), scan(seed=1)])
    path = write_dicom(tmp_path / "IM1", cine, regions=[region(0, 0, 127, 95, 0.01, 0.02)])
    response = client.post("/api/predict?frame=2", files={"file": ("IM1", path.read_bytes(), content_type)})
    assert response.status_code == 200, response.text
    result = response.json()
    assert result["input_check"] == "ok" and (result["width"], result["height"]) == (128, 96)
    # The one calibrated region gives the spacing whether or not a lesion was found.
    assert result["spacing_source"] == "SequenceOfUltrasoundRegions[0]"
    assert (result["spacing_row_mm"], result["spacing_column_mm"]) == (0.2, 0.1)
    assert PATIENT_NAME not in response.text


def test_dicom_upload_errors(client, tmp_path):
    path = write_dicom(tmp_path / "one.dcm", scan())
    response = client.post("/api/predict?frame=3", files={"file": ("one.dcm", path.read_bytes(), "application/dicom")})
    assert response.status_code == 400
    assert response.json()["detail"] == "one.dcm: --frame 3 is out of range; the file holds 1 frame(s), numbered from 1"
    response = client.post("/api/predict", files={"file": ("x.bin", b"\0" * 300, "application/octet-stream")})
    assert response.status_code == 415 and "no DICM marker" in response.json()["detail"]


def test_a_chart_is_flagged_not_answered(client):
    buffer = io.BytesIO()
    Image.fromarray(not_ultrasound.bar_chart()).save(buffer, format="PNG")
    result = client.post("/api/predict", files={"file": ("chart.png", buffer.getvalue(), "image/png")}).json()
    assert result["input_check"].startswith("mostly white")
    assert result["label"] is None and result["mask"] is None and result["overlay"]
