"""busai: breast-ultrasound lesion segmentation and normal / benign / malignant classification."""

__version__ = "0.1.0"

CLASSES = ("normal", "benign", "malignant")
"""Class names in label-index order, used by every model, metric and output file."""

SPLIT_NAMES = ("train", "val", "test")
"""The splits of a split file, in the order tables and figures show them."""
