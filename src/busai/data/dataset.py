"""PyTorch dataset over records: decoded-image cache, paper augmentations, normalisation.

Decoding a BUSI PNG costs far more than a training step on a small model, so every image is
decoded and resized once into an :class:`ImageCache` shared by the train and val datasets; epochs
only read arrays. Warm the cache before creating ``DataLoader`` workers so forked workers share it.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset, WeightedRandomSampler

from busai.data.discover import Record, read_image, read_mask
from busai.data.overlays import BurntInOverlays
from busai import CLASSES
from busai.config import AUGMENTATIONS
from busai.errors import ConfigError
from busai.preprocessing import normalised, resize_image, to_gray_rgb  # noqa: F401  (dataset.resize_image / to_gray_rgb kept for callers)


def resize_pair(image: np.ndarray, mask: np.ndarray, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Resize an image (see :func:`resize_image`) and its mask (nearest) to size x size."""
    return resize_image(image, size), cv2.resize(mask, (size, size), interpolation=cv2.INTER_NEAREST)


def normalise(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 (S, S, 3) -> float32 (3, S, S) tensor as (x / 255 - mean) / std: :func:`busai.preprocessing.normalised`."""
    return torch.from_numpy(normalised(image, mean, std))


class ImageCache:
    """Decoded, resized uint8 RGB images (S, S, 3) and {0,1} masks (S, S), keyed by (image path, S).

    The key uses the record's absolute image path rather than ``record.key`` so that two datasets
    with the same file names (say, BUSI and a synthetic set) never share an entry.
    """

    def __init__(self) -> None:
        self._items: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self._items)

    def get(self, record: Record, size: int) -> tuple[np.ndarray, np.ndarray]:
        """The record's (image, mask) at ``size``, decoded on first use only. Do not modify the arrays."""
        key = (str(record.image), int(size))
        item = self._items.get(key)
        if item is None:
            image = read_image(record.image, mode="RGB", frame=record.frame)
            mask = read_mask(record, size=image.shape[:2])
            item = resize_pair(image, mask, int(size))
            for array in item:
                array.setflags(write=False)  # shared between datasets: an in-place edit would leak
            self._items[key] = item
        return item

    def warm(self, records: Sequence[Record], size: int, *, progress: bool = False) -> None:
        """Decode every record now (optionally with a progress bar on stderr) instead of during epoch 1."""
        for record in _track(records, f"Decoding {len(records)} images", progress):
            self.get(record, size)


def _track(items: Sequence, description: str, progress: bool) -> Iterable:
    if not progress:
        return items
    from rich.console import Console
    from rich.progress import track

    console = Console(stderr=True)
    return track(items, description=description, console=console, transient=True, disable=not console.is_terminal)


def build_augmentations(name: str, seed: int | None = None, size: int = 256) -> A.Compose | None:
    """Training augmentations by name, applied to image and mask together; ``none`` gives None.
    ``size`` is the model's input size (the crops of ``framing`` are resized back to it).

    ``paper``: the study's flips, rotations and colour jitter. Ultrasound images are near-grayscale,
    so saturation and hue jitter stay small (they only touch the few images with colour overlays).

    ``strong``: the paper's flips and jitter plus what varies between real scans and the paper's
    recipe leaves out: lesion size and position (probe depth and placement: scale 0.8-1.25 and
    shift, with the rotation, in one affine warp), gain curves (gamma) and speckle or focus
    (multiplicative noise or blur).

    ``scanner``: everything ``strong`` does plus what differs between scanners and hospitals (see
    :func:`scanner_shift`): framing, grey and colour maps, gain and contrast, JPEG re-encoding and
    burnt-in annotations.

    ``framing``: what changes most between scanners, and nothing else: how much of the breast the
    frame holds (random resized crops over 45-100% of the scan, any aspect ratio near the scan's) and
    the gain, gamma, contrast and noise of the grey map; horizontal flips only, as scans are never
    shown upside down.
    """
    if name == "none":
        return None
    flips = [A.HorizontalFlip(p=0.5), A.VerticalFlip(p=0.5)]
    jitter = A.ColorJitter(brightness=0.2, contrast=0.2, saturation=0.05, hue=0.02, p=0.5)
    if name == "paper":
        rotate = A.Rotate(limit=15, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=0.5)
        return A.Compose([*flips, rotate, jitter], seed=seed)
    if name == "framing":
        return A.Compose(
            [
                A.HorizontalFlip(p=0.5),
                A.RandomResizedCrop(size=(size, size), scale=(0.45, 1.0), ratio=(0.75, 1.33), p=1.0),
                A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.25, p=0.5),
                A.RandomGamma(gamma_limit=(70, 150), p=0.5),
                A.GaussNoise(std_range=(0.01, 0.05), p=0.3),
            ],
            seed=seed,
        )
    if name in ("strong", "scanner"):
        warp = A.Affine(scale=(0.8, 1.25), translate_percent=(-0.1, 0.1), rotate=(-15, 15), border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=0, p=0.75)
        texture = A.OneOf([A.MultiplicativeNoise(multiplier=(0.85, 1.15), elementwise=True), A.GaussianBlur(blur_limit=(3, 5))], p=0.3)
        strong = [*flips, warp, jitter, A.RandomGamma(gamma_limit=(70, 150), p=0.3), texture]
        if name == "strong":
            return A.Compose(strong, seed=seed)
        framing, photometric, display = scanner_shift()
        # Geometry first; then the scanner's grey map and gain; annotations on the displayed image;
        # JPEG last, as a scan is compressed after the scanner has drawn on it.
        return A.Compose([*strong[:2], *framing, *strong[2:], *photometric, *display], seed=seed)
    raise ConfigError(f"augment '{name}': unknown; choose one of {', '.join(AUGMENTATIONS)}")


