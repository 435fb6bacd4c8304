"""Adapting a segmentation model to a new site (scanner, hospital): ``busai adapt`` / ``busai.adapt``.

Two steps, the second only where the site has labelled scans to spare:

1. **Normalisation statistics** (AdaBN, Li et al. 2016): the BatchNorm layers' running means and
   variances are re-estimated on the site's scans, with every weight unchanged. A different
   scanner mostly changes brightness, contrast and texture statistics; the network then sees
   inputs normalised the way its training data was. No label is used.
2. **Fine-tuning on a few labelled scans** (``labelled``): from the re-normalised weights, with
   the first encoder stages frozen (weights and statistics), early-stopped on a grouped hold-out
   of those labelled scans. Fewer than :data:`MIN_LABELLED` labelled scans are refused.

   Or, without labels and only when asked (``pseudo_label``), **self-training on confident
   pseudo-labels**: the re-normalised model predicts the pool's scans and their mirror images; a
   scan whose two masks agree and whose lesion pixels are far from 0.5 (or that is confidently
   empty) becomes a training mask, its uncertain pixels ignored by the loss (:func:`pseudo_label`).
   The same fine-tuning then runs on them, early-stopped on a grouped share of them. With labelled
   held-out scans the self-trained model is kept only if its Dice over their lesion scans is not
   below the statistics-only model's and it outlines no more of their normal scans; without them
   it is kept (the user asked), with the agreement numbers in the report.

The site's **held-out** scans (its split file's test images, or a grouped hold-out of its
labelled scans that adapt makes and records) are never used by either step: they only score the
model before and after, with bootstrap CIs. Images of the same patient as a held-out scan are
left out of the adaptation too.

The adapted model is a run folder: ``busai.load`` / ``predict`` / ``evaluate`` take it. Its
``training_data.json`` lists what it saw: its parent's training data plus the site images used
here, under the site's dataset fingerprint, so :mod:`busai.provenance` refuses to score it on
them. ``adapt.json`` and ``adapt.md`` report what was done, the scores before / after, and how the
site's scans compare with what the model knows (input gate, scan region, the shift of the
network's normalisation statistics).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import sys
import types
from collections import Counter
from pathlib import Path

import numpy as np
import torch
from torch import nn

from busai import runs
from busai.config import (
    ADAPT_BATCH_SIZE,
    ADAPT_EPOCHS,
    ADAPT_FREEZE_ENCODER,
    ADAPT_LR,
    ADAPT_PATIENCE,
    N_BOOT,
    ADAPT_HOLDOUT as HOLDOUT,
    ADAPT_MIN_LABELLED as MIN_LABELLED,
    ADAPT_PSEUDO_AGREEMENT as PSEUDO_AGREEMENT,
    ADAPT_PSEUDO_BAND as PSEUDO_BAND,
    ADAPT_PSEUDO_CONFIDENCE as PSEUDO_CONFIDENCE,
)
from busai.errors import CheckpointError, ConfigError, DataError

MIN_FOR_HOLDOUT = 5  # labelled scans a site needs before adapt holds some out for the report
EARLY_STOP_SHARE = 0.25  # share of the fine-tuning scans (grouped) that decide when to stop
STATS_SAMPLE = 500  # images whose input-gate and scan-region statistics are measured (seeded sample of the pool)
ADAPT_JSON = "adapt.json"
ADAPT_MD = "adapt.md"
IGNORE = 255  # pseudo-label pixels the loss leaves out (uncertain probability)


def adapt(
    model,
    data,
    out: str | Path,
    *,
    splits: str | Path | None = None,
    labelled: int | None = None,
    holdout: float = HOLDOUT,
    freeze_encoder: int = ADAPT_FREEZE_ENCODER,
    epochs: int = ADAPT_EPOCHS,
    patience: int = ADAPT_PATIENCE,
    lr: float = ADAPT_LR,
    batch_size: int = ADAPT_BATCH_SIZE,
    seed: int = 0,
    device: str = "auto",
    n_boot: int = N_BOOT,
    data_format: str | None = None,
    quiet: bool = True,
    command: str | None = None,
    pseudo_label: bool = False,
    pseudo_agreement: float = PSEUDO_AGREEMENT,
    pseudo_confidence: float = PSEUDO_CONFIDENCE,
    pseudo_band: float = PSEUDO_BAND,
    max_minutes: float | None = None,
) -> dict:
    """Adapt the segmentation model ``model`` (a run or release folder, or ``"release"``) to the
    site whose scans are in ``data`` (``DIR`` or ``NAME=DIR``: a dataset layout busai reads, or a
    plain folder of images), writing the adapted run folder ``out``; returns the report (``adapt.json``).

    ``splits``: the site's split file (train images are adapted on, test images held out, val
    images left alone); without it adapt holds out ``holdout`` of the labelled scans by patient.
    ``labelled``: how many labelled scans to fine-tune on (0: statistics only; None: every
    labelled scan outside the hold-out, or none when the site has none).
    ``freeze_encoder``: encoder stages (from the input) kept fixed while fine-tuning.
    ``pseudo_label``: without labels, self-train on confident pseudo-labels after the statistics
    (see the module docstring); ``pseudo_agreement``, ``pseudo_confidence`` and ``pseudo_band``
    are its rule (:func:`pseudo_label`). ``max_minutes``: wall-clock budget of the fine-tuning (or
    self-training); it stops after the epoch that crosses it and keeps its best epoch, as ``busai train`` does.
    """
    from busai.api import load
    from busai.data.sources import parse_data_specs

    out = Path(out).expanduser()
    _check_options(holdout, labelled, freeze_encoder, epochs, patience, lr, batch_size, max_minutes)
    rule = PseudoRule(pseudo_agreement, pseudo_confidence, pseudo_band) if pseudo_label else None  # checks the thresholds
    from busai.outputs import output_dir

    output_dir(out, create=False)  # a file or an unwritable place fails before any work
    _check_out(out)
    specs = parse_data_specs([data] if isinstance(data, (str, Path)) else data, [data_format] if data_format else None)
    if len(specs) != 1:
        raise ConfigError("--data: adapt to one site at a time; pass one --data [NAME=]DIR")
    spec = specs[0]

    loaded = model.loaded if hasattr(model, "loaded") else load(model, task="segmentation", device=device).loaded
    if loaded.backend != "torch":
        raise ConfigError(f"{model}: an exported .onnx model cannot be adapted; pass the run or release folder it was exported from")
    if hasattr(model, "loaded"):  # the caller's busai.Model keeps its own statistics
        loaded = dataclasses.replace(loaded, module=copy.deepcopy(loaded.module))
    parent_dir = Path(loaded.source)
    if loaded.spec.get("task") != "segmentation":
        raise ConfigError(f"{model}: is a {loaded.spec.get('task')} model; adapt takes a segmentation model (run folder, release folder or 'release')")

    records, fingerprint, layout = read_site(spec)
    _check_new_site(parent_dir, records, spec, fingerprint)
    plan = plan_site(records, splits, spec, labelled=labelled, holdout=holdout, seed=seed)
    if rule is not None and plan.finetune:
        raise ConfigError(
            f"--pseudo-label: self-training is the step without labels, and {spec.path} has {len(plan.finetune) + len(plan.early_stop)} "
            "labelled scans to fine-tune on; pass --labelled 0 to self-train (the labelled scans then only score), or drop --pseudo-label"
        )
    output_dir(out)

    from busai.runs import best_threads

    best_threads()
    torch.manual_seed(seed)
    report: dict = {
        "command": command,
        "parent": {"source": str(model) if isinstance(model, (str, Path)) else loaded.source, "folder": str(parent_dir), "model": loaded.spec},
        "site": {"data": str(spec), "layout": layout, "fingerprint": fingerprint, "images": len(records), **plan.counts()},
        "mode": "few-label" if plan.finetune else "unlabelled",
        "lists": plan.lists(),
    }
    _say(quiet, f"site {spec}: {len(records)} scans; adapting on {len(plan.pool)}, holding out {len(plan.holdout)}")

    before = _score(loaded, plan.holdout, n_boot, seed) if plan.holdout else None
    parent_bn = _bn_state(loaded.module)
    # One read of the pool: the network input for the statistics pass, and the input-gate / scan-region numbers.
    rows: list[dict] = []
    reestimate_bn(loaded.module, _pool_batches(loaded, plan.pool, max(batch_size, 16), seed, rows))
    report["site_statistics"] = site_statistics(rows)
    report["bn_shift"] = bn_shift(parent_bn, loaded.module)
    scores = {"before": before}
    if plan.finetune:
        scores["statistics_only"] = _score(loaded, plan.holdout, n_boot, seed) if plan.holdout else None
        fit = _finetune(
            loaded,
            plan.finetune,
            plan.early_stop,
            out,
            freeze_encoder=freeze_encoder,
            epochs=epochs,
            patience=patience,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
            quiet=quiet,
            max_minutes=max_minutes,
        )
        report["fine_tuning"] = fit
    trained = bool(plan.finetune)
    if rule is not None:
        scores["statistics_only"] = _score(loaded, plan.holdout, n_boot, seed) if plan.holdout else None
        loaded, trained, scores["self_trained"], section = self_train(
            loaded,
            plan,
            out,
            rule,
            scores["statistics_only"],
            freeze_encoder=freeze_encoder,
            epochs=epochs,
            patience=patience,
            lr=lr,
            batch_size=batch_size,
            seed=seed,
            n_boot=n_boot,
            quiet=quiet,
            max_minutes=max_minutes,
        )
        report["lists"].update(section.pop("lists"))
        report["pseudo_label"] = section
    _write_run(loaded, parent_dir, out, report, spec, fingerprint, plan, command)
    if not trained:
        from busai.engine import BEST_CHECKPOINT, save_weights

        save_weights(loaded.module, out / BEST_CHECKPOINT, {"busai": json.dumps({"model_spec": loaded.spec, "image_size": loaded.image_size})})
    elif plan.finetune:
        from busai.runs import load_model

        loaded = load_model(out, device=str(loaded.device))
    if rule is not None and scores["statistics_only"] is not None:  # the kept model (self-trained or not) is scored already
        scores["after"] = scores["self_trained"] if trained else scores["statistics_only"]
    else:
        scores["after"] = _score(loaded, plan.holdout, n_boot, seed) if plan.holdout else None
    if before is not None:
        scores["change"] = _paired_change(before, scores["after"], plan.holdout, n_boot, seed)
    report["scores"] = {k: _compact(v) if k != "change" else v for k, v in scores.items()}
    report["per_image"] = {k: v["per_image"] for k, v in scores.items() if k != "change" and v is not None}
    write_report(out, report)
    return report


ADAPT_FILES = (runs.CONFIG, runs.BEST_CHECKPOINT, runs.LAST_CHECKPOINT, runs.HISTORY, runs.FIT, runs.PROGRESS, runs.TRAINING_DATA)


def _check_out(out: Path) -> None:
    """Refuse a finished adaptation or any other run; an adaptation interrupted before its report
    (config.json names its parent, no adapt.json) starts again in place."""
    if (out / ADAPT_JSON).exists():
        raise ConfigError(f"--out {out}: already holds an adapted model; choose a new folder")
    config = out / runs.CONFIG
    if not config.exists():
        return
    try:
        unfinished = str(json.loads(config.read_text()).get("weight_source", "")).startswith("adapted from")
    except (OSError, ValueError, AttributeError):
        unfinished = False
    if not unfinished:
        raise ConfigError(f"--out {out}: already holds a run; choose a new folder for the adapted model")
    for name in ADAPT_FILES:
        (out / name).unlink(missing_ok=True)


# --------------------------------------------------------------------------- the site's data
def read_site(spec) -> tuple[list, str, str]:
    """The site's records (labelled or not), its dataset fingerprint and its layout.

    A folder in one of busai's layouts is read by its reader (labels and masks where the rows have
    them); any other folder is read as scans alone, every image under it unlabelled.
    """
    from busai.data.discover import Record, Scan, dicom_record, is_image_file, natural_key
    from busai.data.sources import detect_format, scan_source
    from busai.data.splits import dataset_fingerprint

    path = spec.path
    if not path.exists():
        raise DataError(f"{path}: not found; pass the folder of the site's scans")
    layout = spec.format
    if layout is None:
        try:
            layout = detect_format(path)
        except DataError:
            if not path.is_dir():
                raise
            layout = "images"
    if layout == "images":
        scan = Scan(root=path)
        files = sorted((p for p in path.rglob("*") if p.is_file() and not p.name.startswith(".") and is_image_file(p)), key=lambda p: natural_key(str(p)))
        scan.records = [dicom_record(Record(path, p, (), None, dataset=spec.name), scan) for p in files]
    else:
        scan, layout = scan_source(spec)
    if not scan.records:
        raise DataError(f"{path}: no images found; pass the folder that holds the site's scans (PNG, JPEG or DICOM, or a layout from docs/datasets.md)")
    return scan.records, dataset_fingerprint(scan.records), layout


def _check_new_site(parent_dir: Path, records: list, spec, fingerprint: str) -> None:
    """A "site" that is the model's own training data is no new site, and its hold-out would leak."""
    from busai.provenance import check_unseen

    check_unseen(parent_dir, {"all": records}, {spec.name: fingerprint}, what="adapting to")


