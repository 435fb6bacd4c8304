"""The study's published numbers, printed beside ours (ArunKumar et al., Preprints.org 2025,
doi:10.20944/preprints202511.0923.v1, CC BY 4.0), transcribed from its Tables 1, 2, 4 and 6.

Its tuned settings (Tables 3 and 5) live in ``busai.tune.space`` because ``busai tune
--enqueue-paper`` starts from them; :func:`reference` prints them too.

Note on Table 6: its headline "F1 score" / "Accuracy" columns do not always agree with its
macro-average rows or its text (InceptionV3 test: headline F1 0.86, macro F1 0.75, text "F1 0.75,
accuracy 0.83"). We keep both the headline values and the macro-average F1 row.
"""

# Table 4: (pixel accuracy, Dice, IoU, AUC) per split.
SEGMENTATION_SCORES = {
    ("resnet18", "unet"): {"train": (0.97, 0.86, 0.76, 0.91), "val": (0.96, 0.76, 0.62, 0.85), "test": (0.96, 0.74, 0.59, 0.82)},
    ("resnet18", "unetplusplus"): {"train": (0.98, 0.87, 0.77, 0.92), "val": (0.96, 0.76, 0.60, 0.84), "test": (0.97, 0.83, 0.71, 0.91)},
    ("resnet18", "deeplabv3"): {"train": (0.98, 0.87, 0.78, 0.93), "val": (0.97, 0.80, 0.67, 0.87), "test": (0.98, 0.83, 0.70, 0.90)},
}

# Table 6: per split (headline F1, headline accuracy, macro-average F1 row).
CLASSIFICATION_SCORES = {
    "resnet18": {"train": (0.90, 0.90, 0.95), "val": (0.81, 0.82, 0.89), "test": (0.77, 0.81, 0.81)},
    "inception_v3": {"train": (0.91, 0.91, 0.91), "val": (0.77, 0.74, 0.86), "test": (0.86, 0.83, 0.75)},
    "densenet121": {"train": (0.86, 0.85, 0.85), "val": (0.73, 0.71, 0.69), "test": (0.82, 0.82, 0.90)},
    "mobilenet_v3_large": {"train": (0.93, 0.94, 0.93), "val": (0.81, 0.80, 0.80), "test": (0.71, 0.71, 0.71)},
    "googlenet": {"train": (0.91, 0.91, 0.91), "val": (0.73, 0.73, 0.73), "test": (0.78, 0.77, 0.77)},
}

# Tables 1 and 2: image-mask pairs per split (segmentation) and images per class and split
# (classification). The paper split 780 images 80:10:10 image by image.
SPLIT_IMAGES = {"train": 624, "val": 77, "test": 77}
SPLIT_CLASS_COUNTS = {
    "train": {"normal": 106, "benign": 350, "malignant": 168},
    "val": {"normal": 13, "benign": 43, "malignant": 21},
    "test": {"normal": 13, "benign": 43, "malignant": 21},
}


def settings_tables() -> tuple[str, ...]:
    """The paper's Tables 3 and 5 as Markdown (empty without the tune extra, which holds them)."""
    from busai.extras import MissingExtraError

    try:
        from busai.tune.space import PAPER_CLASSIFICATION_SETTINGS, PAPER_SEGMENTATION_SETTINGS
    except MissingExtraError:
        return ()
    seg = ["| Encoder:Decoder | Learning rate | Weight decay | Batch size | Optimizer | Image size |", "|---|---|---|---|---|---|"]
    for (encoder, decoder), s in PAPER_SEGMENTATION_SETTINGS.items():
        decay = "–" if s["weight_decay"] is None else f"{s['weight_decay']:g}"  # the paper's U-Net++ value lies outside its own range
        seg.append(f"| {encoder}:{decoder} | {s['lr']:g} | {decay} | {s['batch_size']} | {s['optimizer']} | {s['image_size']} |")
    cls = ["| Model | Optimizer | Learning rate | Weight decay | FL(α) | FL(γ) | Batch size | β1, β2 |", "|---|---|---|---|---|---|---|---|"]
    for name, s in PAPER_CLASSIFICATION_SETTINGS.items():
        betas = ", ".join(f"{b:g}" for b in s["betas"]) if s.get("betas") else "–"
        cls.append(
            f"| {name} | {s['optimizer']} | {s['lr']:g} | {s['weight_decay']:g} | {s['focal_alpha']:g} | {s['focal_gamma']:g} | {s['batch_size']} | {betas} |"
        )
    return ("\n".join(seg), "\n".join(cls))


def reference():
    """The paper as a :class:`busai.report.Reference`: its numbers beside ours in reports and docs/results.md."""
    from busai.report import Reference

    return Reference(
        name="Paper",
        segmentation=SEGMENTATION_SCORES,
        classification=CLASSIFICATION_SCORES,
        classification_columns="F1 / acc / macro F1",
        split_images=SPLIT_IMAGES,
        split_class_counts=SPLIT_CLASS_COUNTS,
        headings={
            "splits": "paper's Tables 1 and 2",
            "tuning": "paper's Tables 3 and 5",
            "segmentation": "paper's Table 4",
            "classification": "paper's Table 6",
            "confusion": "paper's Figures 6-10",
            "samples": "paper's Figures 3-5 and 12",
        },
        note="The paper's numbers are beside ours for orientation: its split was image by image.",
        tuned_settings=settings_tables(),
    )
