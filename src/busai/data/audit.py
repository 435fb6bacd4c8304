"""Audit a dataset in any layout busai reads: counts, patients, exact and near-duplicate images,
label conflicts, bad files.

``audit_dataset`` decodes every image and mask once and never raises on a bad file: everything it
finds is a :class:`~busai.data.discover.Problem` in the report, so one run lists all problems.

Near duplicates are found with a perceptual hash (``imagehash.phash``, 64 bits) of the grayscale
image; two images whose hashes differ in at most ``near_threshold`` bits are linked, and linked
images are grouped transitively (connected components). Exact duplicates (identical grayscale
pixels) are always linked.

``DEFAULT_NEAR_THRESHOLD = 8``: the largest distance at which every pair inspected on BUSI was the
same scan (re-cropped, re-scaled, a neighbouring frame, or one image filed under two classes); at
10 distinct scans start to pair up. phash sets exactly 32 of its 64 bits (it thresholds DCT terms
at their median), so distances are even. The pairs inspected and the groups it gives are in
docs/study-log.md ("figures moved out of docstrings").
"""

from __future__ import annotations

import hashlib
import os
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import numpy as np
from PIL import Image

from busai.data.discover import Problem, Record, decode_image, mask_foreground, natural_key
from busai.errors import ConfigError, DataError
from busai.labels import count_names, label_key
from busai.outputs import printable

T = TypeVar("T")
U = TypeVar("U")

DEFAULT_NEAR_THRESHOLD = 8
"""Largest phash Hamming distance (of 64 bits) at which two images count as near duplicates."""