def _segmentation_labelled(record) -> bool:
    return record.label is not None and record.segmentable


class SitePlan:
    """Which site scans each step may use (keys of the site's records)."""

    def __init__(self, pool, holdout, finetune, early_stop, left_out, source, val=()):
        self.pool, self.holdout, self.finetune, self.early_stop, self.left_out, self.source = pool, holdout, finetune, early_stop, left_out, source
        self.val = list(val)  # the split file's labelled val scans: where --pseudo-label's keep-or-discard choice is made, if any
        self.chosen_on: list = []  # the scans that choice was scored on, when not the hold-out (recorded as seen)

    def counts(self) -> dict:
        return {
            "holdout_from": self.source,
            "adaptation_images": len(self.pool),
            "holdout_images": len(self.holdout),
            "finetune_images": len(self.finetune),
            "early_stop_images": len(self.early_stop),
            "left_out_images": len(self.left_out),
        }

    def lists(self) -> dict:
        return {name: [r.key for r in getattr(self, name)] for name in ("pool", "finetune", "early_stop", "holdout", "left_out")}


def plan_site(records: list, splits, spec, *, labelled: int | None, holdout: float, seed: int) -> SitePlan:
    """Split the site's scans into the adaptation pool, the fine-tuning and early-stop scans (labelled,
    inside the pool) and the report's hold-out; the lists never share a patient."""
    from busai.data.splits import make_splits, read_splits

    by_key = {r.key: r for r in records}
    if splits is not None:
        parts = read_splits(splits)
        listed = {name: [by_key[k] for k in parts.get(name, []) if k in by_key] for name in ("train", "val", "test")}
        if not listed["train"] and not listed["test"]:
            raise DataError(
                f"{splits}: none of its images are in {spec.path} (keys such as {records[0].key}); pass the split file made from this site's data"
                + (f", named as in the split file (--data NAME={spec.path})" if parts.get("datasets") else "")
            )
        pool, held = listed["train"], [r for r in listed["test"] if _segmentation_labelled(r)]
        val = [r for r in listed["val"] if _segmentation_labelled(r)]
        source = str(splits)
    else:
        labelled_records = [r for r in records if _segmentation_labelled(r)]
        held, val = [], []
        if holdout > 0 and len(labelled_records) >= MIN_FOR_HOLDOUT:
            part = make_splits(labelled_records, [], val=0.0, test=holdout, seed=seed)
            held = [by_key[k] for k in part["test"]]
        pool = [r for r in records if r.key not in {h.key for h in held}]
        source = f"grouped hold-out of {holdout:.0%} of the labelled scans (seed {seed})" if held else "none (too few labelled scans to hold any out)"
    held_groups = {_group(r) for r in held}
    val = [r for r in val if _group(r) not in held_groups]
    left_out = [r for r in pool if _group(r) in held_groups]  # a held-out patient's other scans
    pool = [r for r in pool if _group(r) not in held_groups]
    if not pool:
        raise DataError(
            f"{spec.path}: no scans are left to adapt on once the held-out scans (and their patients) are set aside; add unlabelled scans of the site"
        )

    available = [r for r in pool if _segmentation_labelled(r)]
    if labelled is None:  # every labelled scan, when there are enough to fine-tune on; else statistics only
        labelled = len(available) if len(available) >= MIN_LABELLED else 0
    if labelled == 0:
        return SitePlan(pool, held, [], [], left_out, source, val)
    if labelled < MIN_LABELLED:
        raise ConfigError(f"--labelled {labelled}: fine-tuning needs at least {MIN_LABELLED} labelled scans (pass --labelled 0 to adapt without labels)")
    if labelled > len(available):
        raise DataError(
            f"--labelled {labelled}: {spec.path} has only {len(available)} labelled scans (a mask, or labelled normal) outside the hold-out; "
            f"pass --labelled {len(available)} or fewer, or label more scans"
        )
    chosen = _pick_grouped(available, labelled, seed)
    part = make_splits(chosen, [], val=EARLY_STOP_SHARE, test=0.0, seed=seed)
    finetune, early_stop = [by_key[k] for k in part["train"]], [by_key[k] for k in part["val"]]
    if not finetune or not early_stop:
        raise DataError(
            f"{spec.path}: the {labelled} labelled scans come from too few patients to hold some out for early stopping; label scans of more patients"
        )
    return SitePlan(pool, held, finetune, early_stop, left_out, source, val)


