"""Dataset readers: every supported layout becomes a list of :class:`~busai.data.discover.Record`.

Layouts (``FORMATS``), detected from what a path holds (``detect_format``) or forced by name:

- ``busi``: class folders ``benign/ malignant/ normal/`` with ``NAME_mask*.png`` beside each image;
- ``class-folders``: class folders with images only (classification data: no masks);
- ``bus-uclm``: BUS-UCLM as published: ``INFO.csv`` (semicolon-separated, byte-order mark),
  ``images/``, colour-coded masks in ``masks/``; the patient is the file-name prefix;
- ``images-masks``: ``images/`` + ``masks/`` with matching stems, and one labels CSV beside them;
- ``manifest``: a CSV file with ``image,mask,label`` and optional ``group``, ``pixel_spacing_mm``,
  ``dataset``, ``frame`` columns; paths relative to the CSV's folder; several masks joined by ``;``.

Images may be DICOM files in every layout (masks stay plain images): a cine's frame comes from the
table's ``frame`` column (manifest, labels table) or is its first, and the file's pixel spacing
fills in where the table gives none (:mod:`busai.data.dicom_records`).

Images are matched to CSV rows and masks by file stem, so a PNG original and a JPEG copy of the
same dataset read the same way. A reader never raises on a bad *file*: unpaired or unreadable files
are :class:`~busai.data.discover.Problem` entries, as for the BUSI layout. A broken *table* (a
missing column, an unknown label, a duplicate row ...) is one :class:`DataError` naming the file,
the row and the fix, since nothing after it can be trusted.

A dataset on the command line is ``DIR`` or ``NAME=DIR`` (:func:`parse_data_specs`); a named
dataset's keys in split files carry ``NAME:`` so several datasets can share one split file.
"""

from __future__ import annotations

import csv
import math
import logging
import re
from collections import Counter
from dataclasses import dataclass, replace
from pathlib import Path

from busai import CLASSES
from busai.data.discover import IMAGE_SUFFIXES, MASK_RE, Problem, Record, Scan, dicom_record, file_stem, is_image_file, natural_key, scan_dataset
from busai.io.dicom import is_dicom
from busai.errors import ConfigError, DataError

log = logging.getLogger(__name__)

FORMATS = ("busi", "class-folders", "bus-uclm", "images-masks", "manifest")
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SEPARATORS = ";\t|"  # what a CSV saved with the wrong separator holds in its single header cell


@dataclass(frozen=True)
class DataSpec:
    """One dataset as given on the command line: ``name`` ('' for a bare DIR), path, forced format."""

    name: str
    path: Path
    format: str | None = None

    def __str__(self) -> str:
        return f"{self.name}={self.path}" if self.name else str(self.path)


def parse_data_specs(values, formats: list[str] | None = None) -> list[DataSpec]:
    """``--data DIR`` or ``--data NAME=DIR`` (repeatable) and ``--format FMT`` / ``--format NAME=FMT``.

    A bare DIR is allowed only alone: with several datasets each needs a name, since the names
    tell their images apart in split files and results.
    """
    if values is None:
        return []
    values = [values] if isinstance(values, (str, Path)) else list(values)
    specs: list[DataSpec] = []
    for value in values:
        text = str(value)
        name, sep, path = text.partition("=")
        if not sep or "/" in name or not name:
            name, path = "", text
        elif not _NAME_RE.match(name):
            raise ConfigError(f"--data {text}: dataset name '{name}' must be letters, digits, '_', '.' or '-'; e.g. --data busi=PATH")
        specs.append(DataSpec(name, Path(path).expanduser()))
    names = [s.name for s in specs]
    if len(specs) > 1 and "" in names:
        raise ConfigError("several --data given: name each one, e.g. --data busi=DIR --data uclm=DIR")
    repeated = [n for n, k in Counter(names).items() if k > 1]
    if repeated:
        raise ConfigError(f"--data: dataset name '{repeated[0]}' given twice; give each dataset its own name")
    for value in formats or []:
        name, sep, fmt = str(value).rpartition("=")
        if fmt not in FORMATS:
            raise ConfigError(f"--format {value}: unknown layout '{fmt}'; choose one of {', '.join(FORMATS)}")
        if not sep and len(specs) > 1:
            raise ConfigError(f"--format {value}: several datasets given; say which one, e.g. --format {specs[0].name}={fmt}")
        targets = [i for i, s in enumerate(specs) if not sep or s.name == name]
        if not targets:
            raise ConfigError(f"--format {value}: no --data named '{name}'")
        for i in targets:
            specs[i] = DataSpec(specs[i].name, specs[i].path, fmt)
    return specs