def scanner_shift() -> tuple[list, list, list]:
    """The ``scanner`` recipe's additions to ``strong`` as (framing, photometric, display) transform
    lists. Each family fires on under half of the images, so most still look like the scans they are.

    - framing (p 0.4, one of): crop or pad each side independently, up to a fifth, and resize back,
      so the lesion fills more or less of the image and the aspect ratio changes; or black bars on
      two opposite sides (letterbox, pillarbox). Masks follow with nearest-neighbour resizing.
    - photometric: a tinted grey map (each channel its own gain or tone curve, as BUS-UCLM's
      blue-grey map) p 0.4; a different luma mapping (one tone curve for all
      channels, which still counts after ``--color gray``) p 0.3; gain and contrast p 0.3.
    - display: burnt-in text, calipers, a Doppler box, a depth ruler
      (:class:`busai.data.overlays.BurntInOverlays`, image only) p 0.4; JPEG quality 30-90 p 0.4.
    """
    pad = {"border_mode": cv2.BORDER_CONSTANT, "fill": 0, "fill_mask": 0, "keep_size": True}
    framing = A.OneOf(
        [
            A.CropAndPad(percent=(-0.2, 0.2), sample_independently=True, **pad),
            A.CropAndPad(percent=((0.05, 0.25), (0.0, 0.0), (0.05, 0.25), (0.0, 0.0)), sample_independently=True, **pad),  # letterbox
            A.CropAndPad(percent=((0.0, 0.0), (0.05, 0.25), (0.0, 0.0), (0.05, 0.25)), sample_independently=True, **pad),  # pillarbox
        ],
        p=0.4,
    )
    # Tints as small as real ones (BUS-UCLM's grey map against BUSI's: docs/study-log.md, "figures moved out of docstrings").
    tint = A.OneOf(
        [A.MultiplicativeNoise(multiplier=(0.92, 1.08), per_channel=True, elementwise=False), A.RandomToneCurve(scale=0.05, per_channel=True)], p=0.4
    )
    photometric = [tint, A.RandomToneCurve(scale=0.1, per_channel=False, p=0.3), A.RandomBrightnessContrast(brightness_limit=0.2, contrast_limit=0.25, p=0.3)]
    display = [BurntInOverlays(p=0.4), A.ImageCompression(quality_range=(30, 90), p=0.4)]
    return [framing], photometric, display


def paste_lesion(
    image: np.ndarray, mask: np.ndarray, donor_image: np.ndarray, donor_mask: np.ndarray, rng: np.random.Generator, fade: float
) -> tuple[np.ndarray, np.ndarray]:
    """Paste the lesion of ``donor`` into ``image`` at a random spot clear of its own lesion.

    ``fade`` in [0, 1] sets the lesion's echogenicity: 1 keeps the donor's grey level, 0 shifts the
    lesion's mean to that of the host tissue it covers, keeping only its texture and outline: an
    isoechoic lesion, the kind the segmenter misses. Only lesion pixels are pasted, blended in over
    a 3-pixel ramp inside the outline, so the paste leaves no step or halo for the network to learn
    instead. Written here because albumentations' OverlayElements pastes hard-edged at the donor's
    own grey level. Returns new arrays, or the inputs when the lesion cannot be placed (larger than
    60% of the image, or no spot clear of the host's lesion in five draws).
    """
    ys, xs = np.nonzero(donor_mask)
    if ys.size == 0:
        return image, mask
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    h, w = y1 - y0, x1 - x0
    size_y, size_x = mask.shape
    if h > 0.6 * size_y or w > 0.6 * size_x:
        return image, mask
    for _ in range(5):
        ty, tx = int(rng.integers(0, size_y - h + 1)), int(rng.integers(0, size_x - w + 1))
        if not mask[ty : ty + h, tx : tx + w].any():
            break
    else:
        return image, mask
    lesion = (donor_mask[y0:y1, x0:x1] > 0).astype(np.uint8)
    # Distance to the outline, padded so a lesion cut by the image border still ramps there.
    inward = cv2.distanceTransform(cv2.copyMakeBorder(lesion, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0), cv2.DIST_L2, 3)[1:-1, 1:-1]
    alpha = np.clip(inward / 3.0, 0.0, 1.0)[..., None]
    patch = donor_image[y0:y1, x0:x1].astype(np.float32)
    host = image[ty : ty + h, tx : tx + w].astype(np.float32)
    inside = lesion.astype(bool)
    patch += (1.0 - fade) * (host[inside].mean(axis=0) - patch[inside].mean(axis=0))
    out_image, out_mask = image.copy(), mask.copy()
    out_image[ty : ty + h, tx : tx + w] = np.rint(host * (1.0 - alpha) + alpha * np.clip(patch, 0, 255)).astype(image.dtype)
    out_mask[ty : ty + h, tx : tx + w] |= lesion.astype(mask.dtype)
    return out_image, out_mask


