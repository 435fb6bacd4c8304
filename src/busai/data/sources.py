"""Dataset readers: every supported layout becomes a list of :class:`~busai.data.discover.Record`.

Layouts live in one registry, ``LAYOUTS`` (names in ``FORMATS``): each reader is registered with
:func:`layout`, which also gives the test that recognises it; ``detect_format`` tries them in
registration order, most specific first. Adding a layout is one decorated function here (see
docs/contributing.md). Layouts, detected from what a path holds or forced by name:

- ``busi``: class folders ``benign/ malignant/ normal/`` with ``NAME_mask*.png`` beside each image;
- ``class-folders``: class folders with images only (classification data: no masks);
  in both, a folder's name is its images' label, so ``--format`` reads folders named by other
  labels (BI-RADS ``2/ 3/ 4a/``), which detection does not take for class folders;
- ``bus-uclm``: BUS-UCLM as published: ``INFO.csv`` (semicolon-separated, byte-order mark),
  ``images/``, colour-coded masks in ``masks/``; the patient is the file-name prefix;
- ``images-masks``: ``images/`` + ``masks/`` with matching stems, and one labels CSV beside them;
- ``manifest``: a CSV file with ``image,mask,label`` and optional ``group``, ``pixel_spacing_mm``,
  ``dataset``, ``frame`` columns; paths relative to the CSV's folder; several masks joined by ``;``.
  A folder holding ``manifest.csv``, or a single CSV file and no other layout, is read the same way.

Reading options travel with each dataset in its :class:`DataSpec`: ``columns`` maps busai's column
names to a table's own (``image=ID,label=Pathology``) for the layouts that read a table, and
``mask_pattern`` (``mask_{stem}.png``) says how mask files are named for the layouts that pair
masks by name (default: ``NAME_mask.png``, ``NAME_mask_1.png`` ... for image ``NAME``).

Images may be DICOM files in every layout (masks stay plain images): a cine's frame comes from the
table's ``frame`` column (manifest, labels table) or is its first, and the file's pixel spacing
fills in where the table gives none (:mod:`busai.data.dicom_records`).

Images are matched to CSV rows and masks by file stem, so a PNG original and a JPEG copy of the
same dataset read the same way. A reader never raises on a bad *file*: unpaired or unreadable files
are :class:`~busai.data.discover.Problem` entries, as for the BUSI layout. A broken *table* (a
missing column, a label that is not a simple name, a duplicate row ...) is one :class:`DataError` naming the file,
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
from typing import Callable

from busai import CLASSES
from busai.data.discover import (
    IMAGE_SUFFIXES,
    MaskNames,
    TIFF_SUFFIXES,
    Problem,
    Record,
    Scan,
    class_folders,
    dicom_record,
    file_stem,
    is_image_file,
    natural_key,
    scan_dataset,
)
from busai.io.dicom import is_dicom
from busai.errors import ConfigError, DataError, option
from busai.labels import label_key, label_name

log = logging.getLogger(__name__)

# The columns busai reads from a table; --columns maps them to a table's own names.
COLUMNS = ("image", "mask", "label", "group", "pixel_spacing_mm", "frame", "dataset")
_TABLE_SUFFIXES = {".csv", ".tsv", ".txt"}
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
_SEPARATORS = ",;\t|"  # what a CSV saved with the wrong separator holds in its single header cell


@dataclass(frozen=True)
class DataSpec:
    """One dataset and how to read it: ``name`` ('' for a bare DIR), path, forced layout (None:
    detected), ``columns`` ((busai column, table column) pairs) and ``mask_pattern`` (None: the
    ``NAME_mask*.png`` convention)."""

    name: str
    path: Path
    format: str | None = None
    columns: tuple[tuple[str, str], ...] = ()
    mask_pattern: str | None = None

    def __str__(self) -> str:
        return f"{self.name}={self.path}" if self.name else str(self.path)

    def to_config(self) -> str | dict:
        """What a run's config.json stores: ``[NAME=]PATH``, or a mapping when reading options are set."""
        if self.format is None and not self.columns and self.mask_pattern is None:
            return str(self)
        out: dict = {"name": self.name, "path": str(self.path), "format": self.format}
        if self.columns:
            out["columns"] = dict(self.columns)
        if self.mask_pattern is not None:
            out["mask_pattern"] = self.mask_pattern
        return out

    @property
    def masks(self) -> MaskNames:
        return MaskNames(self.mask_pattern)


