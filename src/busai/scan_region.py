"""Find the B-mode image inside a screenshot or a DICOM frame, so the models see the scan only.

A scanner's screen holds the scan with text, rulers, grey and colour bars and tool bars around
it; the models were trained on bare scans, and the clutter changes their answers. No library
finds "the ultrasound part" of a screen, so this is hand-written and kept simple:

1. tissue = grey (low colour saturation) pixels with speckle: the local mean of
   ``|image - its 3x3 mean|`` is above a small floor. Flat backgrounds and smooth ramps (a
   grey bar) have none; colour bars and coloured calipers fail the grey test.
2. On a coarse grid, an opening removes what is thin (text lines, ruler ticks, caliper marks).
3. The largest connected part's bounding box, joined by parts a dark band (a shadow, a black
   lesion) cut off from it, and grown back over the dark rows and columns at its edges that
   still belong to the scan (not the screen's flat background), is the scan region.

When the region is nearly the whole image (a bare scan, as BUSI's are) the image is used as it
is, so bare scans get exactly the prediction they always got; so is it when the region found is
under 64 pixels a side (no scan is that small), or when most of what lies outside it is image
content rather than a screen's flat background (a smooth scan whose speckle shows in one band).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

TEXTURE_FLOOR = 0.6  # grey levels: mean |pixel - 3x3 mean| of speckle; flat screen backgrounds sit near 0
MAX_SATURATION = 24  # max - min of the RGB channels: grey maps (even tinted ones) stay under it, colour overlays do not
WHOLE_IMAGE_SHARE = 0.85  # a region covering at least this share of the image's area means: no frame to remove
MIN_REGION_SIDE = 64  # px: a smaller "scan" inside an image is a mark or a drawing, not the scan
GRID_CELLS = 240  # the coarse grid's cells along the shorter side
MAX_CONTENT_OUTSIDE = 0.5  # share of scan-like pixels outside a found region above which it is not a frame


@dataclass(frozen=True)
class ScanRegion:
    """The scan's box in the image's pixels: x0, y0 inclusive, x1, y1 exclusive."""

    x0: int
    y0: int
    x1: int
    y1: int
    cropped: bool  # False: the box is the whole image (bare scan, or nothing scan-like found)

    @property
    def width(self) -> int:
        return self.x1 - self.x0

    @property
    def height(self) -> int:
        return self.y1 - self.y0

    def crop(self, image: np.ndarray) -> np.ndarray:
        return image[self.y0 : self.y1, self.x0 : self.x1]

    def paste(self, crop_values: np.ndarray, shape: tuple[int, int], fill=0) -> np.ndarray:
        """A crop-sized array (mask or probability) placed back at the original image's size."""
        full = np.full(tuple(shape) + crop_values.shape[2:], fill, dtype=crop_values.dtype)
        full[self.y0 : self.y1, self.x0 : self.x1] = crop_values
        return full

    def to_dict(self) -> dict:
        return {"x": self.x0, "y": self.y0, "width": self.width, "height": self.height, "cropped": self.cropped}


def whole_image(shape: tuple[int, ...]) -> ScanRegion:
    return ScanRegion(0, 0, int(shape[1]), int(shape[0]), False)


def colour_planes(image_rgb: np.ndarray) -> np.ndarray:
    """(3, H, W) contiguous copy of an (H, W, 3) image: numpy's element-wise work on one channel of
    an interleaved image is strided and runs many times slower than on a plane."""
    return np.ascontiguousarray(np.moveaxis(np.asarray(image_rgb), -1, 0))


def grey_and_spread(image_rgb: np.ndarray, dtype=np.float32) -> tuple[np.ndarray, np.ndarray]:
    """(mean of the channels, max - min of the channels) of an (H, W, 3) image, in ``dtype``.

    Equal to ``rgb.mean(axis=2)`` and ``rgb.max(axis=2) - rgb.min(axis=2)`` (tested); 8-bit images are
    summed exactly in 16-bit integers, the fast path for the scans predict reads."""
    planes = colour_planes(image_rgb)
    eight_bit = planes.dtype == np.uint8
    red, green, blue = planes if eight_bit else planes.astype(dtype)
    total = (red.astype(np.uint16) if eight_bit else red) + green + blue
    spread = np.maximum(np.maximum(red, green), blue) - np.minimum(np.minimum(red, green), blue)
    return total.astype(dtype, copy=False) / dtype(3), spread.astype(dtype, copy=False)


def tissue_map(image_rgb: np.ndarray) -> np.ndarray:
    """bool (H, W): grey pixels with speckle-like texture (step 1 of the module's recipe)."""
    return _tissue(*_fine_detail(image_rgb))


