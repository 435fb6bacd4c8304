"""Which backbone start knows more about BUSI classes: ImageNet, or a segmentation run's encoder?

A linear probe: every train and validation image goes once through a frozen encoder (no
augmentation), its deepest feature map is pooled (mean and max over space), and a class-balanced
logistic regression fitted on train is scored on validation. Test is never touched. The probe is
cheap (a minute on 2 cores) and decides whether a classifier should start from a segmentation
encoder (`busai train cls --weights SEG_CHECKPOINT`) before spending a full training on it.
Writes ``results/encoder_probe.json``.

    python benchmarks/encoder_probe.py --data DATA_DIR --splits splits/busi.json \
        --segmentation src/busai/release/segmentation/model.safetensors
"""

from __future__ import annotations

import argparse
import json
import shlex
import sys
from pathlib import Path

import numpy as np
import torch

from busai.data.dataset import BusDataset, ImageCache
from busai.data.splits import load_split_records, read_splits
from busai.inference import fast_context
from busai.models.registry import ENCODERS, build
from busai.models.weights import file_sha256
from busai.runs import best_threads, library_versions, load_weights_into, write_json


def pooled_features(encoder: torch.nn.Module, dataset: BusDataset, batch_size: int = 16) -> np.ndarray:
    """(N, 2C): mean- and max-pooled deepest encoder features of every image, in order."""
    rows = []
    context = fast_context(encoder)
    with torch.inference_mode(), context:
        for start in range(0, len(dataset), batch_size):
            x = torch.stack([dataset[i]["image"] for i in range(start, min(start + batch_size, len(dataset)))])
            deepest = encoder(x.contiguous(memory_format=torch.channels_last))[-1].float()
            rows.append(torch.cat([deepest.mean((2, 3)), deepest.amax((2, 3))], 1))
    return torch.cat(rows).numpy()


def probe(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray, c: float) -> dict:
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score, f1_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    model = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000, class_weight="balanced"))
    predicted = model.fit(train_x, train_y).predict(val_x)
    return {
        "C": c,
        "val_accuracy": round(float(accuracy_score(val_y, predicted)), 4),
        "val_macro_f1": round(float(f1_score(val_y, predicted, average="macro")), 4),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", required=True)
    p.add_argument("--splits", required=True)
    p.add_argument("--segmentation", required=True, help="weights of a trained segmentation model (run checkpoint or release file)")
    p.add_argument("--decoder", default="unet")
    p.add_argument("--encoder", default="efficientnet-lite0", choices=list(ENCODERS))
    p.add_argument("--image-size", type=int, default=256)
    p.add_argument("--c", type=float, nargs="+", default=[0.01, 0.1, 1.0], help="inverse regularisation strengths tried")
    p.add_argument("--out", default="results/encoder_probe.json")
    args = p.parse_args()

    best_threads()
    splits = read_splits(args.splits)
    records = {name: load_split_records(args.data, splits, name) for name in ("train", "val")}
    labels = {name: np.array([r.label_index for r in recs]) for name, recs in records.items()}
    starts = {}
    for start in ("imagenet", "segmentation"):
        built = build("seg", args.decoder, encoder=args.encoder, weights="imagenet" if start == "imagenet" else "none", image_size=args.image_size)
        if start == "segmentation":
            load_weights_into(built.module, Path(args.segmentation))
        encoder = built.module.encoder.eval()
        pre = built.preprocessing
        cache = ImageCache()
        features = {name: pooled_features(encoder, BusDataset(recs, pre.image_size, pre.mean, pre.std, cache=cache)) for name, recs in records.items()}
        starts[start] = [probe(features["train"], labels["train"], features["val"], labels["val"], c) for c in args.c]

    summary = {
        "command": "python " + shlex.join(sys.argv),
        "segmentation_weights_sha256": file_sha256(args.segmentation),
        "config": {k: v for k, v in vars(args).items() if k != "out"},
        "images": {name: len(recs) for name, recs in records.items()},
        "probes": starts,
        "best_val_macro_f1": {start: max(r["val_macro_f1"] for r in rows) for start, rows in starts.items()},
        "versions": library_versions(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    write_json(Path(args.out), summary)
    print(json.dumps(summary["best_val_macro_f1"]))


if __name__ == "__main__":
    main()
