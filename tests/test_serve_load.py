"""A small, quick run of benchmarks/serve_load.py: concurrent large-dimension uploads against a real
server on 127.0.0.1 (tiny model, a few requests), whose memory must stay under the stated bound."""

import importlib.util
from pathlib import Path

import pytest

pytest.importorskip("httpx", reason="httpx is not installed (pip install -e '.[test]')")
SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "serve_load.py"
pytestmark = pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="reads server memory from /proc (Linux)")


def load_benchmark():
    spec = importlib.util.spec_from_file_location("serve_load", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_concurrent_large_uploads_stay_under_the_memory_bound(seg_onnx):
    """The server runs the tiny segmenter's ONNX file: the upload gate and the queue do not depend on
    the backend, and a server without torch starts in a fraction of the time."""
    bench = load_benchmark()
    result = bench.run_load(
        seg=str(seg_onnx[1].path), cls="none", width=1600, height=1500, concurrency=6, rounds=1, max_queue=2, sequential_uploads=2, max_upload_mb=1.0
    )
    counts = result["under_load"]["status_counts"]
    assert set(counts) <= {"200", "503"} and counts.get("200", 0) >= 1 and sum(counts.values()) == 6
    assert result["one_at_a_time"]["worst_status"] == 200 and result["final_upload_status"] == 200
    assert result["info_probes"]["count"] >= 1 and result["info_probes"]["all_200"]
    assert result["bound_mb"] == pytest.approx(result["one_at_a_time"]["peak_rss_mb"] + 2 * 2 * 1.0 + 64, abs=0.11)
    assert result["under_load"]["peak_rss_mb"] <= result["bound_mb"]
    assert result["sigterm"]["temporary_folders_left"] == []
    assert result["passed"] is True


def test_phantom_png_is_large_in_pixels_and_small_in_bytes():
    from PIL import Image
    import io

    data = load_benchmark().phantom_png(3000, 2000)
    with Image.open(io.BytesIO(data)) as image:
        assert image.size == (3000, 2000) and image.mode == "L"
    assert len(data) < 200_000