class BusDataset(Dataset):
    """Records as model input: ``image`` (3,S,S) float32 normalised, ``mask`` (1,S,S) float32 {0,1},
    ``label`` int64 (index into ``busai.CLASSES``, or ``label_index[record.label]`` where a
    classifier has its own label set, see :mod:`busai.labels`) and ``index`` (position in ``records``).
    ``augment`` names the training augmentations (see :func:`build_augmentations`);
    ``lesion_paste`` is the chance that an item also gets another training image's lesion pasted
    in, at a random echogenicity (see :func:`paste_lesion`; segmentation only: it changes what the
    scan shows, not its class label). ``lesion_margins`` (low, high) makes the item the lesion with its
    context (:func:`busai.preprocessing.lesion_view`, a lesion-view classifier's input), each side's
    margin drawn from [low, high] per item and epoch (the same every time where low == high); the
    mask is then the crop's."""

    def __init__(
        self,
        records: Sequence[Record],
        image_size: int,
        mean: Sequence[float],
        std: Sequence[float],
        augment: str = "none",
        cache: ImageCache | None = None,
        *,
        seed: int | None = None,
        lesion_paste: float = 0.0,
        grayscale: bool = False,
        label_index: dict[str, int] | None = None,
        lesion_margins: tuple[float, float] | None = None,
    ) -> None:
        self.records = list(records)
        self.lesion_margins = tuple(lesion_margins) if lesion_margins is not None else None
        self.label_index = label_index
        self.image_size = int(image_size)
        self.cache = cache if cache is not None else ImageCache()
        # seed None: drawn from torch's global RNG, so torch.manual_seed(...) makes augmentation reproducible.
        self._seed = int(torch.randint(2**31 - 1, ())) if seed is None else int(seed)
        self.augment = build_augmentations(augment, self._seed, size=self.image_size)
        self.mean, self.std = tuple(mean), tuple(std)
        self.lesion_paste = float(lesion_paste)
        self.grayscale = bool(grayscale)
        self._epoch_seed = 0
        self._donors = [i for i, r in enumerate(self.records) if r.masks and r.label not in (None, "normal")]

    @classmethod
    def for_model(cls, records: Sequence[Record], preprocessing, **options) -> "BusDataset":
        """Records as a trained model's input (a :class:`busai.preprocessing.Preprocessing`, or a loaded
        model's ``.preprocessing``): its size, normalisation, colour, and for a lesion view the crop at
        its own margin around each record's mask (what its validation saw during training)."""
        pre = getattr(preprocessing, "preprocessing", preprocessing)
        margins = (pre.margin, pre.margin) if pre.lesion_view else None
        return cls(records, pre.image_size, pre.mean, pre.std, grayscale=pre.grayscale, lesion_margins=margins, **options)

    def __len__(self) -> int:
        return len(self.records)

    @property
    def labels(self) -> list[int]:
        return [self._label(r) for r in self.records]

    def _label(self, record: Record) -> int:
        if self.label_index is not None:
            return self.label_index[record.label]
        if record.label is not None and record.label not in CLASSES:
            return -1  # a segmenter's data may carry any labels (BI-RADS ...): its loss never reads them
        return record.label_index

    def __getitem__(self, index: int | tuple[int, int]) -> dict:
        """Item ``index``; ``(index, epoch_seed)`` (what :class:`busai.data.loading.EpochSeeded` draws)
        also names the epoch, which persistent DataLoader workers cannot learn from :meth:`set_epoch_seed`."""
        index, epoch_seed = index if isinstance(index, tuple) else (index, self._epoch_seed)
        record = self.records[index]
        if self.lesion_margins is not None:
            image, mask = self._lesion_item(record, index, epoch_seed)
        else:
            image, mask = self.cache.get(record, self.image_size)
        if self.lesion_paste > 0 and self._donors:
            # Seeded by (seed, epoch, item) alone, so workers and resumed runs paste the same lesions.
            rng = np.random.default_rng([self._seed, epoch_seed, index])
            if rng.random() < self.lesion_paste:
                donor = self.records[self._donors[int(rng.integers(len(self._donors)))]]
                image, mask = paste_lesion(image, mask, *self.cache.get(donor, self.image_size), rng, fade=float(rng.random()))
        if self.augment is not None:
            # Seeded by (seed, epoch, item) too, not by a stream shared across items: which worker
            # draws an item, and in which order, then changes nothing.
            self.augment.set_random_seed(int(np.random.SeedSequence([self._seed, epoch_seed, index]).generate_state(1)[0]))
            out = self.augment(image=image, mask=mask)
            image, mask = out["image"], out["mask"]
        if self.grayscale:  # after augmentation, so colour jitter cannot tint the model's input
            image = to_gray_rgb(image)
        return {
            "image": normalise(image, self.mean, self.std),
            "mask": torch.from_numpy(np.ascontiguousarray(mask, dtype=np.float32)[None]),
            "label": torch.tensor(self._label(record), dtype=torch.int64),
            "index": index,
        }

    def _lesion_item(self, record: Record, index: int, epoch_seed: int) -> tuple[np.ndarray, np.ndarray]:
        """The lesion view of ``record`` and its mask, cut from the image cached at twice the input size
        (what :meth:`busai.preprocessing.Preprocessing.lesion_array` resizes a scan to at prediction)."""
        from busai.preprocessing import lesion_view

        image, mask = self.cache.get(record, 2 * self.image_size)
        low, high = self.lesion_margins
        # Seeded by (seed, epoch, item), as the augmentation: workers and resumed runs cut the same crops.
        margins = tuple(np.random.default_rng([self._seed, epoch_seed, index, 1]).uniform(low, high, 4)) if high > low else (low,) * 4
        stacked = np.concatenate([image, mask[..., None].astype(np.uint8)], axis=2)  # one cut for both
        crop = lesion_view(stacked, mask, margins, self.image_size)
        return np.ascontiguousarray(crop[..., :3]), (crop[..., 3] > 0).astype(mask.dtype)

    def set_epoch_seed(self, seed: int) -> None:
        """Called by the engine before each epoch so augmentation and lesion pastes depend on (seed,
        epoch, item) only, which makes a resumed run draw the same ones as an uninterrupted run."""
        self._epoch_seed = int(seed)