def detect_format(path: str | Path) -> str:
    """The layout a path holds, from its files alone (see the module docstring)."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DataError(f"{path}: not found; pass a dataset folder or a CSV manifest")
    if path.is_file():
        if path.suffix.lower() in {".csv", ".tsv", ".txt"}:
            return "manifest"
        raise DataError(f"{path}: not a folder or a .csv manifest; pass the dataset folder (or a CSV listing image,mask,label)")
    names = {child.name.lower(): child for child in path.iterdir()}
    if "info.csv" in names and "images" in names:
        return "bus-uclm"
    if "images" in names and names["images"].is_dir():
        return "images-masks"
    classes = [names[c] for c in CLASSES if c in names and names[c].is_dir()]
    if classes:
        has_masks = any(MASK_RE.match(p.stem) for folder in classes for p in folder.rglob("*") if p.is_file())
        return "busi" if has_masks else "class-folders"
    raise DataError(
        f"{path}: no known dataset layout found; expected class folders (benign/ malignant/ normal/), "
        "images/ + masks/ with a labels CSV, BUS-UCLM's INFO.csv, or a CSV manifest (see docs/datasets.md)"
    )


def scan_source(spec: DataSpec | str | Path) -> tuple[Scan, str]:
    """Read one dataset in its layout: (records and file problems, the layout's name)."""
    if not isinstance(spec, DataSpec):
        spec = parse_data_specs([spec])[0]
    fmt = spec.format or detect_format(spec.path)
    reader = {
        "busi": _read_busi,
        "class-folders": _read_class_folders,
        "bus-uclm": _read_bus_uclm,
        "images-masks": _read_images_masks,
        "manifest": _read_manifest,
    }[fmt]
    scan = reader(spec.path)
    if spec.name:
        scan.records = [_named(r, spec.name) for r in scan.records]
    return scan, fmt


def read_records(specs, *, require_labels: bool = True) -> list[Record]:
    """Strict reading for training and scoring: every dataset's records, or one error for the first
    pairing problem (an image without its mask, a file that is not an image)."""
    if not isinstance(specs, list) or (specs and not isinstance(specs[0], DataSpec)):
        specs = parse_data_specs(specs)
    records: list[Record] = []
    for spec in specs:
        scan, _ = scan_source(spec)
        pairing = [p for p in scan.problems if p.kind in {"missing_mask", "mask_without_image", "not_an_image", "missing_file"}]
        if pairing:
            more = f" (and {len(pairing) - 1} more; run `busai data audit {spec.path}`)" if len(pairing) > 1 else ""
            raise DataError(pairing[0].message + more)
        if not scan.records:
            raise DataError(f"{spec.path}: no images found; see docs/datasets.md for the layouts busai reads")
        _note_first_frames(scan)
        if require_labels:
            unlabelled = [r for r in scan.records if r.label is None]
            if unlabelled:
                raise DataError(f"{unlabelled[0].image}: has no label ({len(unlabelled)} such images); label them to train or score on them")
        records.extend(scan.records)
    return records


_NOTED: set[str] = set()  # first-frame notes already printed: train reads the records once per split, one note is enough


def _note_first_frames(scan: Scan) -> None:
    """Say once per dataset that cines are read at their first frame (see busai.data.dicom_records)."""
    first_frames = [p for p in scan.problems if p.kind == "first_frame"]
    key = f"{scan.root}: {first_frames[0].message if first_frames else ''}"
    if first_frames and key not in _NOTED:
        _NOTED.add(key)
        more = f" (and {len(first_frames) - 1} more cines)" if len(first_frames) > 1 else ""
        log.info("%s%s", first_frames[0].message, more)


# --------------------------------------------------------------------------- the readers
def _named(record: Record, name: str) -> Record:
    return replace(record, dataset=name)


def _read_busi(root: Path) -> Scan:
    return scan_dataset(root)


def _read_class_folders(root: Path) -> Scan:
    """Class folders with images only: classification records without masks."""
    root = _folder(root)
    scan = Scan(root=root)
    for child in sorted(root.iterdir()):
        if child.name.startswith(".") or not child.is_dir():
            continue
        label = child.name.lower()
        if label not in CLASSES:
            raise DataError(f"{child}: unknown class folder '{child.name}'; class folders must be {', '.join(CLASSES)} (case-insensitive)")
        for path in sorted(child.rglob("*")):
            if _skip(path):
                continue
            if not is_image_file(path):
                rel = path.relative_to(root).as_posix()
                scan.problems.append(Problem(rel, "not_an_image", f"{rel}: not an image file; move it out of the dataset folder"))
                continue
            scan.records.append(dicom_record(Record(root, path, (), label), scan))
    scan.records.sort(key=lambda r: (CLASSES.index(r.label), natural_key(r.key)))
    return scan


def _read_bus_uclm(root: Path) -> Scan:
    """BUS-UCLM: INFO.csv rows (Image;Resolution;Label;...) matched to images/ and masks/ by stem."""
    root = _folder(root)
    info = next(p for p in root.iterdir() if p.name.lower() == "info.csv")
    rows = _read_table(info, required=("image", "label"), delimiter=";")
    images = _by_stem(root / "images")
    masks = _by_stem(root / "masks") if (root / "masks").is_dir() else {}
    scan = Scan(root=root)
    for line, row in rows:
        stem = Path(row["image"]).stem
        label = _label(row["label"], info, line)
        image = images.pop(stem, None)
        if image is None:
            scan.problems.append(
                Problem(f"images/{stem}", "missing_file", f"{info} row {line}: no image with stem '{stem}' in {root / 'images'}; add it or remove the row")
            )
            continue
        mask = masks.pop(stem, None)
        if mask is None:
            rel = image.relative_to(root).as_posix()
            scan.problems.append(Problem(rel, "missing_mask", f"{rel}: no mask masks/{stem}.png; add it (all black for a normal scan)"))
            continue
        # The patient is the four-letter file-name prefix (ALWI_000 -> ALWI): its frames stay together.
        scan.records.append(dicom_record(Record(root, image, (mask,), label, group=stem.split("_", 1)[0]), scan))
    _orphans(scan, root, images, "image_without_row", f"has no row in {info.name}; add a row or remove the file")
    _orphans(scan, root, masks, "mask_without_image", "has no image; add the image or remove the mask")
    return scan


def _read_images_masks(root: Path) -> Scan:
    """``images/`` + ``masks/`` (matching stems; ``STEM_mask*`` names also match) and one labels CSV."""
    root = _folder(root)
    tables = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() == ".csv")
    if not tables:
        raise DataError(f"{root}: images/ found but no labels CSV beside it; add labels.csv with columns image,label (optional group, pixel_spacing_mm)")
    table = next((p for p in tables if p.stem.lower() == "labels"), tables[0])
    if len(tables) > 1 and table.stem.lower() != "labels":
        raise DataError(f"{root}: several CSV files ({', '.join(p.name for p in tables)}); name the labels table labels.csv")
    rows = _read_table(table, required=("image", "label"))
    images = _by_stem(root / "images")
    masks_by_stem: dict[str, list[Path]] = {}
    if (root / "masks").is_dir():
        for path in _files(root / "masks"):
            match = MASK_RE.match(path.stem)
            masks_by_stem.setdefault(match["stem"] if match else path.stem, []).append(path)
    scan = Scan(root=root)
    seen: dict[str, int] = {}
    for line, row in rows:
        stem = file_stem(Path(row["image"]))
        if stem in seen:
            raise DataError(f"{table} row {line}: image '{stem}' is listed again (first at row {seen[stem]}); keep one row per image")
        seen[stem] = line
        label = _label(row["label"], table, line)
        image = images.pop(stem, None)
        if image is None:
            scan.problems.append(
                Problem(f"images/{stem}", "missing_file", f"{table} row {line}: no image with stem '{stem}' in {root / 'images'}; add it or remove the row")
            )
            continue
        masks = tuple(sorted(masks_by_stem.pop(stem, []), key=lambda p: natural_key(p.name)))
        record = Record(root, image, masks, label, group=_group(row, table, line), pixel_spacing_mm=_spacing(row, table, line))
        scan.records.append(_with_frame(record, scan, row, table, line))
    _orphans(scan, root, images, "image_without_row", f"has no row in {table.name}; add a row or remove the file")
    _orphans(scan, root, {s: p for s, ps in masks_by_stem.items() for p in ps}, "mask_without_image", "has no image; add the image or remove the mask")
    return scan