def _group(record) -> str:
    return f"{record.dataset}:{record.group}" if record.group is not None else record.key


def _pick_grouped(records: list, n: int, seed: int) -> list:
    """``n`` records spread over as many patients as possible: one scan of each patient in seeded
    order, then a second of each, and so on (a few labels of many patients teach more, and leave
    patients to hold out for early stopping)."""
    rng = np.random.default_rng(seed)
    groups: dict[str, list] = {}
    for r in records:
        groups.setdefault(_group(r), []).append(r)
    order = list(groups)
    rng.shuffle(order)
    queues = [list(rng.permutation(len(groups[g]))) for g in order]
    picked: list = []
    while len(picked) < n:
        for g, queue in zip(order, queues):
            if queue and len(picked) < n:
                picked.append(groups[g][queue.pop(0)])
    return picked


def _check_options(holdout, labelled, freeze_encoder, epochs, patience, lr, batch_size, max_minutes=None) -> None:
    if not 0.0 <= holdout < 1.0:
        raise ConfigError(f"--holdout {holdout}: must be a fraction in [0, 1), e.g. 0.2")
    if labelled is not None and labelled < 0:
        raise ConfigError(f"--labelled {labelled}: must be 0 (no labels used) or a number of labelled scans")
    if freeze_encoder < 0:
        raise ConfigError(f"--freeze-encoder {freeze_encoder}: must be 0 (nothing frozen) or a number of encoder stages")
    for name, value in (("--epochs", epochs), ("--patience", patience), ("--lr", lr), ("--batch-size", batch_size), ("--max-minutes", max_minutes)):
        if value is not None and not value > 0:
            raise ConfigError(f"{name} {value}: must be positive")