def class_balance_weights(labels: Sequence[int]) -> torch.Tensor:
    """Per-sample weight 1 / class frequency: each class drawn equally often on average."""
    labels = np.asarray(labels, dtype=np.int64)
    return torch.as_tensor(1.0 / np.bincount(labels)[labels], dtype=torch.double)


def make_weighted_sampler(labels: Sequence[int], seed: int = 0) -> WeightedRandomSampler:
    """Sampler drawing each class equally often on average (weight = 1 / class frequency), seeded."""
    generator = torch.Generator().manual_seed(int(seed))
    return WeightedRandomSampler(class_balance_weights(labels), num_samples=len(labels), replacement=True, generator=generator)


class HardExampleSampler(WeightedRandomSampler):
    """Draws each training image in proportion to ``base × (floor + difficulty)``.

    ``difficulty`` in [0, 1] is what the engine measured on the image the last time it was trained
    on (1 − Dice for a mask, 1 − p(true class) for a label); unseen images count as hard (1). So
    images the model keeps getting wrong, such as a rare lesion type, come round up to
    ``(1 + floor) / floor`` times as often as solved ones. torch's sampler draws from fixed
    weights; this subclass re-weights it after every training batch (an epoch's order is drawn at
    its start, so the new weights count from the next epoch), and its state goes into checkpoints
    so a resumed run draws the same batches.
    """

    def __init__(self, size: int, base: torch.Tensor | None = None, floor: float = 0.2, seed: int = 0) -> None:
        self.base = torch.ones(size, dtype=torch.double) if base is None else base.double()
        self.difficulty = torch.ones(size, dtype=torch.double)
        self.floor = float(floor)
        super().__init__(self.base * (self.floor + 1.0), num_samples=size, replacement=True, generator=torch.Generator().manual_seed(int(seed)))

    def update(self, indices, difficulty: torch.Tensor) -> None:
        self.difficulty[torch.as_tensor(indices, dtype=torch.long)] = difficulty.detach().double().cpu().clamp(0.0, 1.0)
        self.weights = self.base * (self.floor + self.difficulty)

    def state_dict(self) -> dict:
        return {"difficulty": self.difficulty.clone()}

    def load_state_dict(self, state: dict) -> None:
        self.update(torch.arange(len(self.difficulty)), state["difficulty"])