def parse_data_specs(values, formats: list[str] | None = None, columns: list[str] | None = None, mask_patterns: list[str] | None = None) -> list[DataSpec]:
    """``--data DIR`` or ``--data NAME=DIR`` (repeatable), with the per-dataset reading options
    ``--format [NAME=]FMT``, ``--columns [NAME=]image=COL,label=COL`` (or ``[NAME=]FILE.yaml``) and
    ``--mask-pattern [NAME=]PATTERN``. Entries may also be :class:`DataSpec` objects or the
    mappings :meth:`DataSpec.to_config` writes (a run's config.json).

    A bare DIR is allowed only alone: with several datasets each needs a name, since the names
    tell their images apart in split files and results.
    """
    if values is None:
        return []
    values = [values] if isinstance(values, (str, Path, dict, DataSpec)) else list(values)
    specs: list[DataSpec] = []
    for value in values:
        if isinstance(value, DataSpec):
            specs.append(value)
            continue
        if isinstance(value, dict):
            specs.append(_spec_from_config(value))
            continue
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
    for flag, given, split, field_name in (
        ("--format", formats, _split_format, "format"),
        ("--columns", columns, _split_columns, "columns"),
        ("--mask-pattern", mask_patterns, _split_mask_pattern, "mask_pattern"),
    ):
        for value in given or []:
            name, setting = split(str(value))
            if name is None and len(specs) > 1:
                raise ConfigError(f"{flag} {value}: several datasets given; say which one, e.g. {flag} {specs[0].name}={value}")
            targets = [i for i, s in enumerate(specs) if name is None or s.name == name]
            if not targets:
                raise ConfigError(f"{flag} {value}: no --data named '{name}'")
            for i in targets:
                specs[i] = replace(specs[i], **{field_name: setting})
    return specs


def _split_format(value: str) -> tuple[str | None, str]:
    name, sep, fmt = value.rpartition("=")
    if fmt not in FORMATS:
        raise ConfigError(f"--format {value}: unknown layout '{fmt}'; choose one of {', '.join(FORMATS)}")
    return (name if sep else None), fmt


def _split_mask_pattern(value: str) -> tuple[str | None, str]:
    name, sep, pattern = value.partition("=")
    if not sep or "{" in name:
        name, pattern = None, value
    MaskNames(pattern)  # refuses a pattern without {stem} now, not at the first file
    return name, pattern


def _split_columns(value: str) -> tuple[str | None, tuple[tuple[str, str], ...]]:
    """``[NAME=]image=ID,label=Pathology`` or ``[NAME=]FILE.yaml`` (a mapping of the same pairs)."""
    name, text = None, value
    first = value.split(",", 1)[0]
    if first.count("=") == 2 or (first.count("=") == 1 and first.lower().endswith((".yaml", ".yml", ".json")) and "," not in value):
        name, _, text = value.partition("=")
    if text.lower().endswith((".yaml", ".yml", ".json")):
        pairs = list(_columns_file(Path(text).expanduser()).items())
    else:
        pairs = []
        for part in text.split(","):
            ours, sep, theirs = part.partition("=")
            if not sep or not ours.strip() or not theirs.strip():
                raise ConfigError(f"--columns {value}: write busai's column = the table's column, comma-separated, e.g. --columns image=ID,label=Pathology")
            pairs.append((ours.strip(), theirs.strip()))
    return name, _checked_columns(pairs, f"--columns {value}")


def _columns_file(path: Path) -> dict:
    import yaml

    try:
        values = yaml.safe_load(path.read_text(encoding="utf-8"))  # YAML reads JSON too
    except FileNotFoundError:
        raise ConfigError(f"--columns {path}: file not found; pass image=COL,label=COL or a YAML file of such pairs") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"--columns {path}: cannot read it ({exc.__class__.__name__}); write one 'image: COLUMN' line per column") from None
    if not isinstance(values, dict) or not all(isinstance(v, (str, int)) for v in values.values()):
        raise ConfigError(f"{path}: not a mapping of busai's columns to the table's; write one 'image: COLUMN' line per column")
    return {str(k): str(v) for k, v in values.items()}


