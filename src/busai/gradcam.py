"""Grad-CAM heat-maps for the classifier (pytorch-grad-cam): where in the scan the predicted class came from."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn

from busai.errors import ConfigError
from busai.models.registry import LITE_VARIANTS
from busai.backends import LoadedModel

# Classifier name -> its last convolutional block (the layer whose activations Grad-CAM weighs).
# Each is the block right before global pooling, where the features are still spatial.
GRADCAM_LAYERS = {
    "resnet18": "layer4",
    "densenet121": "features",
    "inception_v3": "Mixed_7c",
    "mobilenet_v3_large": "features",
    "googlenet": "inception5b",
    # timm: conv_head -> bn2 (BatchNorm + ReLU6) -> global pool, in every Lite variant.
    **{f"efficientnet_lite{v}": "bn2" for v in LITE_VARIANTS},
}


def gradcam_layer(module: nn.Module, name: str) -> nn.Module:
    """The Grad-CAM target layer of classifier ``name``; for a name not mapped, the last Conv2d."""
    path = GRADCAM_LAYERS.get(name)
    if path is not None:
        return module.get_submodule(path)
    convs = [m for m in module.modules() if isinstance(m, nn.Conv2d)]
    if not convs:
        raise ConfigError(f"classifier '{name}': has no convolution for Grad-CAM; add it to busai.gradcam.GRADCAM_LAYERS")
    return convs[-1]


def gradcam_heatmap(loaded: LoadedModel, image_rgb: np.ndarray, class_index: int | None = None) -> np.ndarray:
    """The scan (uint8 H, W, 3) blended with the Grad-CAM map of ``class_index`` (default: the predicted class)."""
    import cv2
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    if loaded.task != "classification" or not loaded.supports_gradients:
        raise ConfigError(f"{loaded.source}: Grad-CAM needs a PyTorch classifier (not an ONNX file or a segmenter)")
    module = loaded.module.float().eval()
    x = loaded.preprocessing.tensor(image_rgb)[None].to(next(module.parameters()).device)
    targets = None if class_index is None else [ClassifierOutputTarget(class_index)]
    with torch.enable_grad(), GradCAM(model=module, target_layers=[gradcam_layer(module, loaded.spec["name"])]) as cam:
        grayscale = cam(input_tensor=x, targets=targets)[0]
    height, width = image_rgb.shape[:2]
    grayscale = cv2.resize(grayscale, (width, height), interpolation=cv2.INTER_LINEAR)
    return show_cam_on_image(image_rgb.astype(np.float32) / 255.0, np.clip(grayscale, 0, 1), use_rgb=True, image_weight=0.6)
