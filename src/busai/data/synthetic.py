"""Synthetic B-mode breast-ultrasound phantoms in the BUSI layout, for tests and demos.

Each image is tissue echogenicity (skin line, fat, textured glandular layer, striated muscle)
times Rayleigh-distributed multiplicative speckle, with depth attenuation, written as an 8-bit
grayscale PNG with a 1-bit mask:

- normal: tissue only, all-zero mask;
- benign: a smooth, oval, wider-than-tall hypo-echoic lesion with mild posterior enhancement;
- malignant: an irregular, spiculated, very dark lesion with posterior acoustic shadowing.

The classes differ the way the real ones do (shape, margin, what lies behind the lesion), so a
small CNN learns both tasks in a few epochs. Everything is drawn from ``numpy.random.default_rng``
seeded per image: the same ``seed`` writes byte-identical files.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from busai.config import SYNTH_IMAGES, SYNTH_SIZE
from busai import CLASSES
from busai.errors import ConfigError, DataError

CLASS_SHARES = {"benign": 0.45, "malignant": 0.30, "normal": 0.25}  # close to BUSI's 437 / 210 / 133


def class_counts(n: int) -> dict[str, int]:
    """Split ``n`` images roughly 45/30/25 benign/malignant/normal, at least one each when n >= 3."""
    counts = {c: int(round(share * n)) for c, share in CLASS_SHARES.items()}
    counts["normal"] = n - counts["benign"] - counts["malignant"]
    if n >= 3:
        for c in counts:
            while counts[c] < 1:
                counts[max(counts, key=counts.get)] -= 1
                counts[c] += 1
    return {c: counts[c] for c in CLASSES}


def write_synthetic_dataset(
    out_dir: str | Path,
    n: int = SYNTH_IMAGES,
    seed: int = 0,
    size: tuple[int, int] = SYNTH_SIZE,
    *,
    extra_mask: bool | None = None,
) -> Path:
    """Write ``n`` phantoms as ``out_dir/<class>/<class> (i).png`` + ``_mask.png``; return ``out_dir``.

    ``extra_mask`` (default: on when n >= 20) gives the first benign image a second, satellite
    lesion whose mask is ``_mask_1.png``, so mask unions get exercised.
    """
    height, width = (int(v) for v in size)
    if n < 1:
        raise ConfigError(f"--n {n}: need at least 1 image (3 or more gives every class)")
    if height < 16 or width < 16:
        raise ConfigError(f"--size {height} {width}: images must be at least 16x16 pixels")
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: exists and is not an empty folder; choose a new folder for the synthetic dataset")
    extra_mask = n >= 20 if extra_mask is None else extra_mask
    for label, count in class_counts(n).items():
        folder = out / label
        folder.mkdir(parents=True, exist_ok=True)
        for number in range(1, count + 1):
            rng = np.random.default_rng([seed, CLASSES.index(label), number])
            satellite = extra_mask and label == "benign" and number == 1
            image, masks = make_phantom(rng, (height, width), label, satellite=satellite)
            stem = f"{label} ({number})"
            Image.fromarray(image, mode="L").save(folder / f"{stem}.png")
            for i, mask in enumerate(masks):
                suffix = "_mask" if i == 0 else f"_mask_{i}"
                Image.fromarray(mask.astype(bool)).save(folder / f"{stem}{suffix}.png")  # bool -> 1-bit PNG
    return out


def make_phantom(rng: np.random.Generator, size: tuple[int, int], label: str, *, satellite: bool = False) -> tuple[np.ndarray, list[np.ndarray]]:
    """One B-mode-like image (uint8, H x W) and its lesion masks (bool), drawn from ``rng``."""
    from scipy import ndimage  # imported here: `busai data --help` reads LAYOUTS from this module

    height, width = size
    depth = np.linspace(0.0, 1.0, height)[:, None] * np.ones((1, width))
    echo = _tissue(rng, height, width)
    masks: list[np.ndarray] = []
    if label == "benign":
        lesion = _oval(rng, height, width)
        echo = _insert_lesion(echo, lesion, rng.uniform(0.12, 0.22), rng, behind=rng.uniform(1.15, 1.35))
        masks.append(lesion)
        if satellite:
            small = _oval(rng, height, width, scale=0.45) & ~ndimage.binary_dilation(lesion, iterations=3)
            if small.any():
                echo = _insert_lesion(echo, small, rng.uniform(0.12, 0.22), rng, behind=1.1)
                masks.append(small)
    elif label == "malignant":
        lesion = _spiculated(rng, height, width)
        echo = _insert_lesion(echo, lesion, rng.uniform(0.05, 0.12), rng, behind=rng.uniform(0.3, 0.5))
        masks.append(lesion)
    else:
        masks.append(np.zeros((height, width), dtype=bool))
    speckle = ndimage.gaussian_filter(rng.rayleigh(1.0, (height, width)), sigma=(0.5, 1.0))  # laterally elongated grains
    intensity = echo * speckle / speckle.mean() * np.exp(-rng.uniform(0.6, 1.2) * depth)
    display = np.clip(intensity / np.percentile(intensity, 99.5), 0.0, 1.0) ** 0.8
    return (display * 255).round().astype(np.uint8), masks


def _tissue(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Echogenicity of skin, fat, glandular and muscle layers with wavy boundaries and texture."""
    from scipy import ndimage  # imported here: `busai data --help` reads LAYOUTS from this module

    x = np.linspace(0.0, 1.0, width)[None, :]
    y = np.linspace(0.0, 1.0, height)[:, None]

    def boundary(mean: float) -> np.ndarray:
        return mean + rng.uniform(0.01, 0.04) * np.sin(2 * np.pi * rng.uniform(0.5, 1.5) * x + rng.uniform(0, 2 * np.pi))

    skin, fat, gland = boundary(rng.uniform(0.04, 0.07)), boundary(rng.uniform(0.18, 0.3)), boundary(rng.uniform(0.65, 0.78))
    texture = ndimage.gaussian_filter(rng.normal(size=(height, width)), sigma=(max(1.0, height / 40), max(2.0, width / 15)))
    texture /= texture.std() + 1e-9
    echo = np.where(y < skin, 0.9, np.where(y < fat, 0.35, np.where(y < gland, 0.62, 0.45)))
    echo = echo * (1.0 + 0.22 * texture)
    striations = 1.0 + 0.25 * np.sin(2 * np.pi * y * rng.uniform(10, 16) + rng.uniform(0, 2 * np.pi))
    echo = np.where(y >= gland, echo * striations, echo)
    return np.clip(ndimage.gaussian_filter(echo, 0.8), 0.05, None)


