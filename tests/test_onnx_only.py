"""The inference-only install (``pip install 'busai[onnx]'``): predict, serve and ``busai.load`` without PyTorch.

Each test runs a fresh interpreter whose import system refuses the torch extra's packages (and
onnx, which only exporting needs), as an install without them would; CI also installs ``.[onnx]``
into a new virtual environment and predicts there (.ci/run).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from busai import extras

# Everything only the torch and export extras bring.
BLOCKED = sorted(set(extras.EXTRAS["torch"][1]) | {"onnx"})
SRC = Path(__file__).resolve().parents[1] / "src"

BLOCKER = textwrap.dedent(f"""
    import sys

    class Block:  # any import of a blocked package fails, as if it were not installed
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in {BLOCKED!r}:
                raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)

    sys.meta_path.insert(0, Block())
""")


def run_without_torch(code: str, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
    script = (
        BLOCKER
        + textwrap.dedent(code)
        + textwrap.dedent(f"""
        loaded = sorted({{m.split(".")[0] for m in sys.modules}} & set({BLOCKED!r}))
        assert not loaded, f"imported without torch: {{loaded}}"
    """)
    )
    env = {**os.environ, "PYTHONPATH": str(SRC), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env)


def phantom_png(path: Path) -> Path:
    from busai.data.synthetic import make_phantom

    scan, _ = make_phantom(np.random.default_rng(0), (90, 120), "benign")  # a flat image would be flagged by the input gate
    Image.fromarray(scan).save(path)
    return path


@pytest.mark.slow
def test_predict_load_and_serve_run_without_torch(tmp_path):
    scan = phantom_png(tmp_path / "scan.png")
    done = run_without_torch(
        f"""
        import csv, io
        import numpy as np
        from PIL import Image

        from busai.cli import main

        # busai predict, the shipped release models (their model.onnx) in ONNX Runtime
        assert main(["predict", {str(scan)!r}, "--out", "out", "--quiet"]) == 0
        rows = list(csv.DictReader(open("out/predictions.csv")))
        assert len(rows) == 1 and rows[0]["label"] in ("normal", "benign", "malignant"), rows
        assert abs(sum(float(rows[0][f"p_{{c}}"]) for c in ("normal", "benign", "malignant")) - 1) < 1e-3
        mask = np.asarray(Image.open("out/" + rows[0]["mask"]))
        assert mask.shape == (90, 120) and set(np.unique(mask)) <= {{0, 255}}
        options = __import__("json").load(open("out/predict_options.json"))
        assert options["backend"] == "auto" and options["runtime"]["paths"] == {{"segmentation": "onnx fp32", "classification": "onnx fp32"}}

        # Python: busai.load("release") runs the shipped file, with the release's calibration
        import busai
        cls = busai.load("release", task="cls")
        seg = busai.load("release", task="seg")
        assert cls.backend == "onnx" and cls.source.endswith("model.onnx") and str(cls.device) == "cpu"
        assert cls.temperature == __import__("json").load(open({str(SRC / "busai/release/classification/calibration.json")!r}))["temperature"]
        prediction = busai.predict([seg, cls], {str(scan)!r})
        assert prediction.mask.sum() * 255 == mask.sum()
        # the classifier's own answer (a diagnosis may fuse it with the mask: classifier_p_* then hold it)
        own = prediction.classifier_probabilities or prediction.probabilities
        assert all(abs(own[c] - float(rows[0]["classifier_p_" + c] or rows[0]["p_" + c])) < 1e-4 for c in cls.classes), (own, rows[0])
        uncalibrated = cls.probabilities(cls.preprocess({str(scan)!r})[None], calibrated=False)[0]
        assert not np.allclose(uncalibrated, [prediction.probabilities[c] for c in cls.classes], atol=1e-4)  # the temperature applies

        # the web page's API
        from fastapi.testclient import TestClient
        from busai.serve import create_app
        client = TestClient(create_app(), base_url="http://127.0.0.1")
        assert client.get("/api/info").json()["gradcam"] is False
        answer = client.post("/api/predict", files={{"file": ("scan.png", open({str(scan)!r}, "rb"), "image/png")}}).json()
        assert answer["label"] == prediction.label and answer["mask"].startswith("data:image/png"), answer
        print("ok")
        """,
        cwd=tmp_path,
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_commands_needing_torch_say_which_extra_in_one_line(tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    spec = {
        "model_spec": {"task": "segmentation", "name": "unet", "encoder": "resnet18"},
        "preprocessing": {"image_size": 64, "mean": [0.5] * 3, "std": [0.5] * 3},
    }
    (run_dir / "config.json").write_text(json.dumps(spec))
    scan = phantom_png(tmp_path / "scan.png")
    done = run_without_torch(
        f"""
        import contextlib, io
        from busai.cli import COMMAND_MODULES, main

        for argv in [["--help"], *([name, "--help"] for name in COMMAND_MODULES)]:  # every --help works without torch
            with contextlib.redirect_stdout(io.StringIO()) as out:
                try:
                    main(argv)
                except SystemExit as exc:
                    assert exc.code == 0, argv
            assert "usage: busai" in out.getvalue(), argv

        for argv, expect in [
            (["train", "seg", "--data", "nowhere", "--out", "runs/x"],
             "error: `busai train` needs the 'torch' extra (torch not installed); run: pip install 'busai[torch]'"),
            (["evaluate", "release", "--data", "nowhere"],
             "error: `busai evaluate` needs the 'torch' extra (torch not installed); run: pip install 'busai[torch]'"),
            (["predict", {str(scan)!r}, "--out", "out", "--seg", {str(run_dir)!r}, "--cls", "none", "--quiet"],
             "error: {run_dir} (PyTorch weights only, no model.onnx) needs the 'torch' extra (torch not installed); run: pip install 'busai[torch]'"),
            (["predict", {str(scan)!r}, "--out", "out2", "--backend", "torch", "--quiet"],
             "error: running {SRC / "busai/release/segmentation"} in PyTorch needs the 'torch' extra (torch not installed); run: pip install 'busai[torch]'"),
        ]:
            err = io.StringIO()
            with contextlib.redirect_stderr(err):
                code = main(argv)
            assert code == 2 and err.getvalue().strip() == expect, (argv, code, err.getvalue())
        print("ok")
        """,
        cwd=tmp_path,
    )
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stderr[-3000:]


def test_backend_onnx_runs_the_shipped_file_without_exporting(tmp_path):
    from busai.pipeline import load_models

    models = load_models("release", "release", backend="onnx", workdir=tmp_path)
    assert [m.backend for m in models] == ["onnx", "onnx"]
    assert [Path(m.source) for m in models] == [SRC / "busai/release/segmentation/model.onnx", SRC / "busai/release/classification/model.onnx"]
    assert not list(tmp_path.iterdir())  # nothing exported
    assert models[1].temperature == json.loads((SRC / "busai/release/classification/calibration.json").read_text())["temperature"]
    assert [m.backend for m in load_models("release", "release")] == ["torch", "torch"]  # auto: PyTorch where it is installed
