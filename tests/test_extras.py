"""Optional extras: a missing one is one clear line naming it (predicting with only the onnx extra: tests/test_onnx_only.py)."""

import sys

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
    with pytest.raises(ValueError, match="unknown extra 'gpu'; known: torch, onnx, serve, tune, export"):
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