# --------------------------------------------------------------------------- statistics
def _pool_batches(loaded, records: list, batch_size: int, seed: int, rows: list[dict]):
    """The pool's network inputs in batches of near-equal size (a last batch of one would give a
    BatchNorm layer no variance), appending a seeded sample's site statistics to ``rows``."""

    sample = set(np.random.default_rng(seed).permutation(len(records))[:STATS_SAMPLE].tolist())
    for part in np.array_split(np.arange(len(records)), max(1, -(-len(records) // batch_size))):
        yield torch.stack([_pool_input(loaded, records[i], i in sample, rows) for i in part])


def _pool_input(loaded, record, measure: bool, rows: list[dict]) -> torch.Tensor:
    from busai.data.discover import read_image
    from busai.inference import preprocess
    from busai.input_check import OK, check_input, image_statistics
    from busai.scan_region import find_scan_region

    image = read_image(record.image, mode="RGB", frame=record.frame)  # its DataError names the file
    if measure:
        stats = image_statistics(image)
        region = find_scan_region(image)
        verdict = check_input(image, stats)
        share = region.width * region.height / (image.shape[0] * image.shape[1])
        rows.append({**stats, "gate": OK if verdict == OK else verdict.split(":", 1)[0], "cropped": region.cropped, "region_share": share})
    return preprocess(image, loaded.image_size, loaded.mean, loaded.std, loaded.grayscale)


def site_statistics(rows: list[dict]) -> dict:
    """What the input gate and the scan-region finder make of the site's scans (see busai.input_check)."""
    from busai.input_check import MAX_BRIGHT_SHARE, MAX_COLOUR_SHARE, MIN_STD, MIN_TISSUE_SHARE

    def spread(key: str) -> dict:
        values = np.array([r[key] for r in rows], dtype=np.float64)
        return {name: round(float(np.quantile(values, q)), 4) for name, q in (("min", 0.0), ("p01", 0.01), ("median", 0.5), ("p99", 0.99), ("max", 1.0))}

    gate = Counter(r["gate"] for r in rows)
    return {
        "images_measured": len(rows),
        "input_gate": {"ok": gate.pop("ok", 0), "flagged": dict(gate)},
        "gate_limits": {
            "std": f">= {MIN_STD}",
            "colour_share": f"<= {MAX_COLOUR_SHARE}",
            "tissue_share": f">= {MIN_TISSUE_SHARE}",
            "bright_share": f"<= {MAX_BRIGHT_SHARE}",
        },
        "statistics": {key: spread(key) for key in ("height", "width", "std", "colour_share", "tissue_share", "bright_share")},
        "scan_region": {"framed_images": sum(r["cropped"] for r in rows), "region_share": spread("region_share")},
    }


def _bn_layers(module: nn.Module) -> list[tuple[str, nn.modules.batchnorm._BatchNorm]]:
    return [(n, m) for n, m in module.named_modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


def _bn_state(module: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    return {n: (m.running_mean.detach().clone(), m.running_var.detach().clone()) for n, m in _bn_layers(module)}


@torch.no_grad()
def reestimate_bn(module: nn.Module, batches) -> None:
    """Replace every BatchNorm layer's running statistics with their average over ``batches`` of
    network input (AdaBN).

    Hand-written rather than ``torch.optim.swa_utils.update_bn``: that one puts the whole network in
    training mode, so dropout and stochastic depth (timm's encoders) would alter the activations the
    statistics are measured on; here only the BatchNorm layers are in training mode.
    """
    layers = [m for _, m in _bn_layers(module)]
    if not layers:
        raise CheckpointError(f"{module.__class__.__name__}: has no BatchNorm layers; there are no normalisation statistics to adapt")
    device = next(module.parameters()).device
    momenta = [m.momentum for m in layers]
    module.eval()
    for m in layers:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches, not an exponential one
        m.train()
    try:
        for batch in batches:
            module(batch.to(device))
    finally:
        for m, momentum in zip(layers, momenta):
            m.momentum = momentum
        module.eval()


def bn_shift(before: dict, module: nn.Module) -> dict:
    """How far the site moved each BatchNorm layer's statistics, in the training data's standard
    deviations: |mean change| / sqrt(old variance), averaged over channels; and the log ratio of
    the variances. The first layer sees the scans almost directly: a large shift there means the
    site's scans look unlike the training data to the network."""
    rows = []
    for name, m in _bn_layers(module):
        old_mean, old_var = before[name]
        shift = ((m.running_mean - old_mean).abs() / old_var.clamp_min(1e-5).sqrt()).mean()
        ratio = (m.running_var.clamp_min(1e-5) / old_var.clamp_min(1e-5)).log().abs().mean()
        rows.append((name, float(shift), float(ratio)))
    if not rows:
        return {}
    shifts = np.array([r[1] for r in rows])
    return {
        "layers": len(rows),
        "first_layer": {"name": rows[0][0], "mean_shift_sd": round(rows[0][1], 4), "abs_log_variance_ratio": round(rows[0][2], 4)},
        "median_mean_shift_sd": round(float(np.median(shifts)), 4),
        "max_mean_shift_sd": round(float(shifts.max()), 4),
        "largest": [{"name": n, "mean_shift_sd": round(s, 4)} for n, s, _ in sorted(rows, key=lambda r: -r[1])[:3]],
    }


# --------------------------------------------------------------------------- fine-tuning
def encoder_stages(module: nn.Module) -> list[list[nn.Parameter]]:
    """The encoder's parameters per stage, from the input: smp's own stages where the encoder
    lists them, else the stages of timm's feature extractor (``feature_info``)."""
    encoder = getattr(module, "encoder", None)
    if encoder is None:
        return []
    if hasattr(encoder, "get_stages"):
        return [list(stage.parameters()) for stage in list(encoder.get_stages())[1:]]
    inner = getattr(encoder, "model", None)
    info = getattr(inner, "feature_info", None)
    if info is None:
        return []
    ends = info.module_name()
    named = list(inner.named_parameters())
    stages, start = [], 0
    for end in ends:
        last = max((i for i, (n, _) in enumerate(named) if n.startswith(end + ".")), default=start - 1)
        stages.append([p for _, p in named[start : last + 1]])
        start = last + 1
    return stages


def freeze_stages(module: nn.Module, count: int) -> int:
    """Fix the first ``count`` encoder stages: no gradient, and their BatchNorm layers keep their
    (site-adapted) statistics in training too. Returns the number of parameters frozen."""
    stages = encoder_stages(module)
    if count and not stages:
        raise ConfigError(f"--freeze-encoder {count}: this model's encoder stages are unknown; pass --freeze-encoder 0")
    frozen = {id(p) for stage in stages[:count] for p in stage}
    for p in module.parameters():
        if id(p) in frozen:
            p.requires_grad_(False)
    for _, bn in _bn_layers(module):
        if bn.weight is not None and id(bn.weight) in frozen:
            # The engine calls module.train() every epoch; these layers answer it by staying in eval mode.
            bn.train = types.MethodType(lambda self, mode=True: nn.Module.train(self, False), bn)
            bn.eval()
    return sum(p.numel() for p in module.parameters() if id(p) in frozen)


def _finetune(
    loaded,
    finetune: list,
    early_stop: list,
    out: Path,
    *,
    freeze_encoder,
    epochs,
    patience,
    lr,
    batch_size,
    seed,
    quiet,
    cache=None,
    adapter=None,
    loss=None,
    max_minutes=None,
) -> dict:
    """Fine-tune ``loaded.module`` in place on ``finetune``, early-stopped on ``early_stop``, into the run folder ``out``.
    ``cache`` (masks other than the records' files), ``adapter`` (cfg -> TaskAdapter) and ``loss`` (its name, as recorded) serve self-training."""
    from torch.utils.data import RandomSampler

    from busai.config import TrainConfig
    from busai.data.dataset import BusDataset, ImageCache
    from busai.data.loading import train_val_loaders
    from busai.engine import fit
    from busai.tasks import adapter_for

    parent_train = loaded.config.get("train") or {}
    cfg = TrainConfig(
        task="segmentation",
        model=loaded.spec["name"],
        encoder=loaded.spec.get("encoder"),
        weights=loaded.source,
        image_size=loaded.image_size,
        lr=lr,
        batch_size=batch_size,
        epochs=epochs,
        patience=patience,
        max_minutes=max_minutes,
        loss=loss or parent_train.get("loss") or "dice",
        augment="paper",
        select="lesion_dice",
        color="gray" if loaded.grayscale else "rgb",
        seed=seed,
        device=str(loaded.device.type),
    )
    module = loaded.module
    frozen = freeze_stages(module, freeze_encoder)
    cache = cache if cache is not None else ImageCache()
    train_ds = BusDataset.for_model(finetune, loaded, augment=cfg.augment, cache=cache, seed=seed)
    val_ds = BusDataset.for_model(early_stop, loaded, cache=cache, seed=seed)
    sampler = RandomSampler(train_ds, generator=torch.Generator().manual_seed(seed))
    train_loader, val_loader = train_val_loaders(train_ds, val_ds, sampler, batch_size, device=cfg.device)
    metadata = {"busai": json.dumps({"model_spec": loaded.spec, "image_size": loaded.image_size})}
    (out).mkdir(parents=True, exist_ok=True)
    _write_config(loaded, out, cfg.to_dict())
    result = fit(module, (adapter or adapter_for)(cfg), train_loader, val_loader, cfg, out, quiet=quiet, weights_metadata=metadata)
    return {"config": cfg.to_dict(), "frozen_encoder_stages": freeze_encoder, "frozen_parameters": frozen, **result.to_dict()}


# --------------------------------------------------------------------------- self-training on pseudo-labels
@dataclasses.dataclass(frozen=True)
class PseudoRule:
    """When a scan's prediction becomes a training mask (see :func:`pseudo_label`)."""

    agreement: float = PSEUDO_AGREEMENT  # least Dice between the masks of the scan and of its mirror image
    confidence: float = PSEUDO_CONFIDENCE  # least mean |2p - 1| over the predicted lesion
    band: float = PSEUDO_BAND  # pixels with |p - 0.5| < band are ignored by the loss

    def __post_init__(self) -> None:
        if not 0.0 <= self.agreement <= 1.0:
            raise ConfigError(f"--pseudo-agreement {self.agreement}: must be a Dice in [0, 1], e.g. {PSEUDO_AGREEMENT}")
        if not 0.0 <= self.confidence <= 1.0:
            raise ConfigError(f"--pseudo-confidence {self.confidence}: must be in [0, 1] (mean |2p - 1| over the lesion), e.g. {PSEUDO_CONFIDENCE}")
        if not 0.0 <= self.band < 0.5:
            raise ConfigError(f"--pseudo-band {self.band}: must be in [0, 0.5) (pixels within it of 0.5 are ignored), e.g. {PSEUDO_BAND}")

    def to_dict(self) -> dict:
        return {
            "min_flip_agreement": self.agreement,
            "min_confidence": self.confidence,
            "ignored_probabilities": [round(0.5 - self.band, 4), round(0.5 + self.band, 4)],
            "empty_scans": f"kept only when every pixel is at most {0.5 - self.band:g}",
        }


@dataclasses.dataclass
class PseudoLabel:
    mask: np.ndarray  # uint8: 1 lesion, 0 background, IGNORE uncertain
    agreement: float  # Dice between the masks (p >= 0.5) of the scan and of its mirror image; 1.0 when both are empty
    confidence: float  # mean |2p - 1| over the predicted lesion; 1 - 2 max(p) when none is predicted
    kept: bool
    reason: str  # "lesion", "empty", or why the scan was skipped


def pseudo_label(prob: np.ndarray, mirrored: np.ndarray, rule: PseudoRule) -> PseudoLabel:
    """The pseudo-label of one scan from its lesion probability map ``prob`` and that of its mirror
    image flipped back (``mirrored``); ``p`` is their mean (what ``predict --tta`` gives).

    Kept with a lesion when the two masks agree (Dice >= ``rule.agreement``) and the predicted
    lesion (``p >= 0.5``) has mean |2p - 1| >= ``rule.confidence``; kept empty when neither map has
    a lesion pixel and no pixel is uncertain (every ``p <= 0.5 - band``). The mask: 1 where
    ``p >= 0.5 + band``, 0 where ``p <= 0.5 - band``, :data:`IGNORE` between.
    """
    prob, mirrored = np.asarray(prob, dtype=np.float64), np.asarray(mirrored, dtype=np.float64)
    a, b = prob >= 0.5, mirrored >= 0.5
    total = int(a.sum() + b.sum())
    agreement = 1.0 if total == 0 else float(2 * (a & b).sum() / total)
    p = (prob + mirrored) / 2
    mask = np.where(p >= 0.5 + rule.band, 1, np.where(p <= 0.5 - rule.band, 0, IGNORE)).astype(np.uint8)
    region = p >= 0.5
    if region.any():
        confidence = float(np.abs(2 * p[region] - 1).mean())
        reason = "mirror image disagrees" if agreement < rule.agreement else "unconfident lesion" if confidence < rule.confidence else "lesion"
    else:
        confidence = float(1 - 2 * p.max())
        reason = "mirror image disagrees" if agreement < rule.agreement else "uncertain empty" if (mask == IGNORE).any() else "empty"
    return PseudoLabel(mask, agreement, confidence, reason in ("lesion", "empty"), reason)


class _PseudoLabelCache:
    """The training dataset's image cache, with the pseudo-labels as masks (the records carry no mask files)."""

    def __init__(self) -> None:
        from busai.data.dataset import ImageCache

        self.images, self.masks = ImageCache(), {}

    def get(self, record, size: int) -> tuple[np.ndarray, np.ndarray]:
        image, empty = self.images.get(record, size)
        return image, self.masks.get(str(record.image), empty)

    def warm(self, records, size: int, *, progress: bool = False) -> None:
        self.images.warm(records, size, progress=progress)


def _mirror_predictions(loaded, records: list, cache, batch_size: int):
    """Yield (record, p, p of the mirror image flipped back) per record: two (S, S) probability maps."""
    from busai.data.dataset import normalise, to_gray_rgb
    from busai.inference import predict_tensor

    for start in range(0, len(records), batch_size):
        part = records[start : start + batch_size]
        images = [cache.get(r, loaded.image_size)[0] for r in part]
        x = torch.stack([normalise(to_gray_rgb(i) if loaded.grayscale else i, loaded.mean, loaded.std) for i in images])
        probs = predict_tensor(loaded, torch.cat([x, x.flip(-1)]))
        for i, record in enumerate(part):
            yield record, probs[i].numpy(), probs[len(part) + i].flip(-1).numpy()


def _ignoring_adapter(cfg):
    """The segmentation adapter's scores, on a loss that leaves out the pseudo-labels' uncertain pixels.

    smp's Dice and BCE take an ignore value; Dice + BCE rather than the parent's loss because BCE is
    what teaches the confidently empty scans their empty masks (batch Dice barely sees them)."""
    from segmentation_models_pytorch.losses import DiceLoss, SoftBCEWithLogitsLoss

    from busai.engine import TaskAdapter
    from busai.tasks import segmentation_adapter

    base = segmentation_adapter(dataclasses.replace(cfg, loss="dice"))
    dice, bce = DiceLoss(mode="binary", from_logits=True, ignore_index=IGNORE), SoftBCEWithLogitsLoss(ignore_index=IGNORE)

    def loss(out: torch.Tensor, batch: dict) -> torch.Tensor:
        return dice(out, batch["mask"]) + bce(out, batch["mask"])

    def score(out: torch.Tensor, masks: torch.Tensor) -> dict[str, float]:
        known = masks != IGNORE  # an ignored pixel counts on neither side
        return base.score(out.masked_fill(~known, -1e4), masks * known)

    return TaskAdapter(loss=loss, target_key="mask", score=score)


def self_train(
    loaded, plan: SitePlan, out: Path, rule: PseudoRule, statistics_only: dict | None, *, n_boot: int, seed: int, batch_size: int, quiet: bool, **fit_options
):
    """Self-train the re-normalised ``loaded`` on confident pseudo-labels of the pool (never the
    hold-out, whose scans are not in it), and keep the result only if it pays (module docstring).

    Returns (the kept model, whether it is the self-trained one, its held-out scores or None, the report's section).
    """
    from busai.data.splits import make_splits
    from busai.runs import load_model

    # The labels of the pool's scans are dropped: self-training sees the scans alone.
    pool = [dataclasses.replace(r, masks=(), label=None) for r in plan.pool]
    cache = _PseudoLabelCache()
    labels = {r.key: pseudo_label(p, m, rule) for r, p, m in _mirror_predictions(loaded, pool, cache, max(batch_size, 16))}
    kept = [dataclasses.replace(r, label="benign" if labels[r.key].reason == "lesion" else "normal") for r in pool if labels[r.key].kept]
    for r in kept:
        mask = labels[r.key].mask
        mask.setflags(write=False)
        cache.masks[str(r.image)] = mask
    section: dict = {
        "rule": rule.to_dict(),
        "scans": len(pool),
        "used": len(kept),
        "used_with_lesion": sum(r.label == "benign" for r in kept),
        "skipped": dict(Counter(pl.reason for pl in labels.values() if not pl.kept)),
        "ignored_pixel_share": round(float(np.mean([(labels[r.key].mask == IGNORE).mean() for r in kept])), 4) if kept else None,
        "flip_agreement": {"before": round(float(np.mean([pl.agreement for pl in labels.values()])), 4), "after": None},
        "kept": False,
        "fine_tuning": None,
        "lists": {"pseudo_labelled": [r.key for r in kept], "pseudo_skipped": [r.key for r in pool if not labels[r.key].kept]},
    }
    _say(quiet, f"pseudo-labels: {len(kept)} of {len(pool)} scans confident and consistent")
    finetune, early_stop = [], []
    if len(kept) >= MIN_LABELLED:
        part = make_splits(kept, [], val=EARLY_STOP_SHARE, test=0.0, seed=seed)
        by_key = {r.key: r for r in kept}
        finetune, early_stop = [by_key[k] for k in part["train"]], [by_key[k] for k in part["val"]]
    if not finetune or not early_stop:
        section["decision"] = (
            f"not self-trained: {len(kept)} confident scans (of {MIN_LABELLED} at least, from more than one patient) are too few "
            "to fine-tune and early-stop on; the statistics alone are kept"
        )
        return loaded, False, None, section

    # The choice is made on the split file's val scans where it has some, so the held-out scores stay an independent check.
    choose_on = plan.val or plan.holdout
    plan.chosen_on = list(plan.val)
    section["chosen_on"] = f"the split file's {len(plan.val)} labelled val scans" if plan.val else f"the {len(plan.holdout)} held-out scans"
    statistics_only = _score(loaded, plan.val, n_boot, seed) if plan.val else statistics_only
    statistics_module = copy.deepcopy(loaded.module)
    section["fine_tuning"] = _finetune(
        loaded, finetune, early_stop, out, cache=cache, adapter=_ignoring_adapter, loss="dice_bce", seed=seed, batch_size=batch_size, quiet=quiet, **fit_options
    )
    section["lists"].update(pseudo_finetune=[r.key for r in finetune], pseudo_early_stop=[r.key for r in early_stop])
    trained = load_model(out, device=str(loaded.device))
    after = [pseudo_label(p, m, rule).agreement for _, p, m in _mirror_predictions(trained, pool, cache, max(batch_size, 16))]
    section["flip_agreement"]["after"] = round(float(np.mean(after)), 4)
    scores = _score(trained, plan.holdout, n_boot, seed) if plan.holdout else None
    if not choose_on:
        section["kept"] = True
        section["decision"] = "kept: no labelled held-out scans to check it on, and --pseudo-label asked for it (flip agreement is a proxy, not a score)"
        return trained, True, None, section
    chosen = _score(trained, plan.val, n_boot, seed) if plan.val else scores
    section["kept"], compared = _pays(statistics_only, chosen)
    verdict = "kept" if section["kept"] else "discarded"
    where = "val" if plan.val else "held-out"
    section["decision"] = f"{verdict}: {where} {compared} (self-trained vs the statistics alone)"
    if section["kept"]:
        return trained, True, scores, section
    # Back to the statistics alone: the folder must not look like the discarded fine-tuning's run.
    for name in (runs.LAST_CHECKPOINT, runs.HISTORY, runs.FIT, runs.PROGRESS):
        (out / name).unlink(missing_ok=True)
    kept_model = dataclasses.replace(loaded, module=statistics_module)
    _write_config(kept_model, out, None)
    return kept_model, False, scores, section


def _pays(before: dict, after: dict) -> tuple[bool, str]:
    """Whether self-training is kept: no lower Dice over the lesion scans *and* no more normal scans
    outlined than the statistics alone. A lesion-only score cannot see a model that learns to call
    the site's normal tissue lesion, the way re-estimated statistics already tend to."""
    compared, pays = [], True
    lesion_before, lesion_after = before["lesion_dice"]["value"], after["lesion_dice"]["value"]
    if lesion_before is not None:
        pays &= lesion_after >= lesion_before
        compared.append(f"lesion_dice {lesion_after:.4f} vs {lesion_before:.4f}")
    d_before, d_after = before["detection"], after["detection"]
    if d_before["lesion_free_images"]:
        pays &= d_after["false_alarms"] <= d_before["false_alarms"]
        compared.append(f"normals outlined {d_after['false_alarms']} vs {d_before['false_alarms']} of {d_before['lesion_free_images']}")
    return pays, ", ".join(compared)


# --------------------------------------------------------------------------- scores
def _score(loaded, records: list, n_boot: int, seed: int) -> dict:
    from busai.evaluation import evaluate_segmentation

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        summary, _ = evaluate_segmentation(loaded, records, n_boot=n_boot, seed=seed, groups=[_group(r) for r in records])
    return summary


def _compact(summary: dict | None) -> dict | None:
    if summary is None:
        return None
    return {
        "lesion_dice": summary["lesion_dice"],
        "dice": summary["dice"]["mean"],
        "iou": summary["iou"]["mean"],
        "detection": summary["detection"],
        "images": summary["n_images"],
        "ci": summary["ci"],
    }


def _paired_change(before: dict, after: dict, records: list, n_boot: int, seed: int) -> dict:
    """After minus before, per held-out lesion scan, with a CI over patients (the same scans twice: paired)."""
    from busai.metrics import mean_with_ci

    rows = [(b["dice"], a["dice"], _group(r)) for b, a, r in zip(before["per_image"], after["per_image"], records) if b["lesion_px"] > 0]
    change = mean_with_ci([a - b for b, a, _ in rows], [g for *_, g in rows], n_boot=n_boot, seed=seed)
    return {"lesion_dice": change, "missed_lesions": after["detection"]["missed_lesions"] - before["detection"]["missed_lesions"]}


# --------------------------------------------------------------------------- writing
def _write_config(loaded, out: Path, train: dict | None) -> None:
    from busai.outputs import atomic_write_text

    config = {
        "command": None,
        "train": train or {},
        "model_spec": loaded.spec,
        "preprocessing": {"image_size": loaded.image_size, "mean": list(loaded.mean), "std": list(loaded.std), "color": "gray" if loaded.grayscale else "rgb"},
        "weight_source": f"adapted from {loaded.source}",
    }
    atomic_write_text(out / runs.CONFIG, json.dumps(config, indent=2, default=str) + "\n")


def _write_run(loaded, parent_dir: Path, out: Path, report: dict, spec, fingerprint: str, plan: SitePlan, command: str | None) -> None:
    """config.json (what busai.load needs, plus the parent and the site) and training_data.json."""
    from busai.outputs import atomic_write_text, output_dir
    from busai.provenance import TRAINING_DATA, record_hashes, training_data_with_content

    output_dir(out)
    config_path = out / runs.CONFIG
    config = json.loads(config_path.read_text()) if config_path.exists() else {}
    if not config:
        _write_config(loaded, out, None)
        config = json.loads(config_path.read_text())
    config.update(
        command=command,
        adapted_from={"source": report["parent"]["source"], "folder": str(parent_dir), "weight_source": loaded.config.get("weight_source")},
        site={"data": str(spec), "fingerprint": fingerprint, "layout": report["site"]["layout"]},
    )
    atomic_write_text(config_path, json.dumps(config, indent=2, default=str) + "\n")
    seen = list(training_data_with_content(parent_dir) or [])
    # Everything adapt used counts as seen: the statistics pool (labelled or not) as train, the early-stop
    # scans as val; with their content hashes, so a copy of a site scan under another name is refused too.
    used = plan.pool + plan.early_stop + plan.chosen_on
    hashes = record_hashes(used)
    seen.append(
        {
            "name": spec.name,
            "fingerprint": fingerprint,
            "train": [r.relpath for r in plan.pool],
            "val": [r.relpath for r in plan.early_stop + plan.chosen_on],
            "content": {r.relpath: hashes[r.key] for r in used if r.key in hashes},
        }
    )
    body = {"source": f"busai adapt of {report['parent']['source']} to {spec}", "datasets": seen}
    atomic_write_text(out / TRAINING_DATA, json.dumps(body, indent=2) + "\n")


def write_report(out: Path, report: dict) -> None:
    from busai.outputs import atomic_write_text

    atomic_write_text(out / ADAPT_JSON, json.dumps(report, indent=2, default=str) + "\n")
    atomic_write_text(out / ADAPT_MD, report_markdown(report))


def _estimate(value: dict | None, digits: int = 3) -> str:
    if not value or value.get("value") is None:
        return "–"
    low, high = value.get("ci_low"), value.get("ci_high")
    ci = f" ({low:.{digits}f} to {high:.{digits}f})" if low is not None and high is not None else ""
    return f"{value['value']:.{digits}f}{ci}"


def report_markdown(report: dict) -> str:
    site, scores = report["site"], report.get("scores") or {}
    lines = [
        f"# Adapted to {site['data']}",
        "",
        f"Parent model: `{report['parent']['source']}`. Mode: **{report['mode']}**. Command: `{report.get('command') or 'busai.adapt(...)'}`",
        "",
        f"Site: {site['images']} scans ({site['layout']} layout); adapted on {site['adaptation_images']}, "
        f"held out {site['holdout_images']} (hold-out: {site['holdout_from']}), left out {site['left_out_images']} (patients of held-out scans).",
    ]
    if report.get("fine_tuning"):
        ft = report["fine_tuning"]
        lines += [
            "",
            f"Fine-tuned on {site['finetune_images']} labelled scans, early-stopped on {site['early_stop_images']}: "
            f"{ft['epochs_run']} epochs, best epoch {ft['best_epoch']} ({ft['stop_reason']}), {ft['frozen_encoder_stages']} encoder stages frozen.",
        ]
    pseudo = report.get("pseudo_label")
    if pseudo:
        rule, skipped = pseudo["rule"], pseudo["skipped"]
        flips = pseudo["flip_agreement"]
        lines += [
            "",
            "## Self-training on pseudo-labels",
            "",
            f"Pseudo-labelled {pseudo['used']} of {pseudo['scans']} scans ({pseudo['used_with_lesion']} with a lesion, the rest confidently empty); "
            f"skipped as unconfident: {', '.join(f'{v} ({k})' for k, v in skipped.items()) or 'none'}.",
            f"Rule: the masks of a scan and of its mirror image agree (Dice >= {rule['min_flip_agreement']}), mean |2p - 1| over the lesion "
            f">= {rule['min_confidence']}; pixels with p between {rule['ignored_probabilities'][0]} and {rule['ignored_probabilities'][1]} "
            f"ignored by the loss; empty scans {rule['empty_scans']}.",
            f"Mean flip agreement over the scans: {flips['before']:.3f} before"
            + (f", {flips['after']:.3f} after self-training (a proxy: training on mirrored scans raises it by itself)." if flips["after"] is not None else "."),
            f"Decision: {pseudo['decision']}.",
        ]
    lines += ["", "## Scores on the site's held-out labelled scans", ""]
    if scores.get("before") is None:
        lines.append("No held-out labelled scans: nothing to score. Label some of the site's scans (masks) to see the change.")
    else:
        lines += ["| Model | Dice, lesion scans (95% CI) | Dice, all scans | Lesions missed | False alarms |", "|---|---|---|---|---|"]
        rows = (
            ("before", "before (parent)"),
            ("statistics_only", "statistics re-estimated"),
            ("self_trained", "self-trained on pseudo-labels"),
            ("after", "adapted (kept)"),
        )
        for key, name in rows:
            s = scores.get(key)
            if s is None:
                continue
            d = s["detection"]
            lines.append(
                f"| {name} | {_estimate(s['lesion_dice'])} | {_estimate(s['dice'])} | {d['missed_lesions']} of {d['lesion_images']} | "
                f"{d['false_alarms']} of {d['lesion_free_images']} |"
            )
        change = scores.get("change") or {}
        lines += [
            "",
            f"Change in Dice over lesion scans (paired, CI over patients): {_estimate(change.get('lesion_dice'))}; lesions missed: {change.get('missed_lesions', 0):+d}.",
        ]
    stats, shift = report["site_statistics"], report.get("bn_shift") or {}
    gate = stats["input_gate"]
    lines += [
        "",
        "## Do the site's scans look like the training data?",
        "",
        f"Input gate on {stats['images_measured']} scans: {gate['ok']} pass"
        + (f"; flagged: {', '.join(f'{k} {v}' for k, v in gate['flagged'].items())}" if gate["flagged"] else "")
        + f". Scanner frames found around the scan: {stats['scan_region']['framed_images']}.",
        "",
        "| Statistic | min | median | max | gate |",
        "|---|---|---|---|---|",
    ]
    for key in ("std", "colour_share", "tissue_share", "bright_share"):
        s = stats["statistics"][key]
        lines.append(f"| {key} | {s['min']:g} | {s['median']:g} | {s['max']:g} | {stats['gate_limits'][key]} |")
    if shift:
        first = shift["first_layer"]
        lines += [
            "",
            f"Shift of the network's normalisation statistics (in standard deviations of the training data's): first layer "
            f"{first['mean_shift_sd']:.2f}, median over {shift['layers']} layers {shift['median_mean_shift_sd']:.2f}, largest {shift['max_mean_shift_sd']:.2f}. "
            "Near 0: the network sees the site's scans as it saw its training scans; the larger, the more they differ to it, and the less "
            "its answers before adaptation are to be trusted.",
        ]
    return "\n".join(lines) + "\n"


def _say(quiet: bool, text: str) -> None:
    if not quiet:
        print(text, file=sys.stderr)