def _checked_columns(pairs, where: str) -> tuple[tuple[str, str], ...]:
    unknown = [ours for ours, _ in pairs if ours.lower() not in COLUMNS]
    if unknown:
        raise ConfigError(f"{where}: '{unknown[0]}' is not a column busai reads; map one of {', '.join(COLUMNS)} to the table's column")
    ours = [o.lower() for o, _ in pairs]
    if len(set(ours)) < len(ours):
        raise ConfigError(f"{where}: a column is mapped twice; map each of busai's columns once")
    return tuple((o.lower(), t) for o, t in pairs)


def _spec_from_config(value: dict) -> DataSpec:
    """A dataset as a run's config.json stores it (:meth:`DataSpec.to_config`)."""
    fmt = value.get("format")
    if fmt is not None and fmt not in FORMATS:
        raise ConfigError(f"data entry {value}: unknown layout '{fmt}'; choose one of {', '.join(FORMATS)}")
    pattern = value.get("mask_pattern")
    if pattern is not None:
        MaskNames(pattern)
    columns = _checked_columns(list((value.get("columns") or {}).items()), f"data entry {value}")
    return DataSpec(str(value.get("name") or ""), Path(value["path"]).expanduser(), fmt, columns, pattern)


@dataclass(frozen=True)
class Layout:
    """A registered dataset layout: its reader, the test that recognises it and what it supports."""

    name: str
    read: Callable[[DataSpec], Scan]  # records and file problems of the dataset a spec names
    detect: Callable[[Path, DataSpec], bool]  # does this path (folder or file) hold the layout?
    tables: bool = False  # reads a CSV table, so --columns applies
    mask_names: bool = False  # pairs masks with images by file name, so --mask-pattern applies


LAYOUTS: dict[str, Layout] = {}


def layout(name: str, *, detect: Callable[[Path, DataSpec], bool], tables: bool = False, mask_names: bool = False):
    """Register the decorated ``reader(spec) -> Scan`` as layout ``name``; ``detect`` tells it from
    the others (layouts are tried in registration order, so register the most specific first)."""

    def register(read: Callable[[DataSpec], Scan]) -> Callable[[DataSpec], Scan]:
        if name in LAYOUTS:
            raise ValueError(f"layout '{name}' is registered twice")
        LAYOUTS[name] = Layout(name, read, detect, tables, mask_names)
        return read

    return register


def detect_format(path: str | Path, spec: DataSpec | None = None) -> str:
    """The layout a path holds, from its files alone (see the module docstring); ``spec`` gives the
    reading options (a mask pattern changes what counts as a mask file)."""
    path = Path(path).expanduser()
    spec = spec or DataSpec("", path)
    if not path.exists():
        raise DataError(f"{path}: not found; pass a dataset folder or a CSV manifest")
    if path.is_file() and path.suffix.lower() not in _TABLE_SUFFIXES:
        raise DataError(f"{path}: not a folder or a .csv manifest; pass the dataset folder (or a CSV listing image,mask,label)")
    for name, entry in LAYOUTS.items():
        if entry.detect(path, spec):
            return name
    raise DataError(
        f"{path}: no known dataset layout found; expected class folders (benign/ malignant/ normal/), "
        "images/ + masks/ with a labels CSV, BUS-UCLM's INFO.csv, or a CSV manifest (see docs/datasets.md); "
        f"for folders named by other labels (e.g. BI-RADS 2/ 3/ 4a/) pass {option('format', 'class-folders')} (or busi, with masks beside the images)"
    )


def scan_source(spec: DataSpec | str | Path) -> tuple[Scan, str]:
    """Read one dataset in its layout: (records and file problems, the layout's name)."""
    if not isinstance(spec, DataSpec):
        spec = parse_data_specs([spec])[0]
    fmt = spec.format or detect_format(spec.path, spec)
    entry = LAYOUTS[fmt]
    if spec.columns and not entry.tables:
        raise ConfigError(f"{spec.path}: column names given, but the {fmt} layout reads no table; drop the column mapping ({option('columns', 'MAP')})")
    if spec.mask_pattern is not None and not entry.mask_names:
        raise ConfigError(f"{spec.path}: a mask pattern given, but the {fmt} layout does not pair masks by file name; drop {option('mask_pattern', 'PATTERN')}")
    scan = entry.read(spec)
    if spec.name:
        # Problems name files as records do (``NAME:path``), so a problem finds its record's key.
        scan.records = [_named(r, spec.name) for r in scan.records]
        scan.problems = [replace(p, path=f"{spec.name}:{p.path}") for p in scan.problems]
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