def _fine_detail(image_rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(channel spread, |grey - its 3x3 mean|): what the tissue map and the scan-like map share."""
    grey, spread = grey_and_spread(image_rgb)
    return spread, np.abs(grey - ndimage.uniform_filter(grey, 3))


def _tissue(spread: np.ndarray, detail: np.ndarray) -> np.ndarray:
    window = max(3, round(min(detail.shape) / 120) | 1)
    texture = ndimage.uniform_filter(detail, window) > TEXTURE_FLOOR
    if spread.max() <= MAX_SATURATION - 1:  # a local mean cannot reach the bound: skip the filter (grey scans)
        return texture
    return texture & (ndimage.uniform_filter(spread, window) < MAX_SATURATION)


def square_opening(mask: np.ndarray, side: int) -> np.ndarray:
    """``ndimage.binary_opening(mask, structure=np.ones((side, side)))`` (equal, tested), as a minimum
    then a maximum filter: scipy runs those separably in linear time, several times faster than the
    binary erosion with a square. An even square's dilation sits one pixel off its erosion's centre,
    as binary_opening reflects the structure."""
    shift = -1 if side % 2 == 0 else 0
    eroded = ndimage.minimum_filter(mask.view(np.uint8), size=side, mode="constant", cval=0)
    return ndimage.maximum_filter(eroded, size=side, mode="constant", cval=0, origin=shift).astype(bool)


def find_scan_region(image_rgb: np.ndarray) -> ScanRegion:
    """The box of the B-mode scan inside ``image_rgb`` (uint8 H, W, 3); the whole image when the
    scan fills it or nothing scan-like is found."""
    return locate_scan(image_rgb)[0]


def locate_scan(image_rgb: np.ndarray) -> tuple[ScanRegion, np.ndarray | None]:
    """:func:`find_scan_region` and the image's :func:`tissue_map` it computed on the way (None for
    an image under 64 pixels a side), so a caller that needs both computes the map once."""
    image_rgb = np.asarray(image_rgb)
    if image_rgb.ndim == 2:
        image_rgb = np.repeat(image_rgb[..., None], 3, axis=2)
    height, width = image_rgb.shape[:2]
    if min(height, width) < 64:
        return whole_image(image_rgb.shape), None
    spread, detail = _fine_detail(image_rgb)
    tissue = _tissue(spread, detail)
    return _region(image_rgb, tissue, detail), tissue


def _region(image_rgb: np.ndarray, tissue: np.ndarray, detail: np.ndarray) -> ScanRegion:
    height, width = image_rgb.shape[:2]

    # Coarse grid: a cell is tissue when most of its pixels are.
    cell = max(1, min(height, width) // GRID_CELLS)
    rows, cols = height // cell, width // cell
    grid = tissue[: rows * cell, : cols * cell].reshape(rows, cell, cols, cell).mean(axis=(1, 3)) > 0.5
    thin = max(3, min(rows, cols) // 20)  # wider than a text line or a ruler, narrower than any scan
    grid = square_opening(grid, thin)
    labels, count = ndimage.label(grid)
    if count == 0:
        return whole_image(image_rgb.shape)
    boxes = [(c[1].start * cell, c[0].start * cell, c[1].stop * cell, c[0].stop * cell) for c in ndimage.find_objects(labels)]
    sizes = np.bincount(labels.ravel())[1:]
    order = [int(i) for i in np.argsort(-sizes)]
    box = list(boxes[order[0]])
    background = _background(image_rgb)
    scan_like = _scan_like(background, detail)
    # Parts of the scan cut off from the largest part by a dark band (a shadow, a black lesion)
    # lie within its columns (or rows), and the band between is scan, not flat screen background;
    # text bars and side panels fail one of the two.
    for i in order[1:]:
        if sizes[i] < thin * thin:
            break
        gap = _gap_between(boxes[i], box, thin * cell)
        if gap is not None and scan_like[gap].size and scan_like[gap].mean() > 0.5:
            box = [min(box[0], boxes[i][0]), min(box[1], boxes[i][1]), max(box[2], boxes[i][2]), max(box[3], boxes[i][3])]
    box = [box[0], box[1], min(box[2], width), min(box[3], height)]
    x0, y0, x1, y1 = _trim_background_edges(background, _grow_over_dark_edges(tissue, scan_like, box))
    if (x1 - x0) * (y1 - y0) >= WHOLE_IMAGE_SHARE * height * width or min(x1 - x0, y1 - y0) < MIN_REGION_SIDE:
        return whole_image(image_rgb.shape)  # the scan fills the image, or what was found is too small to be one
    outside = np.ones((height, width), bool)
    outside[y0:y1, x0:x1] = False
    if scan_like[outside].mean() > MAX_CONTENT_OUTSIDE:
        # A screen's frame is mostly flat background; image content all around the box means the
        # scan fills the image and only part of it had speckle (a smoothed or low-gain scan).
        return whole_image(image_rgb.shape)
    return ScanRegion(x0, y0, x1, y1, True)


def _scan_like(background: np.ndarray, detail: np.ndarray) -> np.ndarray:
    """bool (H, W): pixels unlike the screen's flat background (:func:`_background`), or with any
    fine detail (``detail``: :func:`_fine_detail`'s). A scan's deep rows can be nearly black, but
    rarely the exact flat colour of the screen around it."""
    return ndimage.uniform_filter((~background | (detail > 0.5)).astype(np.float32), 5) > 0.5


def _background(image_rgb: np.ndarray) -> np.ndarray:
    """bool (H, W): pixels within 2 grey levels, in every channel, of the median colour of the image's border."""
    rgb = np.asarray(image_rgb)
    border = np.concatenate([rgb[0], rgb[-1], rgb[:, 0], rgb[:, -1]]).astype(np.int16)
    colour = np.median(border, axis=0)
    near = np.ones(rgb.shape[:2], bool)
    for plane, level in zip(colour_planes(rgb), colour):
        low, high = level - 2, level + 2
        if rgb.dtype == np.uint8:  # the same test on whole grey levels, in 8 bits without a float copy
            low, high = max(0, math.ceil(low)), min(255, math.floor(high))
        near &= (plane >= low) & (plane <= high)
    return near


def _gap_between(part, box, margin: int):
    """The slices of the band between ``part`` and ``box`` when ``part`` lies within the box's
    columns (or rows), give or take ``margin`` pixels, and no further from it than the box is long;
    None otherwise. A part that overlaps the box has an empty band that counts as scan."""
    x0, y0, x1, y1 = part
    bx0, by0, bx1, by1 = box
    if x0 >= bx0 - margin and x1 <= bx1 + margin:
        top, bottom = (y1, by0) if y1 <= by0 else (by1, y0) if y0 >= by1 else (by0, by0 + 1)
        if bottom - top <= by1 - by0:
            return np.s_[top:bottom, max(x0, bx0) : min(x1, bx1)]
    if y0 >= by0 - margin and y1 <= by1 + margin:
        left, right = (x1, bx0) if x1 <= bx0 else (bx1, x0) if x0 >= bx1 else (bx0, bx0 + 1)
        if right - left <= bx1 - bx0:
            return np.s_[max(y0, by0) : min(y1, by1), left:right]
    return None


def _trim_background_edges(background: np.ndarray, box: tuple[int, int, int, int]) -> tuple[int, int, int, int]:
    """Move each side of ``box`` inwards past lines of the screen's background colour (``background``:
    :func:`_background`; the texture windows above blur the scan's edge a few pixels outwards)."""
    x0, y0, x1, y1 = box

    def flat(line: np.ndarray) -> bool:
        return bool(line.mean() >= 0.9)

    while y1 - y0 > 1 and flat(background[y1 - 1, x0:x1]):
        y1 -= 1
    while y1 - y0 > 1 and flat(background[y0, x0:x1]):
        y0 += 1
    while x1 - x0 > 1 and flat(background[y0:y1, x1 - 1]):
        x1 -= 1
    while x1 - x0 > 1 and flat(background[y0:y1, x0]):
        x0 += 1
    return x0, y0, x1, y1


def _grow_over_dark_edges(tissue: np.ndarray, scan_like: np.ndarray, box: list[int]) -> tuple[int, int, int, int]:
    """Move each side of ``box`` outwards, by at most a quarter of the box, while the next line of
    pixels still looks like scan: some of it tissue, or most of it scan-like (see _scan_like)."""
    x0, y0, x1, y1 = box
    height, width = tissue.shape
    max_y, max_x = (y1 - y0) // 4, (x1 - x0) // 4

    def is_scan(line_tissue: np.ndarray, line_like: np.ndarray) -> bool:
        return bool(line_tissue.mean() > 0.3 or line_like.mean() > 0.6)

    stop = min(height, y1 + max_y)
    while y1 < stop and is_scan(tissue[y1, x0:x1], scan_like[y1, x0:x1]):
        y1 += 1
    stop = max(0, y0 - max_y)
    while y0 > stop and is_scan(tissue[y0 - 1, x0:x1], scan_like[y0 - 1, x0:x1]):
        y0 -= 1
    stop = min(width, x1 + max_x)
    while x1 < stop and is_scan(tissue[y0:y1, x1], scan_like[y0:y1, x1]):
        x1 += 1
    stop = max(0, x0 - max_x)
    while x0 > stop and is_scan(tissue[y0:y1, x0 - 1], scan_like[y0:y1, x0 - 1]):
        x0 -= 1
    return x0, y0, x1, y1