@dataclass
class AuditReport:
    root: Path
    counts: dict[str, int]
    masks: int
    near_threshold: int
    format: str = "busi"
    unlabelled: int = 0
    groups: dict[str, dict[str, int]] = field(default_factory=dict)  # patient / case -> images per class
    exact_duplicate_groups: list[list[str]] = field(default_factory=list)
    duplicate_groups: list[list[str]] = field(default_factory=list)  # exact and near, merged
    conflicts: list[dict] = field(default_factory=list)  # {"keys": [...], "classes": [...]}
    problems: list[Problem] = field(default_factory=list)
    decoded: list = field(default_factory=list, repr=False)  # per-image hashes, for cross-dataset duplicates

    @property
    def images(self) -> int:
        return sum(self.counts.values()) + self.unlabelled

    def group_summary(self) -> dict:
        """Per-group (patient) view: how many groups, and the spread of images per group."""
        sizes = sorted(sum(c.values()) for c in self.groups.values())
        if not sizes:
            return {"groups": 0}
        with_lesion = sum(1 for c in self.groups.values() if any(n for label, n in c.items() if label != "normal"))
        return {
            "groups": len(sizes),
            "images_min": sizes[0],
            "images_median": sizes[len(sizes) // 2],
            "images_max": sizes[-1],
            "groups_with_lesion": with_lesion,
        }

    def problem_counts(self) -> dict[str, int]:
        return dict(sorted(Counter(p.kind for p in self.problems).items()))

    def to_dict(self) -> dict:
        return {
            "root": str(self.root),
            "format": self.format,
            "images": self.images,
            "counts": dict(self.counts),
            "unlabelled": self.unlabelled,
            "group_summary": self.group_summary(),
            "groups": self.groups,
            "masks": self.masks,
            "near_threshold": self.near_threshold,
            "duplicate_groups": self.duplicate_groups,
            "exact_duplicate_groups": self.exact_duplicate_groups,
            "conflicts": self.conflicts,
            "problem_counts": self.problem_counts(),
            "problems": [p.to_dict() for p in self.problems],
        }


@dataclass
class _Decoded:
    """What the duplicate search needs from one readable image."""

    key: str
    label: str
    digest: str  # sha256 of the grayscale pixels and shape: equal digest = identical image
    phash: int  # 64-bit perceptual hash as an integer


def audit_dataset(source, near_threshold: int = DEFAULT_NEAR_THRESHOLD, *, progress: bool = False) -> AuditReport:
    """Scan, decode and cross-check every image and mask of a dataset in any layout.

    ``source`` is a path, ``NAME=PATH`` or a :class:`~busai.data.sources.DataSpec`. ``counts`` are
    the records a split can use (images paired as their layout requires); the others are listed in
    ``problems``. ``progress=True`` shows a progress bar on stderr.
    """
    from busai.data.sources import scan_source

    if not 0 <= near_threshold <= 64:
        raise ConfigError(f"--near-threshold {near_threshold}: must be between 0 and 64 (phash has 64 bits); the default is {DEFAULT_NEAR_THRESHOLD}")
    scan, fmt = scan_source(source)
    names = count_names(r.label for r in scan.records)
    groups: dict[str, dict[str, int]] = {}
    for r in scan.records:
        if r.group is not None:
            per_class = groups.setdefault(r.group, {c: 0 for c in names})
            if r.label is not None:
                per_class[r.label] += 1
    report = AuditReport(
        root=scan.root,
        counts={name: sum(r.label == name for r in scan.records) for name in names},
        masks=sum(len(r.masks) for r in scan.records),
        near_threshold=near_threshold,
        format=fmt,
        unlabelled=sum(r.label is None for r in scan.records),
        groups=dict(sorted(groups.items(), key=lambda kv: natural_key(kv[0]))),
        problems=list(scan.problems),
    )

    def check(record: Record) -> tuple[_Decoded | None, list[Problem]]:
        problems: list[Problem] = []
        return _check_record(record, problems, masks_expected=fmt != "class-folders"), problems

    decoded: list[_Decoded] = []
    for item, problems in _iterate(in_threads(check, scan.records), len(scan.records), progress):
        report.problems += problems
        if item is not None:
            decoded.append(item)
    report.decoded = decoded
    report.exact_duplicate_groups = _sorted_groups(_exact_groups(decoded))
    report.duplicate_groups = _sorted_groups(_linked_groups(decoded, near_threshold))
    labels = {d.key: d.label for d in decoded}
    report.conflicts = [
        {"keys": group, "classes": sorted({labels[k] for k in group}, key=label_key)}
        for group in report.duplicate_groups
        if len({labels[k] for k in group}) > 1
    ]
    return report


def in_threads(fn: Callable[[T], U], items: list[T]) -> Iterator[U]:
    """``map(fn, items)``, in order, on one thread per core (:func:`busai.device.cores`).

    For the per-image work of an audit or a run's image hashes: Pillow's decoding and resizing,
    hashlib and numpy release the GIL, so threads share the cores without a process start-up or
    pickling records. A handful of items is mapped on this thread.
    """
    from concurrent.futures import ThreadPoolExecutor

    from busai.device import cores

    workers = min(cores(), len(items) // 16)
    if workers < 2:
        yield from map(fn, items)
        return
    with ThreadPoolExecutor(workers, thread_name_prefix="busai-decode") as pool:
        yield from pool.map(fn, items)


def _iterate(results: Iterator[U], total: int, progress: bool) -> Iterator[U]:
    if not progress:
        yield from results
        return
    from rich.console import Console
    from rich.progress import track

    console = Console(stderr=True)
    yield from track(results, total=total, description="Auditing images", console=console, transient=True, disable=not console.is_terminal)


def _check_record(record: Record, problems: list[Problem], *, masks_expected: bool = True) -> _Decoded | None:
    """Decode one image and its masks, append what is wrong to ``problems``; None if unreadable."""
    if printable(record.key) != record.key:
        # A split file is UTF-8 JSON and cannot name it; renaming is the fix (often a Latin-1 name from an old zip).
        problems.append(Problem(record.key, "name_not_utf8", f"{printable(record.key)}: the file name is not valid UTF-8; rename the file (and its masks)"))
    try:
        gray, orientation = decode_image(record.image, mode="L", frame=record.frame)
        _note_orientation(record, record.image, orientation, problems)
    except DataError as exc:
        problems.append(Problem(record.key, "unreadable_image", printable(str(exc))))
        gray = None
    if record.masks:
        _check_masks(record, None if gray is None else gray.shape, problems)
    elif masks_expected and record.label not in (None, "normal"):  # only normal means lesion-free
        problems.append(
            Problem(
                record.key, "missing_mask", f"{record.key}: {record.label} image has no mask; add one (segmentation needs it) or use it for classification only"
            )
        )
    if gray is None:
        return None
    return _Decoded(record.key, record.label, *content_hash(gray))


def content_hash(gray: np.ndarray) -> tuple[str, int]:
    """An image's identity by content, whatever its file name or format: the sha256 of its grayscale
    pixels and shape (equal = identical image) and its 64-bit phash (near = the same scan re-saved,
    re-scaled or re-cropped; see ``DEFAULT_NEAR_THRESHOLD``)."""
    import imagehash  # imported here, not at the top: `busai data --help` builds its parser from this module's constants

    digest = hashlib.sha256(f"{gray.shape}".encode() + gray.tobytes()).hexdigest()
    return digest, int(str(imagehash.phash(Image.fromarray(gray))), 16)


_ORIENTATIONS = {2: "mirrored", 3: "turned 180 degrees", 4: "flipped", 5: "transposed", 6: "turned 90 degrees", 7: "transversed", 8: "turned 270 degrees"}


def _note_orientation(record: Record, path: Path, orientation: int | None, problems: list[Problem]) -> None:
    """An ``exif_orientation`` note for an image or mask file whose EXIF tag turns it: busai reads
    it upright (:func:`~busai.data.discover.pil_to_array`), so its masks must be drawn on it as
    viewers show it. A note only: the file is usable."""
    if orientation is None:
        return
    name = record.key if path == record.image else _mask_key(record, path)
    problems.append(
        Problem(
            name,
            "exif_orientation",
            f"{printable(name)}: its EXIF Orientation tag ({orientation}, {_ORIENTATIONS[orientation]}) is applied, as viewers show it; "
            "check that its masks are drawn on the image as shown",
        )
    )


def _check_masks(record: Record, image_shape: tuple[int, int] | None, problems: list[Problem]) -> None:
    foreground = False  # same rule as read_mask: a pixel is lesion when its value is > 127
    all_read = True
    for path in record.masks:
        rel = _mask_key(record, path)
        try:
            mask, orientation = decode_image(path, brightest=True)
        except DataError as exc:
            problems.append(Problem(rel, "unreadable_mask", str(exc)))
            all_read = False
            continue
        _note_orientation(record, path, orientation, problems)
        if image_shape is not None and mask.shape != image_shape:
            problems.append(
                Problem(
                    rel,
                    "mask_size_mismatch",
                    f"{rel}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is {image_shape[1]}x{image_shape[0]}; "
                    "re-export the mask at the image's size",
                )
            )
        values = np.flatnonzero(np.bincount(mask.ravel(), minlength=256))  # np.unique, without sorting every pixel
        if len(values) > 2 or (len(values) == 2 and values[0] != 0):
            shown = ", ".join(str(v) for v in values[:6]) + (", ..." if len(values) > 6 else "")
            problems.append(Problem(rel, "mask_not_binary", f"{rel}: mask is not binary ({len(values)} values: {shown}); re-save it with only 0 and 255"))
        elif len(values) == 2 and 1 < values[1] <= 127:
            problems.append(
                Problem(rel, "mask_faint", f"{rel}: mask foreground value is {values[1]} (2..127), so it reads as empty; re-save it with 0 and 255")
            )
        foreground |= bool(mask_foreground(mask).any())
    if not all_read or record.label is None:
        return
    if record.label == "normal" and foreground:
        problems.append(
            Problem(record.key, "mask_on_normal", f"{record.key}: normal image has a non-empty mask; clear the mask or move the image to benign/ or malignant/")
        )
    elif record.label != "normal" and not foreground:
        problems.append(
            Problem(record.key, "empty_mask", f"{record.key}: {record.label} image has an empty mask; draw the lesion or move the image to normal/")
        )


def duplicate_groups_across(reports: list[AuditReport]) -> list[list[str]]:
    """Duplicate groups over several datasets' audits at once, so a scan published in two datasets
    is found too (each report's own threshold must agree; keys carry their dataset's name)."""
    thresholds = {r.near_threshold for r in reports}
    if len(thresholds) > 1:
        raise ConfigError("audits made with different --near-threshold values cannot be combined")
    decoded = [d for r in reports for d in r.decoded]
    return _sorted_groups(_linked_groups(decoded, thresholds.pop())) if reports else []


UNUSABLE = {"unreadable_image", "unreadable_mask", "mask_size_mismatch", "bad_pixel_spacing", "name_not_utf8"}
"""Problem kinds that make an image unusable for training or scoring: a mask is never resized onto
a scan, a stated pixel size must be plausible (as ``predict`` requires), and a split file must be
able to name the image."""


def _mask_key(record: Record, path: Path) -> str:
    """How a problem names one of a record's mask files: its path in the record's key style."""
    return (f"{record.dataset}:" if record.dataset else "") + Path(os.path.relpath(path, record.root)).as_posix()


def unusable_images(problems: list[Problem], records: list[Record]) -> dict[str, str]:
    """The images ``problems`` make unusable (see ``UNUSABLE``), by image key, each with the first
    problem's message; a problem about a mask file counts against that mask's image."""
    image_of = {_mask_key(r, m): r.key for r in records for m in r.masks}
    found: dict[str, str] = {}
    for problem in problems:
        if problem.kind in UNUSABLE:
            found.setdefault(image_of.get(problem.path, problem.path), problem.message)
    return found


def _exact_groups(decoded: list[_Decoded]) -> list[list[str]]:
    by_digest: dict[str, list[str]] = {}
    for d in decoded:
        by_digest.setdefault(d.digest, []).append(d.key)
    return [keys for keys in by_digest.values() if len(keys) > 1]


def near_duplicate_pairs(hashes: np.ndarray, threshold: int, chunk: int = 1024) -> np.ndarray:
    """Index pairs (i < j) of 64-bit hashes within ``threshold`` differing bits, shape (P, 2).

    XOR + popcount on packed uint64 in row chunks: memory stays O(chunk * n) for large folders.
    """
    hashes = np.asarray(hashes, dtype=np.uint64)
    pairs = []
    for start in range(0, len(hashes), chunk):
        block = hashes[start : start + chunk]
        distance = np.bitwise_count(block[:, None] ^ hashes[None, :])
        i, j = np.nonzero(distance <= threshold)
        i = i + start
        keep = i < j
        pairs.append(np.stack([i[keep], j[keep]], axis=1))
    return np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)


def _linked_groups(decoded: list[_Decoded], threshold: int) -> list[list[str]]:
    """Transitive groups of exact and near duplicates (union-find done as graph connected components)."""
    n = len(decoded)
    if n == 0:
        return []
    edges = [near_duplicate_pairs(np.array([d.phash for d in decoded], dtype=np.uint64), threshold)]
    index = {d.key: i for i, d in enumerate(decoded)}
    for keys in _exact_groups(decoded):
        edges.append(np.array([(index[keys[0]], index[k]) for k in keys[1:]]))
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    pairs = np.concatenate(edges).reshape(-1, 2)
    graph = coo_matrix((np.ones(len(pairs)), (pairs[:, 0], pairs[:, 1])), shape=(n, n))
    _, component = connected_components(graph, directed=False)
    groups: dict[int, list[str]] = {}
    for d, c in zip(decoded, component):
        groups.setdefault(int(c), []).append(d.key)
    return [keys for keys in groups.values() if len(keys) > 1]


def _sorted_groups(groups: list[list[str]]) -> list[list[str]]:
    """Members and groups in the dataset's own order: class (normal, benign, malignant), then number."""

    def key(k: str):
        label = k.split("/", 1)[0].lower()
        return (label_key(label), natural_key(k))

    return sorted((sorted(g, key=key) for g in groups), key=lambda g: [key(k) for k in g])