def _child(path: Path, name: str) -> Path | None:
    """``path``'s entry called ``name``, matched case-insensitively (None for a file or no match)."""
    if not path.is_dir():
        return None
    return next((c for c in path.iterdir() if c.name.lower() == name), None)


def _class_dirs(path: Path) -> list[Path]:
    # Detection knows class folders by the standard names only: a folder of other sub-folders (a
    # site's scans by day, DICOM studies by patient) must not be taken for labels. Folders named by
    # other labels are read with --format class-folders or busi (the readers take any name).
    return [c for c in (_child(path, name) for name in CLASSES) if c is not None and c.is_dir()]


def _manifest_in(path: Path) -> Path | None:
    """The manifest a path names: the file itself, or in a folder ``manifest.csv`` or its only CSV."""
    if path.is_file():
        return path if path.suffix.lower() in _TABLE_SUFFIXES else None
    if not path.is_dir():
        return None
    tables = sorted(c for c in path.iterdir() if c.is_file() and c.suffix.lower() == ".csv")
    named = [c for c in tables if c.name.lower() == "manifest.csv"]
    return named[0] if named else (tables[0] if len(tables) == 1 else None)


def _is_bus_uclm(path: Path, spec: DataSpec) -> bool:
    return _child(path, "info.csv") is not None and _child(path, "images") is not None


def _is_images_masks(path: Path, spec: DataSpec) -> bool:
    images = _child(path, "images")
    return images is not None and images.is_dir()


def _is_busi(path: Path, spec: DataSpec) -> bool:
    names = spec.masks
    return any(names.match(p) for folder in _class_dirs(path) for p in folder.rglob("*") if p.is_file())


def _is_class_folders(path: Path, spec: DataSpec) -> bool:
    return bool(_class_dirs(path))


def _is_manifest(path: Path, spec: DataSpec) -> bool:
    return _manifest_in(path) is not None


# Registration order is detection order: the most specific layouts first.
@layout("bus-uclm", detect=_is_bus_uclm, tables=True)
def _read_bus_uclm_spec(spec: DataSpec) -> Scan:
    return _read_bus_uclm(spec.path, spec.columns)


@layout("images-masks", detect=_is_images_masks, tables=True, mask_names=True)
def _read_images_masks_spec(spec: DataSpec) -> Scan:
    return _read_images_masks(spec.path, spec.columns, spec.masks)


@layout("busi", detect=_is_busi, mask_names=True)
def _read_busi(spec: DataSpec) -> Scan:
    return scan_dataset(spec.path, spec.masks)


@layout("class-folders", detect=_is_class_folders)
def _read_class_folders_spec(spec: DataSpec) -> Scan:
    return _read_class_folders(spec.path)


@layout("manifest", detect=_is_manifest, tables=True)
def _read_manifest_spec(spec: DataSpec) -> Scan:
    path = spec.path.expanduser()
    if path.is_dir():
        found = _manifest_in(path)
        if found is None:
            tables = sorted(c.name for c in path.iterdir() if c.is_file() and c.suffix.lower() == ".csv")
            what = f"several CSV files ({', '.join(tables)})" if tables else "no CSV file"
            raise DataError(f"{path}: {what}; name the manifest manifest.csv or pass the CSV file itself")
        path = found
    return _read_manifest(path, spec.columns)


def _read_class_folders(root: Path) -> Scan:
    """Class folders with images only: classification records without masks, labelled by their folder's name."""
    root = _folder(root)
    scan = Scan(root=root)
    for label, child in class_folders(root).items():
        for path in sorted(child.rglob("*")):
            if _skip(path):
                continue
            if not is_image_file(path):
                rel = path.relative_to(root).as_posix()
                scan.problems.append(Problem(rel, "not_an_image", f"{rel}: not an image file; move it out of the dataset folder"))
                continue
            scan.records.append(dicom_record(Record(root, path, (), label), scan))
    scan.records.sort(key=lambda r: (label_key(r.label), natural_key(r.key)))
    return scan


def _read_bus_uclm(root: Path, columns: tuple = ()) -> Scan:
    """BUS-UCLM: INFO.csv rows (Image;Resolution;Label;...) matched to images/ and masks/ by stem."""
    root = _folder(root)
    info = next(p for p in root.iterdir() if p.name.lower() == "info.csv")
    # Published with semicolons; a copy re-saved by a spreadsheet often has commas.
    rows = _read_table(info, required=("image", "label"), delimiters=";,", columns=columns)
    images = _by_stem(root / "images")
    masks = _by_stem(root / "masks") if (root / "masks").is_dir() else {}
    scan = Scan(root=root)
    seen: dict[str, int] = {}
    for line, row in rows:
        stem = Path(row["image"]).stem
        _once(seen, stem, f"image '{stem}'", info, line)
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


