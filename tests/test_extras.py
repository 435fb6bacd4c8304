"""Optional extras: a missing one is one clear line naming it; the core predicts without any."""

import subprocess
import sys
import textwrap

import pytest

from busai import extras


def hide(monkeypatch, *names):
    real = extras.find_spec
    monkeypatch.setattr(extras, "find_spec", lambda name: None if name in names else real(name))


def test_require_names_the_extra_and_the_missing_packages(monkeypatch):
    hide(monkeypatch, "optuna")
    with pytest.raises(extras.MissingExtraError) as info:
        extras.require("tune")
    assert str(info.value) == ("hyper-parameter search (`busai tune`) needs the 'tune' extra (optuna not installed); run: pip install 'busai[tune]'")
    extras.require("serve")  # installed here: no error


def test_unknown_extra_is_a_programming_error():
    with pytest.raises(ValueError, match="unknown extra 'gpu'; known: serve, tune, export"):
        extras.require("gpu")


def test_cli_without_the_serve_extra_prints_one_line(cli, monkeypatch):
    import busai
    import busai.serve

    # Re-importing below rebinds the package attribute busai.serve; put the real one back afterwards,
    # or later tests that patch busai.serve.app.* would find the half-imported module.
    monkeypatch.setattr(busai, "serve", busai.serve)
    hide(monkeypatch, "fastapi", "uvicorn")
    for name in [m for m in sys.modules if m == "busai.serve" or m.startswith("busai.serve.")]:
        monkeypatch.delitem(sys.modules, name)
    cli.fails("serve", expect="needs the 'serve' extra (fastapi, uvicorn not installed); run: pip install 'busai[serve]'")


def test_extras_match_pyproject():
    import tomllib
    from pathlib import Path

    optional = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(extras.EXTRAS) <= set(optional)


def test_core_predicts_with_no_extra_installed(tmp_path):
    """A fresh interpreter that cannot import any extra's package still loads the release models and predicts."""
    blocked = sorted({m for _, modules in extras.EXTRAS.values() for m in modules})
    script = textwrap.dedent(f"""
        import sys
        import numpy as np

        from importlib.machinery import ModuleSpec

        class Block:  # any import of an extra's package fails, as if it were not installed
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {blocked!r}:
                    return ModuleSpec(name, self)
            def create_module(self, spec):
                raise ModuleNotFoundError(f"No module named {{spec.name!r}}")
            def exec_module(self, module):
                pass
        sys.meta_path.insert(0, Block())
        from busai.pipeline import load_models
        from busai.rendering import predict_array
        models = load_models("release", "release")
        from busai.data.synthetic import make_phantom
        scan, _ = make_phantom(np.random.default_rng(0), (90, 120), "benign")  # a flat image would be flagged by the input gate
        row, mask = predict_array(models, np.repeat(scan[..., None], 3, axis=2))
        assert mask.shape == (90, 120) and row["label"] in ("normal", "benign", "malignant")
        assert not [m for m in sys.modules if m.split(".")[0] in {blocked!r}]
        print("ok")
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
