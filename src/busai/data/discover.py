"""The BUSI-layout reader, and safe image / mask decoding.

A :class:`Record` (defined in :mod:`busai.data.records`, importable from here) is one scan: its image, zero or more masks (their union is the lesion), its
label (or None when unlabelled), the dataset it came from, its group (patient or case, where the
source knows it), its pixel spacing in mm (where known) and, for a DICOM cine, the frame it is.
The other layouts' readers live in :mod:`busai.data.sources`.

Images are plain image files (``IMAGE_SUFFIXES``) or DICOM files (``.dcm``, or any file with the
DICM marker; see :func:`is_image_file`); masks are plain images.

BUSI layout: ``ROOT/<class>/NAME.png`` with ``NAME_mask.png`` and optional ``NAME_mask_1.png``,
``NAME_mask_2.png``... Class folders are matched case-insensitively; any other folder's name is
its images' label too (see :mod:`busai.labels`).

``scan_dataset`` never raises on a bad file: it returns the records it could pair and a list of
:class:`Problem`, so ``audit`` can report everything at once. ``discover_records`` is the strict
entry point used for training: it raises one :class:`DataError` naming the first problem.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

import numpy as np
from PIL import ExifTags, Image, ImageOps, UnidentifiedImageError

from busai import CLASSES
from busai.data.records import TIFF_SUFFIXES, Problem, Record, Scan, check_frame  # noqa: F401  (re-exported: readers import them from here)
from busai.errors import ConfigError, DataError, option
from busai.labels import label_key, label_name
from busai.io.dicom import is_dicom

IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff"}
MASK_RE = re.compile(r"^(?P<stem>.+)_mask(?:_(?P<index>\d+))?$", re.IGNORECASE)
# Files every OS sprinkles into folders; never data, never a problem.
_IGNORED = {"thumbs.db", "desktop.ini"}


class MaskNames:
    """How a layout that pairs masks by file name finds an image's masks.

    Default (``pattern`` None): ``NAME_mask.png``, ``NAME_mask_1.png`` ... for image ``NAME.png``
    (any image suffix). A pattern holds ``{stem}`` (the image's name without its suffix), e.g.
    ``mask_{stem}.png`` or ``{stem}_seg``; with a suffix it must match the whole file name, without
    one any image suffix is taken. Further masks of a scan add ``_1``, ``_2`` ... after the text that
    follows ``{stem}`` (``{stem}_seg_1.png``), as BUSI's ``NAME_mask_1.png`` does.
    """

    def __init__(self, pattern: str | None = None):
        self.pattern = pattern
        self._re: re.Pattern | None = None
        if pattern is None:
            return
        if pattern.count("{stem}") != 1 or re.search(r"\{(?!stem\})", pattern) or "/" in pattern:
            raise ConfigError(f"mask pattern '{pattern}': write a file name holding {{stem}} once (the image's name without suffix), e.g. 'mask_{{stem}}.png'")
        head, tail = pattern.split("{stem}")
        suffix = "." + tail.rsplit(".", 1)[-1].lower() if "." in tail else ""
        if not head and tail.lower() in ("", suffix):
            raise ConfigError(f"mask pattern '{pattern}': would match the images themselves; add the part that marks a mask, e.g. 'mask_{{stem}}.png'")
        self._whole = suffix in IMAGE_SUFFIXES
        marker = tail[: len(tail) - len(suffix)] if self._whole else tail
        # Further masks of a scan add _1, _2 ... after a marker that follows {stem} ('{stem}_seg_1.png'); with
        # nothing after {stem} the number could not be told from the stem's own digits, so none is taken.
        index = "(?:_(?P<index>\\d+))?" if marker else ""
        self._re = re.compile(
            re.escape(head) + "(?P<stem>.+)" + re.escape(marker) + index + (re.escape(tail[len(marker) :]) if self._whole else ""), re.IGNORECASE
        )

    def match(self, path: Path) -> tuple[str, int] | None:
        """(the image stem, the mask's index for ordering) when ``path`` is named as a mask, else None."""
        if self._re is None:
            found = MASK_RE.match(file_stem(path))
            return (found["stem"], int(found["index"] or 0)) if found else None
        found = self._re.fullmatch(path.name if self._whole else file_stem(path))
        return (found["stem"], int(found.groupdict().get("index") or 0)) if found else None

    def example(self, stem: str) -> str:
        """The mask file name expected for image ``stem``."""
        if self.pattern is None:
            return f"{stem}_mask.png"
        name = self.pattern.replace("{stem}", stem)
        return name if self._whole else name + ".png"

    def rule(self) -> str:
        """How masks are matched, for problem messages."""
        if self.pattern is None:
            example = option("mask_pattern", "'mask_{stem}.png'")
            return f"masks are matched by name: NAME_mask.png (or NAME_mask_1.png ...) for image NAME; for other names give a mask pattern, e.g. {example}"
        return f"masks are matched by the mask pattern '{self.pattern}' ({{stem}}: the image's name without suffix)"


def _check_root(root: Path) -> Path:
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(f"{root}: folder not found; pass the folder that holds benign/, malignant/ and normal/")
    if not root.is_dir():
        raise DataError(f"{root}: not a folder; pass the folder that holds benign/, malignant/ and normal/")
    return root.resolve()


def class_folders(root: Path) -> dict[str, Path]:
    """Label -> folder for a root of class folders: each folder's name is its images' label
    (``normal``, ``benign``, ``malignant`` or any other simple name, e.g. BI-RADS ``4a``)."""
    folders: dict[str, Path] = {}
    for child in sorted(root.iterdir()):
        if child.name.startswith(".") or not child.is_dir():
            continue
        label = label_name(child.name, str(child), f"rename the folder or move it out of {root}")
        if label in folders:
            raise DataError(f"{child}: class '{label}' appears twice ({folders[label].name} and {child.name}); merge them")
        folders[label] = child
    if not folders:
        raise DataError(f"{root}: no class folders found; expected {', '.join(CLASSES)} sub-folders (BUSI layout)")
    return folders


def scan_dataset(root: str | Path, mask_names: MaskNames | None = None) -> Scan:
    """Pair every image with its masks (named as ``mask_names`` says, default ``NAME_mask*.png``);
    collect problems instead of raising on bad files."""
    root = _check_root(Path(root))
    names = mask_names or MaskNames()
    scan = Scan(root=root)
    for label, folder in class_folders(root).items():
        images: dict[str, Path] = {}
        masks: dict[str, list[tuple[int, Path]]] = {}
        for path in sorted(folder.rglob("*")):
            if path.is_dir() or path.name.startswith(".") or path.name.lower() in _IGNORED:
                continue
            rel = path.relative_to(root).as_posix()
            if not is_image_file(path):
                scan.problems.append(Problem(rel, "not_an_image", f"{rel}: not an image file; move it out of the dataset folder"))
                continue
            where = path.parent.relative_to(folder)
            match = names.match(path)
            if match:
                masks.setdefault(where.joinpath(match[0]).as_posix(), []).append((match[1], path))
            else:
                images[where.joinpath(file_stem(path)).as_posix()] = path
        for stem, image in images.items():
            found = [p for _, p in sorted(masks.pop(stem, []))]
            if not found:
                rel = image.relative_to(root).as_posix()
                scan.problems.append(
                    Problem(
                        rel,
                        "missing_mask",
                        f"{rel}: no mask found; add {names.example(Path(stem).name)} beside it (all-zero for a normal image); {names.rule()}",
                    )
                )
                continue
            scan.records.append(dicom_record(Record(root=root, image=image, masks=tuple(found), label=label), scan))
        for stem, orphans in masks.items():
            for _, path in sorted(orphans):
                rel = path.relative_to(root).as_posix()
                scan.problems.append(
                    Problem(rel, "mask_without_image", f"{rel}: mask has no image {Path(stem).name}.png; add the image or remove the mask; {names.rule()}")
                )
    scan.records.sort(key=lambda r: (label_key(r.label), natural_key(r.key)))
    return scan


def is_image_file(path: Path) -> bool:
    """A file busai reads as a scan: a plain image by its suffix, or a DICOM file (``.dcm``, or
    the DICM marker that extensionless scanner exports such as ``IM000001`` carry)."""
    return path.suffix.lower() in IMAGE_SUFFIXES or is_dicom(path)


def file_stem(path: Path) -> str:
    """The name an image is matched by (to its masks and table rows): without a known image or
    DICOM suffix, else whole, so an extensionless DICOM file named by its UID (``1.2.840.1``)
    keeps every part of its name."""
    from busai.io.dicom import DICOM_SUFFIXES

    return path.stem if path.suffix.lower() in IMAGE_SUFFIXES | DICOM_SUFFIXES else path.name


def dicom_record(record: Record, scan: Scan, frame: int | None = None, where: str | None = None) -> Record:
    """``record`` with what its DICOM image states (a plain image passes unchanged): the pixel
    spacing when the record has none, and the frame of a cine, its first when ``frame`` is None,
    with a ``first_frame`` note in ``scan.problems``; a multi-page TIFF's pages are frames too.
    See :mod:`busai.data.dicom_records`."""
    from busai.data.dicom_records import with_dicom_fields, with_frame

    suffix = record.image.suffix.lower()
    if suffix in TIFF_SUFFIXES:
        return with_frame(record, scan, image_frames(record.image), frame, where)
    if suffix in IMAGE_SUFFIXES:
        return record
    return with_dicom_fields(record, scan, frame, where)


def natural_key(text: str) -> list:
    """Sort 'benign (2)' before 'benign (10)' so listings read like the dataset's own numbering."""
    return [int(t) if t.isdigit() else t.lower() for t in re.split(r"(\d+)", text)]


def discover_records(root: str | Path) -> list[Record]:
    """Strict discovery for training and evaluation: every image must have a mask."""
    scan = scan_dataset(root)
    pairing = [p for p in scan.problems if p.kind in {"missing_mask", "mask_without_image", "not_an_image"}]
    if pairing:
        more = f" (and {len(pairing) - 1} more; run `busai data audit {scan.root}`)" if len(pairing) > 1 else ""
        raise DataError(pairing[0].message + more)
    if not scan.records:
        raise DataError(f"{scan.root}: no images found in the class folders; add PNG images with their _mask.png files")
    return scan.records


def read_image(path: str | Path, mode: str = "RGB", frame: int | None = None) -> np.ndarray:
    """Decode an image of any mode (L, RGB, RGBA, P, 16-bit I;16 ...) as uint8 ``mode``, turned
    upright by its EXIF Orientation tag (as every viewer shows it; see :func:`pil_to_array`).

    16-bit images are scaled to 8 bits by their own range, which is what a display would show;
    Pillow's plain convert would clip them to white. A file of several frames (a DICOM cine, read
    through :mod:`busai.io.dicom` as ``busai predict`` reads it, or a multi-page TIFF) needs the
    1-based ``frame``; a ``frame`` past the file's last is an error, a single image's only frame is 1.
    """
    return decode_image(path, mode, frame).pixels


class Decoded(NamedTuple):
    pixels: np.ndarray
    orientation: int | None  # the EXIF Orientation tag (2 to 8) that turned the pixels upright, else None


def decode_image(path: str | Path, mode: str = "RGB", frame: int | None = None, *, brightest: bool = False) -> Decoded:
    """:func:`read_image` and the EXIF orientation it applied, from one decode (``busai data audit``
    notes the orientation; asking the file again would decode a PNG twice). ``brightest=True``
    gives one channel, each pixel's brightest (:func:`mask_values`), and ignores ``mode``."""
    path = Path(path)
    if path.suffix.lower() not in IMAGE_SUFFIXES and is_dicom(path):
        pixels = _read_dicom_image(path, "RGB" if brightest else mode, frame)
        return Decoded(_brightest(pixels) if brightest else pixels, None)
    try:
        with Image.open(path) as img:
            pages = page_count(img)
            if frame is None and pages > 1:
                raise DataError(f"{path}: " + multi_frame(f"a multi-page TIFF of {pages} pages"))
            if frame is not None:
                check_frame(path, frame, pages)
                img.seek(frame - 1)
            img.load()
            value = img.getexif().get(ExifTags.Base.Orientation)
            orientation = int(value) if value in range(2, 9) else None
            if brightest:  # a grey file's brightest channel is itself: no RGB copy to reduce
                pixels = pil_to_array(img, "L") if img.mode in _GREY_MODES else _brightest(pil_to_array(img, "RGB"))
            else:
                pixels = pil_to_array(img, mode)
            return Decoded(pixels, orientation)
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; check the path") from None
    except Image.DecompressionBombError as exc:  # Pillow's guard against absurd pixel counts
        raise DataError(f"{path}: not decoded, {str(exc).split(', could')[0]}; replace or remove the file") from None
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as exc:
        raise DataError(f"{path}: cannot decode image ({exc.__class__.__name__}); replace or remove the file") from None


# Modes whose RGB conversion repeats one value in all three channels (palette images are not among them).
_GREY_MODES = {"1", "L", "I;16", "I;16B", "I;16L", "I", "F"}


def _brightest(rgb: np.ndarray) -> np.ndarray:
    # Plane by plane: numpy's reduction over a length-3 last axis is several times slower.
    return np.maximum(np.maximum(rgb[..., 0], rgb[..., 1]), rgb[..., 2])


# Only TIFF's pages are frames of a scan. A JPEG (MPO) or PNG (APNG) with several frames holds a
# preview or an animation, so its first frame is the image, as every viewer shows it.
MULTI_PAGE_FORMATS = {"TIFF"}


def page_count(img: Image.Image) -> int:
    """Frames of an opened plain image: a multi-page TIFF's pages, else 1."""
    return int(getattr(img, "n_frames", 1)) if img.format in MULTI_PAGE_FORMATS else 1


def image_frames(path: str | Path) -> int:
    """Frames of a plain image file, from its header: a multi-page TIFF's pages, else 1 (also for
    a file that cannot be opened: decoding it names the problem)."""
    try:
        with Image.open(path) as img:
            return page_count(img)
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError, Image.DecompressionBombError):
        return 1


def multi_frame(what: str) -> str:
    return f"{what}; say which frame to read (a frame column in the dataset's table, or busai predict --frame N)"


def _read_dicom_image(path: Path, mode: str, frame: int | None) -> np.ndarray:
    from busai.io.dicom import frame_count, read_dataset, read_frames

    ds = read_dataset(path)
    if frame is None and frame_count(ds) > 1:
        raise DataError(f"{path}: " + multi_frame(f"a DICOM cine of {frame_count(ds)} frames"))
    rgb = next(read_frames(path, frame, ds=ds)).image
    return rgb if mode == "RGB" else np.asarray(Image.fromarray(rgb).convert(mode))


def pil_to_array(img: Image.Image, mode: str = "RGB") -> np.ndarray:
    """A decoded PIL image of any mode as uint8 ``mode`` (see :func:`read_image`), upright.

    The EXIF Orientation tag is applied (Pillow's ``exif_transpose``) wherever pixels are read
    (datasets, masks, predict, serve, the Python API): a phone or scanner JPEG tagged "rotate 90"
    is shown upright by every viewer, and a model given it sideways swaps depth and width. A mask
    is turned by its own tag, so it must be drawn on the image as viewers show it; ``busai data
    audit`` lists the images that carried one (``exif_orientation``).
    """
    if img.getexif().get(ExifTags.Base.Orientation, 1) != 1:
        img = ImageOps.exif_transpose(img)
    if img.mode in {"I;16", "I;16B", "I;16L", "I", "F"}:
        arr = np.asarray(img, dtype=np.float64)
        lo, hi = float(arr.min()), float(arr.max())
        arr = (arr - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(arr)
        img = Image.fromarray(arr.round().astype(np.uint8), mode="L")
    elif img.mode in {"RGBA", "LA", "PA"} or (img.mode == "P" and "transparency" in img.info):
        # Composite on black: ultrasound background is black, so transparent areas stay background.
        rgba = img.convert("RGBA")
        img = Image.alpha_composite(Image.new("RGBA", rgba.size, (0, 0, 0, 255)), rgba)
    return np.asarray(img if img.mode == mode else img.convert(mode))  # convert() to its own mode would copy


def mask_values(path: str | Path) -> np.ndarray:
    """A mask file as one uint8 channel: the brightest channel of each pixel, so a colour-coded
    mask (BUS-UCLM: green benign, red malignant on black) reads as lesion wherever it is not black;
    converting to grey instead would dim pure red below the threshold."""
    return decode_image(path, brightest=True).pixels


def mask_foreground(values: np.ndarray) -> np.ndarray:
    """Lesion pixels of a decoded mask: 0/255 masks (BUSI) threshold at 127 so anti-aliased edges
    stay out; masks saved as 0/1 threshold at 0."""
    return values > (0 if values.max() <= 1 else 127)


def read_mask(record: Record, size: tuple[int, int] | None = None) -> np.ndarray:
    """Union of a record's masks as a uint8 {0, 1} array of the image's size (H, W).

    ``size`` (H, W) is the image size the masks must match; a mismatch is an error because
    silently resizing a mask hides an annotation mistake. A record without masks (a normal scan,
    or classification-only data) gives an all-zero mask of ``size``.
    """
    if not record.masks:
        if size is None:
            size = read_image(record.image, mode="L", frame=record.frame).shape
        return np.zeros(tuple(size), dtype=np.uint8)
    union: np.ndarray | None = None
    for path in record.masks:
        mask = mask_foreground(mask_values(path))
        if size is not None and mask.shape != tuple(size):
            raise DataError(f"{path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image is {size[1]}x{size[0]}; re-export the mask at the image's size")
        union = mask if union is None else (union | mask if union.shape == mask.shape else _mismatch(path, union, mask))
    return union.astype(np.uint8)


def _mismatch(path: Path, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    raise DataError(f"{path}: mask is {b.shape[1]}x{b.shape[0]} but the image's other mask is {a.shape[1]}x{a.shape[0]}; re-export it")