def _center_and_radius(rng: np.random.Generator, height: int, width: int, scale: float) -> tuple[float, float, float]:
    radius = rng.uniform(0.09, 0.17) * min(height, width) * scale
    cy = rng.uniform(0.38, 0.62) * height
    cx = rng.uniform(0.25, 0.75) * width
    return cy, cx, radius


def _oval(rng: np.random.Generator, height: int, width: int, scale: float = 1.0) -> np.ndarray:
    """Smooth ellipse, wider than tall, slightly tilted: the benign shape."""
    cy, cx, radius = _center_and_radius(rng, height, width, scale)
    ry, rx = radius, radius * rng.uniform(1.3, 1.9)
    angle = rng.uniform(-0.3, 0.3)
    yy, xx = np.mgrid[0:height, 0:width].astype(float)
    u = (xx - cx) * np.cos(angle) + (yy - cy) * np.sin(angle)
    v = -(xx - cx) * np.sin(angle) + (yy - cy) * np.cos(angle)
    return (u / rx) ** 2 + (v / ry) ** 2 <= 1.0


def _spiculated(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """Irregular lobulated outline with thin spikes, about as tall as wide: the malignant shape."""
    cy, cx, radius = _center_and_radius(rng, height, width, 1.0)
    yy, xx = np.mgrid[0:height, 0:width].astype(float)
    theta = np.arctan2(yy - cy, xx - cx)
    rho = np.hypot(yy - cy, (xx - cx) / rng.uniform(0.9, 1.2))
    outline = np.ones_like(theta)
    for k in range(2, 6):  # lobulation
        outline += rng.uniform(0.04, 0.12) * np.cos(k * theta + rng.uniform(0, 2 * np.pi))
    for angle in rng.uniform(-np.pi, np.pi, size=rng.integers(7, 13)):  # spicules
        gap = np.angle(np.exp(1j * (theta - angle)))
        outline += rng.uniform(0.3, 0.7) * np.exp(-((gap / 0.07) ** 2))
    return rho <= radius * outline


def _insert_lesion(echo: np.ndarray, lesion: np.ndarray, level: float, rng: np.random.Generator, behind: float) -> np.ndarray:
    """Darken the lesion to ``level`` and scale the tissue behind it by ``behind`` (<1 shadow, >1 enhancement)."""
    from scipy import ndimage  # imported here: `busai data --help` reads LAYOUTS from this module

    rows = np.arange(echo.shape[0])[:, None]
    columns = lesion.any(axis=0)
    bottom = np.where(columns, echo.shape[0] - 1 - np.argmax(lesion[::-1], axis=0), echo.shape[0])
    below = (rows > bottom[None, :]) & columns[None, :]
    posterior = ndimage.gaussian_filter(below.astype(float), sigma=(1.0, 2.0))
    echo = echo * (1.0 + (behind - 1.0) * posterior)
    inside = ndimage.gaussian_filter(lesion.astype(float), 0.8)  # soft edge, as a real margin is not one pixel sharp
    interior = level * (1.0 + 0.3 * ndimage.gaussian_filter(rng.normal(size=echo.shape), 2.0))
    return echo * (1.0 - inside) + np.clip(interior, 0.02, None) * inside


LAYOUTS = ("busi", "class-folders", "bus-uclm", "images-masks", "manifest")
_UCLM_COLOURS = {"benign": (0, 255, 0), "malignant": (255, 0, 0), "normal": (0, 0, 0)}


def write_layout(busi_dir: str | Path, out_dir: str | Path, layout: str, *, images_per_patient: int = 3) -> Path:
    """Re-write a BUSI-layout dataset (e.g. the phantoms above) in another layout busai reads, so
    tests and users can see each layout with the same scans: ``class-folders`` (images only),
    ``bus-uclm`` (INFO.csv with a byte-order mark, tinted JPEG images, colour masks, patients of
    ``images_per_patient`` scans named by a four-letter prefix), ``images-masks`` (images/, masks/,
    labels.csv with group) and ``manifest`` (one CSV; several masks joined by ';'). Returns the path
    to pass to busai: the folder, or the manifest's CSV."""
    from busai.data.discover import discover_records, read_image, read_mask

    if layout not in LAYOUTS:
        raise ConfigError(f"--layout {layout}: unknown; choose one of {', '.join(LAYOUTS)}")
    out = Path(out_dir).expanduser()
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise DataError(f"{out}: exists and is not an empty folder; choose a new folder")
    records = discover_records(busi_dir)
    if layout == "busi":
        import shutil

        shutil.copytree(busi_dir, out, dirs_exist_ok=True)
        return out
    out.mkdir(parents=True, exist_ok=True)
    rows: list[str] = []
    for i, record in enumerate(records):
        patient = "P" + "".join(chr(ord("A") + (i // images_per_patient // 26**k) % 26) for k in (2, 1, 0))
        stem = f"{patient}_{i % images_per_patient:03d}"
        image = read_image(record.image, mode="L")
        if layout == "class-folders":
            (out / record.label).mkdir(exist_ok=True)
            Image.fromarray(image).save(out / record.label / f"{stem}.png")
        elif layout == "bus-uclm":
            (out / "images").mkdir(exist_ok=True)
            (out / "masks").mkdir(exist_ok=True)
            tinted = np.stack([image, image, np.clip(image.astype(np.int16) + 12, 0, 255).astype(np.uint8)], axis=2)
            Image.fromarray(tinted).save(out / "images" / f"{stem}.jpg", quality=95, subsampling=0)
            colour = np.zeros((*image.shape, 3), dtype=np.uint8)
            colour[read_mask(record).astype(bool)] = _UCLM_COLOURS[record.label]
            Image.fromarray(colour).save(out / "masks" / f"{stem}.png")
            rows.append(f"{stem}.png;{image.shape[1]}x{image.shape[0]};{record.label.capitalize()};No;No;No")
        else:
            folder = out / ("images" if layout == "images-masks" else "scans")
            folder.mkdir(exist_ok=True)
            Image.fromarray(image).save(folder / f"{stem}.png")
            masks = []
            for j, path in enumerate(record.masks):
                name = f"{stem}_mask.png" if j == 0 else f"{stem}_mask_{j}.png"
                (out / "masks").mkdir(exist_ok=True)
                Image.fromarray(read_image(path, mode="L")).save(out / "masks" / name)
                masks.append(f"masks/{name}")
            if layout == "images-masks":
                rows.append(f"{stem}.png,{record.label},{patient}")
            else:
                rows.append(f"scans/{stem}.png,{';'.join(masks)},{record.label},{patient},0.1")
    if layout == "bus-uclm":
        (out / "INFO.csv").write_text("\ufeffImage;Resolution;Label;Doppler;Marks;Combined\n" + "\n".join(rows) + "\n", encoding="utf-8")
    elif layout == "images-masks":
        (out / "labels.csv").write_text("image,label,group\n" + "\n".join(rows) + "\n", encoding="utf-8")
    elif layout == "manifest":
        (out / "manifest.csv").write_text("image,mask,label,group,pixel_spacing_mm\n" + "\n".join(rows) + "\n", encoding="utf-8")
        return out / "manifest.csv"
    return out