def _read_images_masks(root: Path, columns: tuple = (), mask_names: MaskNames | None = None) -> Scan:
    """``images/`` + ``masks/`` (matching stems; ``STEM_mask*`` names, or those of a mask pattern, also match) and one labels CSV."""
    root = _folder(root)
    tables = sorted(p for p in root.iterdir() if p.is_file() and p.suffix.lower() == ".csv")
    if not tables:
        raise DataError(f"{root}: images/ found but no labels CSV beside it; add labels.csv with columns image,label (optional group, pixel_spacing_mm)")
    table = next((p for p in tables if p.stem.lower() == "labels"), tables[0])
    if len(tables) > 1 and table.stem.lower() != "labels":
        raise DataError(f"{root}: several CSV files ({', '.join(p.name for p in tables)}); name the labels table labels.csv")
    rows = _read_table(table, required=("image", "label"), columns=columns)
    images = _by_stem(root / "images")
    masks_by_stem: dict[str, list[Path]] = {}
    names = mask_names or MaskNames()
    if (root / "masks").is_dir():
        for path in _files(root / "masks"):
            match = names.match(path)
            # In masks/ a file named like its image is its mask, unless a pattern says how masks are named.
            stem = match[0] if match else (file_stem(path) if names.pattern is None else f"(not {names.pattern}) {path.name}")
            masks_by_stem.setdefault(stem, []).append(path)
    scan = Scan(root=root)
    seen: dict[str, int] = {}
    for line, row in rows:
        stem = file_stem(Path(row["image"]))
        _once(seen, stem, f"image '{stem}'", table, line)
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
    _orphans(
        scan,
        root,
        {s: p for s, ps in masks_by_stem.items() for p in ps},
        "mask_without_image",
        f"has no image in images/; add the image or remove the mask ({'in masks/ a file named like its image, or ' if names.pattern is None else ''}{names.rule()})",
    )
    return scan


def _read_manifest(path: Path, columns: tuple = ()) -> Scan:
    """A CSV manifest: one row per image; mask paths joined by ';'; an empty mask cell means no mask."""
    path = path.expanduser().resolve()
    root = path.parent
    rows = _read_table(path, required=("image", "label"), optional=("mask", "group", "pixel_spacing_mm", "dataset", "frame"), columns=columns)
    scan = Scan(root=root)
    seen: dict[str, int] = {}
    for line, row in rows:
        if not row["image"]:
            raise DataError(f"{path} row {line}: the image cell is empty; give the image's path relative to {root}")
        image = _inside(root, row["image"], path, line)
        _once(seen, str(image), row["image"], path, line)
        label = _label(row["label"], path, line)
        cell = row.get("mask") or ""
        parts = [p.strip() for p in cell.split(";")] if cell.strip() else []
        if any(not p for p in parts):
            raise DataError(f"{path} row {line}: the mask cell '{cell}' has an empty entry; join mask paths with a single ';' and no trailing ';'")
        masks = tuple(_inside(root, p, path, line) for p in parts)
        missing = [p for p in (image, *masks) if not p.is_file()]
        if missing:
            raise DataError(f"{path} row {line}: {missing[0]} not found; fix the path (relative to {root}) or remove the row")
        if not is_image_file(image):
            raise DataError(f"{path} row {line}: {row['image']} is not an image file ({', '.join(sorted(IMAGE_SUFFIXES))} or DICOM); fix the row")
        record = Record(root, image, masks, label, group=_group(row, path, line), pixel_spacing_mm=_spacing(row, path, line))
        scan.records.append(_with_frame(record, scan, row, path, line))
    return scan


# --------------------------------------------------------------------------- table helpers
def _once(seen: dict[str, int], key: str, shown: str, table: Path, line: int) -> None:
    """Refuse a second row for the same image (whatever its label): one row per image, in every table."""
    if key in seen:
        raise DataError(f"{table} row {line}: {shown} is listed again (first at row {seen[key]}); keep one row per image")
    seen[key] = line


