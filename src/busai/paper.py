"""The study's published numbers, printed beside ours (ArunKumar et al., Preprints.org 2025,
doi:10.20944/preprints202511.0923.v1, CC BY 4.0), transcribed from its Tables 3 to 6.

Note on Table 6: its headline "F1 score" / "Accuracy" columns do not always agree with its
macro-average rows or its text (InceptionV3 test: headline F1 0.86, macro F1 0.75, text "F1 0.75,
accuracy 0.83"). We keep both the headline values and the macro-average F1 row.
"""

# Table 3: tuned segmentation settings (the U-Net++ weight decay is printed as 1.09011 in the paper,
# outside its own 1e-5..1e-3 search range; we use none for it and say so in the results).
SEGMENTATION_SETTINGS = {
    ("resnet18", "unet"): {"lr": 8.1e-5, "weight_decay": 7.9e-5, "batch_size": 8, "optimizer": "adam", "image_size": 288},
    ("resnet18", "unetplusplus"): {"lr": 1.55e-4, "weight_decay": None, "batch_size": 8, "optimizer": "rmsprop", "image_size": 288},
    ("resnet18", "deeplabv3"): {"lr": 1.9e-4, "weight_decay": 1.9e-4, "batch_size": 8, "optimizer": "adamw", "image_size": 256},
}

# Table 4: (pixel accuracy, Dice, IoU, AUC) per split.
SEGMENTATION_SCORES = {
    ("resnet18", "unet"): {"train": (0.97, 0.86, 0.76, 0.91), "val": (0.96, 0.76, 0.62, 0.85), "test": (0.96, 0.74, 0.59, 0.82)},
    ("resnet18", "unetplusplus"): {"train": (0.98, 0.87, 0.77, 0.92), "val": (0.96, 0.76, 0.60, 0.84), "test": (0.97, 0.83, 0.71, 0.91)},
    ("resnet18", "deeplabv3"): {"train": (0.98, 0.87, 0.78, 0.93), "val": (0.97, 0.80, 0.67, 0.87), "test": (0.98, 0.83, 0.70, 0.90)},
}

# Table 5: tuned classification settings.
CLASSIFICATION_SETTINGS = {
    "resnet18": {"optimizer": "rmsprop", "lr": 4.91e-5, "weight_decay": 2.7e-4, "focal_alpha": 0.57, "focal_gamma": 4.03, "batch_size": 32},
    "inception_v3": {
        "optimizer": "adam",
        "lr": 1.63e-5,
        "weight_decay": 9e-5,
        "focal_alpha": 0.33,
        "focal_gamma": 4.41,
        "batch_size": 16,
        "betas": (0.84, 0.98),
    },
    "densenet121": {"optimizer": "rmsprop", "lr": 2.46e-5, "weight_decay": 6e-4, "focal_alpha": 0.65, "focal_gamma": 3.55, "batch_size": 32},
    "mobilenet_v3_large": {
        "optimizer": "adamw",
        "lr": 1.12e-4,
        "weight_decay": 6.26e-3,
        "focal_alpha": 0.44,
        "focal_gamma": 4.86,
        "batch_size": 8,
        "betas": (0.81, 0.96),
    },
    "googlenet": {
        "optimizer": "adam",
        "lr": 8.705e-4,
        "weight_decay": 1.5e-4,
        "focal_alpha": 0.73,
        "focal_gamma": 4.24,
        "batch_size": 32,
        "betas": (0.91, 0.93),
    },
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
