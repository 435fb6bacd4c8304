"""The inference fast path: batch norm folded into convolutions, and the path chosen per machine."""

import json

import pytest
import torch
from torch import nn

from busai.inference import fold_batch_norm, inference_network
from busai.release import resolve_model


def _norms(module) -> int:
    return sum(isinstance(m, nn.BatchNorm2d) for m in module.modules())


def _with_statistics(module: nn.Module, seed: int = 0) -> nn.Module:
    """Random running statistics and affine terms, so a fold that ignores any of them shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=generator))
                m.running_var.copy_(torch.rand(m.num_features, generator=generator) + 0.5)
                m.weight.copy_(torch.randn(m.num_features, generator=generator))
                m.bias.copy_(torch.randn(m.num_features, generator=generator))
    return module.eval()


def test_folding_a_plain_conv_bn_relu_matches_and_removes_the_norm():
    net = _with_statistics(nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 2, 1), nn.BatchNorm2d(2)))
    folded = fold_batch_norm(net)
    x = torch.randn(2, 3, 16, 16)
    assert _norms(folded) == 0 and _norms(net) == 2  # the original is left as it was
    assert torch.allclose(folded(x), net(x), atol=1e-5)


def test_a_norm_whose_convolution_feeds_something_else_too_is_kept():
    class Branch(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.bn = nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4)

        def forward(self, x):
            y = self.conv(x)
            return self.bn(y) + y  # folding would change the second use of y

    net = _with_statistics(Branch())
    folded = fold_batch_norm(net)
    x = torch.randn(1, 3, 8, 8)
    assert _norms(folded) == 1 and torch.allclose(folded(x), net(x), atol=1e-6)


@pytest.mark.parametrize("task", ["seg", "cls"])
def test_folded_release_architectures_match_the_network(task, seg_run, cls_run):
    """EfficientNet-Lite0 (timm's norm + activation layers, 'same' convolutions) and the U-Net decoder."""
    loaded = resolve_model(seg_run if task == "seg" else cls_run, task)
    net = _with_statistics(loaded.module)
    folded = inference_network(net)
    assert _norms(folded) == 0 < _norms(net)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        expected, got = net(x), folded(x)
    assert (got - expected).abs().max() <= 1e-4 * max(1.0, expected.abs().max().item())
    assert inference_network(net) is folded  # made once
    with torch.no_grad():
        next(net.parameters()).add_(1.0)  # new weights: folded again
    assert inference_network(net) is not folded


def test_a_fold_shares_storage_but_changes_nothing_of_the_network(seg_run):
    """The folded copy of an eval-mode network takes no second copy of the weights it leaves alone, yet
    converting it, switching its mode or hooking it leaves the network as it was."""
    net = resolve_model(seg_run, "seg").module
    before = {k: v.clone() for k, v in net.state_dict().items()}
    folded = fold_batch_norm(net)
    folded.to(memory_format=torch.channels_last).train()
    next(m for m in folded.modules() if isinstance(m, nn.Conv2d)).register_forward_hook(lambda *args: None)
    assert {id(p) for p in folded.parameters()}.isdisjoint({id(p) for p in net.parameters()})
    assert {p.untyped_storage().data_ptr() for p in folded.parameters()} & {p.untyped_storage().data_ptr() for p in net.parameters()}
    assert not any(m.training or m._forward_hooks for m in net.modules())
    after = net.state_dict()
    assert all(torch.equal(after[k], v) and after[k].is_contiguous() for k, v in before.items())


def _cpu(monkeypatch, *flags):
    from busai import machine

    monkeypatch.setattr(machine, "_cpuinfo", lambda: ("Test CPU 9000", frozenset(flags)))


@pytest.mark.parametrize(
    ("flags", "expected"),
    [(("avx2", "fma"), "channels_last"), (("avx2", "avx512f", "avx512_bf16"), "bf16"), (("avx2", "amx_tile", "amx_bf16"), "bf16"), ((), "channels_last")],
)
def test_the_cpu_flags_choose_the_default_path(monkeypatch, flags, expected, seg_run):
    from busai.inference import path_name
    from busai.machine import choose_path, cpu_flags

    _cpu(monkeypatch, *flags)
    assert choose_path("any model") == expected
    assert set(cpu_flags()) == set(flags)
    assert path_name(resolve_model(seg_run, "seg")).startswith({"bf16": "channels_last + bf16", "channels_last": "channels_last + fp32"}[expected])


@pytest.mark.parametrize(
    ("cap", "flags", "native"),
    [
        ("AVX2", ["avx2", "fma"], False),  # how an AVX2 machine's path is tried on a newer CPU
        ("avx512_core", ["avx2", "avx512f", "fma"], False),
        ("AVX512_CORE_BF16", ["avx2", "avx512_bf16", "avx512f", "fma"], True),
        ("ALL", ["amx_bf16", "amx_tile", "avx2", "avx512_bf16", "avx512f", "fma"], True),  # no cap
    ],
)
def test_a_onednn_isa_cap_hides_the_flags_above_it_from_every_path_choice(monkeypatch, cap, flags, native):
    import busai.device
    from busai.machine import choose_path, cpu_flags
    from busai.runs import machine_info

    _cpu(monkeypatch, "avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", cap)
    assert cpu_flags() == flags
    assert busai.device.cpu_has_native_bf16() is native  # the training path asks here
    assert choose_path("any model") == ("bf16" if native else "channels_last")
    info = machine_info()
    assert info["cpu_flags"] == flags and info["cpu_native_bf16"] is native and info.get("isa_cap") == (None if cap == "ALL" else cap.upper())


def test_a_measured_probe_overrides_the_default_only_by_a_clear_margin_and_is_cached(monkeypatch, tmp_path):
    from busai import machine

    _cpu(monkeypatch, "avx2", "fma")
    monkeypatch.setenv("BUSAI_PROBE", "1")
    monkeypatch.setenv("BUSAI_CACHE_DIR", str(tmp_path))
    asked = []

    def probe(times):
        def measure(candidates):
            asked.append(tuple(candidates))
            return dict(zip(candidates, times))

        return measure

    assert machine.choose_path("net-a", probe((1.0, 0.95))) == "channels_last"  # 5% faster: within the noise, default kept
    assert machine.choose_path("net-b", probe((1.0, 0.5))) == "contiguous"
    assert asked == [("channels_last", "contiguous")] * 2
    assert machine.choose_path("net-b", probe((0.1, 9.0))) == "contiguous" and len(asked) == 2  # from the cache, not measured again
    cache = json.loads((tmp_path / "inference_paths.json").read_text())
    (entry,) = cache.values()
    assert "Test CPU 9000" in next(iter(cache)) and entry["net-b"]["path"] == "contiguous" and entry["net-b"]["flags"] == ["avx2", "fma"]


def test_the_auto_path_runs_the_chosen_memory_format_with_equal_outputs(monkeypatch, tmp_path, seg_run):
    """A forced AVX2 CPU whose probe favours contiguous fp32 predicts with it, like the reference."""
    from busai.inference import torch_logits

    _cpu(monkeypatch, "avx2")
    monkeypatch.setenv("BUSAI_PROBE", "1")
    monkeypatch.setenv("BUSAI_CACHE_DIR", str(tmp_path))
    seen = []
    monkeypatch.setattr("busai.device._probe", lambda model, size, candidates: seen.append(size) or {"channels_last": 1.0, "contiguous": 0.1})
    net = resolve_model(seg_run, "seg").module
    x = torch.randn(1, 3, 64, 64)
    got = torch_logits(net, x)
    assert seen == [64]
    weight = next(w for w in inference_network(net).parameters() if w.ndim == 4 and w.shape[1] > 1 and w.shape[2] > 1)
    assert weight.is_contiguous() and not weight.is_contiguous(memory_format=torch.channels_last)  # the probe's choice ran
    assert torch.allclose(got, torch_logits(net, x, precision="fp32"), atol=1e-4)


@pytest.mark.parametrize("seconds, expected", [({"torch": 1.0, "onnx": 0.5}, "onnx"), ({"torch": 1.0, "onnx": 0.9}, "torch")])
def test_auto_backend_runs_the_shipped_onnx_file_only_where_this_machine_measured_it_clearly_faster(monkeypatch, tmp_path, seg_run, seconds, expected):
    import busai.export
    from busai.export import load_backend

    monkeypatch.setenv("BUSAI_PROBE", "1")
    monkeypatch.setenv("BUSAI_CACHE_DIR", str(tmp_path))
    asked = []
    monkeypatch.setattr(busai.export, "_probe_backends", lambda models, size: asked.append(sorted(models)) or seconds)
    assert load_backend("release", "seg").backend == expected
    assert load_backend("release", "seg").backend == expected and asked == [["onnx", "torch"]]  # measured once, then cached
    (entry,) = json.loads((tmp_path / "inference_paths.json").read_text()).values()
    assert [value["path"] for key, value in entry.items() if key.startswith("backend:segmentation")] == [expected]
    # asked for by name, or a run folder without a shipped model.onnx: never measured, never swapped
    assert load_backend("release", "seg", backend="torch").backend == "torch"
    assert load_backend(seg_run, "seg").backend == "torch" and len(asked) == 1


def test_the_backend_probe_times_both_runtimes_on_one_image(monkeypatch):
    from busai.export import _probe_backends, load_backend

    monkeypatch.setenv("BUSAI_PROBE", "0")
    models = {"torch": load_backend("release", "cls", backend="torch"), "onnx": load_backend("release", "cls", backend="onnx")}
    seconds = _probe_backends(models, models["torch"].image_size, rounds=1)
    assert sorted(seconds) == ["onnx", "torch"] and all(0 < s < 60 for s in seconds.values())


def test_serve_keeps_an_auto_classifier_in_pytorch_for_grad_cam_even_where_onnx_is_faster(monkeypatch, tmp_path):
    import busai.export
    from busai.pipeline import load_models

    monkeypatch.setenv("BUSAI_PROBE", "1")
    monkeypatch.setenv("BUSAI_CACHE_DIR", str(tmp_path))
    monkeypatch.setattr(busai.export, "_probe_backends", lambda models, size: {"torch": 1.0, "onnx": 0.5})
    assert [m.backend for m in load_models()] == ["onnx", "onnx"]
    assert [m.backend for m in load_models(grad_cam=True)] == ["onnx", "torch"]