def _inside(root: Path, cell: str, table: Path, line: int) -> Path:
    """A manifest cell's file, resolved (symbolic links followed), which must lie inside the manifest's
    folder: a record's key is its path relative to that folder, so a file outside would get a key
    (``../x.png``) that changes with where the dataset is copied, and could be another dataset's image."""
    path = (root / cell).resolve()
    if not path.is_relative_to(root):
        raise DataError(
            f"{table} row {line}: {cell} lies outside {root} (the manifest's folder; symbolic links are followed); "
            "move the file into that folder, or put the manifest in a folder that holds every file"
        )
    return path


def _read_table(path: Path, *, required: tuple[str, ...], optional: tuple[str, ...] = (), delimiters: str = ",", columns: tuple = ()) -> list[tuple[int, dict]]:
    """Rows of a CSV (header lower-cased, cells stripped) with their 1-based line numbers;
    ``columns`` ((busai's name, the table's name) pairs) renames the table's columns first.

    The separator is the first of ``delimiters`` the header holds (a table re-saved by a
    spreadsheet may have another than its publisher's); a header split by any other is refused."""
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError:
        raise DataError(f"{path}: not UTF-8 text; save the table as UTF-8 CSV") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.__class__.__name__}); check the path and permissions") from None
    lines = text.splitlines()
    if not lines or not lines[0].strip():
        raise DataError(f"{path}: empty; the first line must be the header ({','.join(required)})")
    header = lines[0]
    delimiter = next((sep for sep in delimiters if sep in header), delimiters[0])
    if delimiter not in header and any(sep in header for sep in _SEPARATORS):
        found = next(sep for sep in _SEPARATORS if sep in header)
        names = {",": "commas", ";": "semicolons"}
        expected = " or ".join(names[sep] for sep in delimiters)
        raise DataError(f"{path}: the header is separated by {found!r}, not {expected}; save it separated by {names[delimiters[0]]}")
    reader = csv.reader(lines, delimiter=delimiter)
    header = [h.strip().lower() for h in next(reader)]
    shown = ",".join(header)
    for ours, theirs in columns:
        if theirs.lower() == ours:
            continue
        if theirs.lower() not in header:
            raise DataError(f"{path}: column '{theirs}' (mapped to {ours}) is missing (header: {shown}); fix the column mapping")
        header = ["" if h == ours else h for h in header]  # the mapped column replaces a column of busai's name
        header[header.index(theirs.lower())] = ours
    absent = [c for c in required if c not in header]
    if absent:
        how = f" or map yours, e.g. {option('columns', 'image=ID,label=Pathology')}" if not columns else ""
        raise DataError(f"{path}: column '{absent[0]}' is missing (header: {shown}); the table needs {','.join(required)}{how}")
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
    """Any simple name (normal, benign, malignant, BI-RADS 4a ...; see busai.labels); None for an
    empty cell: an unlabelled scan, fine for prediction, refused by training and scoring."""
    return label_name(value, f"{path} row {line}")


def _group(row: dict, path: Path, line: int) -> str | None:
    if "group" not in row:
        return None
    if not row["group"]:
        raise DataError(f"{path} row {line}: the group (patient id) is empty; fill it, or drop the group column if patients are unknown")
    return row["group"]


def _spacing(row: dict, path: Path, line: int) -> float | None:
    from busai.measure import stated_spacing

    cell = row.get("pixel_spacing_mm", "")
    if not cell:
        return None
    try:
        value = float(cell)
    except ValueError:
        value = math.nan
    return stated_spacing(value, f"{path} row {line}: pixel_spacing_mm '{cell}'", "fix or empty the cell")


def _with_frame(record: Record, scan: Scan, row: dict, path: Path, line: int) -> Record:
    """A table's record with its ``frame`` cell (a DICOM cine's 1-based frame) and what its DICOM
    image states (see :mod:`busai.data.dicom_records`)."""
    cell = row.get("frame", "")
    if not cell:
        return dicom_record(record, scan)
    if not (cell.isdigit() and int(cell) >= 1):
        raise DataError(f"{path} row {line}: frame '{cell}' is not a frame number (1 for the first); fix or empty the cell")
    suffix = record.image.suffix.lower()
    if suffix not in TIFF_SUFFIXES and (suffix in IMAGE_SUFFIXES or not is_dicom(record.image)):
        raise DataError(f"{path} row {line}: frame {cell} given, but {record.relpath} is not a DICOM file or a TIFF; empty the cell")
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


FORMATS = tuple(LAYOUTS)  # the registered layouts' names, in detection order