def _read_manifest(path: Path) -> Scan:
    """A CSV manifest: one row per image; mask paths joined by ';'; an empty mask cell means no mask."""
    path = path.expanduser().resolve()
    root = path.parent
    rows = _read_table(path, required=("image", "label"), optional=("mask", "group", "pixel_spacing_mm", "dataset", "frame"))
    scan = Scan(root=root)
    seen: dict[str, int] = {}
    for line, row in rows:
        if not row["image"]:
            raise DataError(f"{path} row {line}: the image cell is empty; give the image's path relative to {root}")
        image = (root / row["image"]).resolve()
        if str(image) in seen:
            raise DataError(f"{path} row {line}: {row['image']} is listed again (first at row {seen[str(image)]}); keep one row per image")
        seen[str(image)] = line
        label = _label(row["label"], path, line)
        cell = row.get("mask") or ""
        parts = [p.strip() for p in cell.split(";")] if cell.strip() else []
        if any(not p for p in parts):
            raise DataError(f"{path} row {line}: the mask cell '{cell}' has an empty entry; join mask paths with a single ';' and no trailing ';'")
        masks = tuple((root / p).resolve() for p in parts)
        missing = [p for p in (image, *masks) if not p.is_file()]
        if missing:
            raise DataError(f"{path} row {line}: {missing[0]} not found; fix the path (relative to {root}) or remove the row")
        if not is_image_file(image):
            raise DataError(f"{path} row {line}: {row['image']} is not an image file ({', '.join(sorted(IMAGE_SUFFIXES))} or DICOM); fix the row")
        record = Record(root, image, masks, label, group=_group(row, path, line), pixel_spacing_mm=_spacing(row, path, line))
        scan.records.append(_with_frame(record, scan, row, path, line))
    return scan


