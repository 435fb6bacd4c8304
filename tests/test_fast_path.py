"""The inference fast path: batch norm folded into convolutions, and the path chosen per machine."""

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
