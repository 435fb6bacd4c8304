"""A command's default and the Python function it calls agree: both read one constant in busai.config.

Each case parses a command with only its required arguments and compares the option's default with
the default of the library parameter it is passed to, so a default changed in one place only fails here.
"""

from __future__ import annotations

import inspect

import pytest

from busai import config
from busai.cli import build_parser


def _default(func, name):
    return inspect.signature(func).parameters[name].default


def _cases():
    from busai import adaptation, api, evaluation, export, pipeline, prediction, quantize
    from busai.data import splits, synthetic
    from busai.serve import app

    return [
        (["predict", "x.png", "--out", "o"], "threshold", [api.predict, api.Model.predict, pipeline.predict_scans, prediction.predict_paths]),
        (["predict", "x.png", "--out", "o"], "batch_size", [pipeline.predict_scans, prediction.predict_paths]),
        (["evaluate", "release", "--data", "d"], "n_boot", [evaluation.evaluate_model]),
        (["data", "split", "d", "--out", "s.json"], "val", [splits.make_splits]),
        (["data", "split", "d", "--out", "s.json"], "test", [splits.make_splits]),
        (["data", "synth", "o"], "n", [synthetic.write_synthetic_dataset]),
        (["data", "synth", "o"], "size", [synthetic.write_synthetic_dataset]),
        (["export", "seg", "--out", "m.onnx"], "calib_images", [(quantize.calibration_records, "count")]),
        (["serve"], "max_upload_mb", [app.create_app]),
        *[(["adapt", "m", "--data", "d", "--out", "o"], dest, [adaptation.adapt]) for dest in ADAPT_OPTIONS],
    ], export


ADAPT_OPTIONS = ("holdout", "freeze_encoder", "epochs", "patience", "lr", "batch_size", "n_boot", "pseudo_agreement", "pseudo_confidence", "pseudo_band")


@pytest.mark.parametrize("index", range(9 + len(ADAPT_OPTIONS)))
def test_command_default_is_the_library_default(index):
    cases, _ = _cases()
    argv, dest, funcs = cases[index]
    parsed = vars(build_parser().parse_args(argv))
    for func in funcs:
        func, name = func if isinstance(func, tuple) else (func, dest)
        expected = _default(func, name)
        got = parsed[dest]
        assert (tuple(got) if isinstance(got, list) else got) == expected, f"busai {argv[0]} --{dest}: {got!r} but {func.__qualname__}({name}={expected!r})"


def test_export_opset_default_lives_in_config():
    _, export = _cases()
    assert export.OPSET == config.ONNX_OPSET
    assert f"default {config.ONNX_OPSET}" in build_parser()._subparsers._group_actions[0].choices["export"].format_help()


def test_help_shows_the_config_values():
    serve_help = build_parser()._subparsers._group_actions[0].choices["serve"].format_help()
    assert f"(default {config.SERVE_PORT})" in serve_help and f"(default {config.SERVE_HOST}" in serve_help