# --------------------------------------------------------------------------- table helpers
def _read_table(path: Path, *, required: tuple[str, ...], optional: tuple[str, ...] = (), delimiter: str | None = None) -> list[tuple[int, dict]]:
    """Rows of a CSV (header lower-cased, cells stripped) with their 1-based line numbers."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; save the table as UTF-8 CSV") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.__class__.__name__}); check the path and permissions") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise DataError(f"{path}: empty; the first line must be the header ({','.join(required)})")
    if delimiter is None:
        delimiter = ","
        header = lines[0]
        if "," not in header and any(sep in header for sep in _SEPARATORS):
            found = next(sep for sep in _SEPARATORS if sep in header)
            raise DataError(f"{path}: the header is separated by {found!r}, not commas; save it as comma-separated CSV")
    reader = csv.reader(lines, delimiter=delimiter)
    header = [h.strip().lower() for h in next(reader)]
    absent = [c for c in required if c not in header]
    if absent:
        raise DataError(f"{path}: column '{absent[0]}' is missing (header: {','.join(header)}); the table needs {','.join(required)}")
    repeated = [h for h, n in Counter(header).items() if n > 1 and h]
    if repeated:
        raise DataError(f"{path}: column '{repeated[0]}' appears twice in the header; keep one")
    rows = []
    for line, cells in enumerate(reader, start=2):
        if not any(c.strip() for c in cells):
            continue  # blank line
        if len(cells) != len(header):
            raise DataError(f"{path} row {line}: {len(cells)} cells for {len(header)} columns; quote cells that contain '{delimiter}'")
        rows.append((line, {h: c.strip() for h, c in zip(header, cells)}))
    if not rows:
        raise DataError(f"{path}: no rows after the header; add one row per image")
    return rows


def _label(value: str, path: Path, line: int) -> str | None:
    label = value.strip().lower()
    if not label:
        return None  # unlabelled scan: fine for prediction, refused by training and scoring
    if label not in CLASSES:
        raise DataError(f"{path} row {line}: label '{value}' is not one of {', '.join(CLASSES)}; fix the row")
    return label


def _group(row: dict, path: Path, line: int) -> str | None:
    if "group" not in row:
        return None
    if not row["group"]:
        raise DataError(f"{path} row {line}: the group (patient id) is empty; fill it, or drop the group column if patients are unknown")
    return row["group"]


def _spacing(row: dict, path: Path, line: int) -> float | None:
    cell = row.get("pixel_spacing_mm", "")
    if not cell:
        return None
    try:
        value = float(cell)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or not 0.001 <= value <= 10:
        raise DataError(f"{path} row {line}: pixel_spacing_mm '{cell}' is not a spacing in mm (0.001 to 10); fix or empty the cell")
    return value


def _with_frame(record: Record, scan: Scan, row: dict, path: Path, line: int) -> Record:
    """A table's record with its ``frame`` cell (a DICOM cine's 1-based frame) and what its DICOM
    image states (see :mod:`busai.data.dicom_records`)."""
    cell = row.get("frame", "")
    if not cell:
        return dicom_record(record, scan)
    if not (cell.isdigit() and int(cell) >= 1):
        raise DataError(f"{path} row {line}: frame '{cell}' is not a frame number (1 for the first); fix or empty the cell")
    if record.image.suffix.lower() in IMAGE_SUFFIXES or not is_dicom(record.image):
        raise DataError(f"{path} row {line}: frame {cell} given, but {record.relpath} is not a DICOM file; empty the cell")
    return dicom_record(record, scan, int(cell), where=f"{path} row {line}")


def _folder(root: Path) -> Path:
    root = Path(root).expanduser()
    if not root.is_dir():
        raise DataError(f"{root}: folder not found; pass the dataset folder")
    return root.resolve()


def _skip(path: Path) -> bool:
    return path.is_dir() or path.name.startswith(".") or path.name.lower() in {"thumbs.db", "desktop.ini"}


def _files(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.rglob("*"), key=lambda p: natural_key(p.as_posix())) if not _skip(p)]


def _by_stem(folder: Path) -> dict[str, Path]:
    if not folder.is_dir():
        raise DataError(f"{folder}: folder not found; the layout needs it")
    found: dict[str, Path] = {}
    for path in _files(folder):
        if not is_image_file(path):
            continue
        stem = file_stem(path)
        if stem in found:
            raise DataError(f"{path}: two files share the stem '{stem}' ({found[stem].name}); keep one")
        found[stem] = path
    return found


def _orphans(scan: Scan, root: Path, left: dict[str, Path], kind: str, what: str) -> None:
    for path in left.values():
        rel = path.relative_to(root).as_posix()
        scan.problems.append(Problem(rel, kind, f"{rel}: {what}"))
