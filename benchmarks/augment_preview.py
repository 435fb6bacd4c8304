"""See what a training augmentation does: a grid of augmented copies of one scan, mask outlined.

The first tile is the scan as cached for training; the others are the recipe's draws for
successive epochs (as ``BusDataset`` seeds them), with the mask's outline in red so one can check
that framing moves it with the image and that overlays leave it alone. Without ``--image`` the
scan is a synthetic phantom (``busai.data.synthetic.make_phantom``).

    python benchmarks/augment_preview.py --out /tmp/scanner.png
    python benchmarks/augment_preview.py --augment strong --image scan.png --mask scan_mask.png --out /tmp/strong.png
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

from busai.config import AUGMENTATIONS
from busai.data.dataset import build_augmentations, resize_pair
from busai.data.synthetic import make_phantom


def load_scan(image: str | None, mask: str | None, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    if image is None:
        gray, masks = make_phantom(np.random.default_rng(seed), (size, size), "malignant")
        return np.repeat(gray[..., None], 3, axis=2), np.any(masks, axis=0).astype(np.uint8)
    rgb = np.asarray(Image.open(image).convert("RGB"))
    lesion = (np.asarray(Image.open(mask).convert("L")) > 0).astype(np.uint8) if mask else np.zeros(rgb.shape[:2], np.uint8)
    if lesion.shape != rgb.shape[:2]:
        raise SystemExit(f"error: {mask}: mask is {lesion.shape[1]}x{lesion.shape[0]}, image {rgb.shape[1]}x{rgb.shape[0]}; give the image's own mask")
    return resize_pair(rgb, lesion, size)


def outlined(image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    contours, _ = cv2.findContours(mask.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    return cv2.drawContours(np.ascontiguousarray(image).copy(), contours, -1, (255, 0, 0), 1)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="PNG to write (refused if it exists, unless --force)")
    parser.add_argument("--augment", default="scanner", choices=[a for a in AUGMENTATIONS if a != "none"])
    parser.add_argument("--image", help="a scan to augment instead of the synthetic phantom")
    parser.add_argument("--mask", help="its mask (white lesion on black)")
    parser.add_argument("--size", type=int, default=256, help="training image size (default 256)")
    parser.add_argument("--rows", type=int, default=4)
    parser.add_argument("--cols", type=int, default=6)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--force", action="store_true", help="overwrite --out")
    args = parser.parse_args(argv)
    out = Path(args.out)
    if out.exists() and not args.force:
        print(f"error: {out} exists; choose another --out or pass --force", file=sys.stderr)
        return 1
    for given in (args.image, args.mask):
        if given and not Path(given).is_file():
            print(f"error: {given}: no such file; give a scan (--image) and its mask (--mask)", file=sys.stderr)
            return 1
    image, mask = load_scan(args.image, args.mask, args.size, args.seed)
    augment = build_augmentations(args.augment, seed=args.seed)
    tiles = [outlined(image, mask)]
    for epoch in range(args.rows * args.cols - 1):
        augment.set_random_seed(int(np.random.SeedSequence([args.seed, epoch, 0]).generate_state(1)[0]))  # as BusDataset draws them
        drawn = augment(image=image, mask=mask)
        tiles.append(outlined(drawn["image"], drawn["mask"]))
    rows = [np.concatenate(tiles[r * args.cols : (r + 1) * args.cols], axis=1) for r in range(args.rows)]
    grid = np.concatenate(rows, axis=0)
    out.parent.mkdir(parents=True, exist_ok=True)
    temp = out.with_name(out.name + ".tmp.png")
    Image.fromarray(grid).save(temp)
    temp.replace(out)
    print(f"wrote {out}: {args.rows} x {args.cols} tiles of {args.size} px, '{args.augment}' augmentation")
    return 0


if __name__ == "__main__":
    sys.exit(main())
