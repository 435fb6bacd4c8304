"""Score any model on any labelled data: metrics with bootstrap CIs into metrics.json, plus figures.

A model is a run folder, ``release`` (both packaged models), a release folder or an exported
``.onnx`` file; the data is one or more datasets (``NAME=PATH``), scored on a split of a split
file or, with ``all_images``, every image (external validation on a dataset the model never saw).
Each dataset is scored on its own (``NAME/split``) and, with several, pooled (``split``). The
model's own training images are refused (:mod:`busai.provenance`).

Segmentation is scored at each image's own resolution (the probability map is resized back to
the original mask), not at the network's input size, so the numbers describe the masks a user
gets. Both pooled (all pixels of the split) and mean-over-images values are reported; the
paper's Table 4 does not say which it used — the README discusses the comparison.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import torch

from busai.config import N_BOOT
from busai import SPLIT_NAMES
from busai.calibration import expected_calibration_error, reliability_bins, reliability_figure
from busai.device import default_path_name
from busai.errors import ConfigError, option
from busai.inference import predict_records, upsample_probability  # noqa: F401  (evaluation.predict_records kept for callers)
from busai.labels import class_names, scoring_map
from busai.outputs import output_dir
from busai.runs import DIAGNOSIS_TASK, METRICS, TASKS, LoadedModel, model_folder, model_label, read_metrics, scores_dir, write_json

log = logging.getLogger(__name__)


def score_segmentation_image(record, prob: torch.Tensor) -> tuple[np.ndarray, np.ndarray, dict, dict]:
    """One image scored at its own resolution: (probability map, mask, pixel counts, its per-image row)."""
    from busai.data.discover import read_mask
    from busai.metrics import image_overlap, segmentation_counts

    mask = read_mask(record)
    full = upsample_probability(prob, mask.shape)
    counts = segmentation_counts(full, mask)
    overlap = image_overlap(counts)
    row = {
        "image": record.key,
        "label": record.label,
        "dice": round(overlap["dice"], 5),
        "iou": round(overlap["iou"], 5),
        "lesion_px": counts["tp"] + counts["fn"],
        "predicted_px": counts["tp"] + counts["fp"],
        "max_probability": round(float(full.max()), 5),
    }
    return full, mask, counts, row


def evaluate_segmentation(
    loaded: LoadedModel, records, *, n_boot: int, seed: int, tta: bool = False, groups=None, progress: str | None = None, precision: str = "auto"
) -> tuple[dict, list]:
    from busai.metrics import summarise_segmentation

    per_image, samples, scores = [], [], []
    for record, prob in predict_records(loaded, records, tta=tta, progress=progress, precision=precision):
        full, mask, counts, row = score_segmentation_image(record, prob)
        per_image.append(counts)
        samples.append((record, full, mask, counts))
        scores.append(row)
    summary = summarise_segmentation(per_image, n_boot=n_boot, seed=seed, groups=groups)
    summary["lesion_dice"] = _lesion_dice(scores, groups, n_boot, seed)
    summary["per_image"] = scores  # which images fail, and how: a missed lesion has predicted_px 0 or no overlap
    return summary, samples


def evaluate_classification(
    loaded: LoadedModel, records, *, n_boot: int, seed: int, tta: bool = False, groups=None, progress: str | None = None, precision: str = "auto"
) -> tuple[dict, list]:
    rows = [(record, prob.numpy()) for record, prob in predict_records(loaded, records, tta=tta, progress=progress, precision=precision)]
    report = classification_scores(loaded, rows, n_boot=n_boot, seed=seed, groups=groups)
    report["temperature"] = loaded.temperature
    return report, rows


def evaluate_diagnosis(
    seg: LoadedModel,
    cls: LoadedModel,
    records,
    *,
    n_boot: int,
    seed: int,
    tta: bool = False,
    groups=None,
    progress: str | None = None,
    precision: str = "auto",
) -> tuple[dict, list]:
    """The diagnosis ``busai predict`` gives (the classifier fused with the segmenter's lesion
    evidence, :mod:`busai.diagnosis`) scored like a classifier: each scan through the same pipeline."""
    from busai.inference import progress_bar
    from busai.pipeline import diagnosis_fusion, predict_from_records

    fusion = diagnosis_fusion({"segmentation": seg, "classification": cls})
    rows = []
    with progress_bar(progress, total=len(records)) as advance:
        for record, pred in predict_from_records([seg, cls], records, gate=False, tta=tta, precision=precision):
            rows.append((record, np.array(list(pred.probabilities.values()), dtype=np.float32)))
            advance(1)
    report = classification_scores(cls, rows, n_boot=n_boot, seed=seed, groups=groups)
    report["fusion"] = fusion.to_dict() if fusion is not None else None
    return report, rows


def classification_scores(loaded: LoadedModel, rows: list, *, n_boot: int, seed: int, groups=None) -> dict:
    """Scores of (record, probabilities) rows over ``loaded``'s classes, with CIs, ECE and per-image answers."""
    from busai.metrics import classification_report_dict, malignant_vs_benign_auc

    classes = class_names(loaded.spec)
    index = scoring_map(loaded.config, classes)
    y_true = np.array([index[r.label] for r, _ in rows])
    probs = np.stack([p for _, p in rows])
    report = classification_report_dict(y_true, probs, class_names=classes, n_boot=n_boot, seed=seed, groups=groups)
    report["malignant_vs_benign_auc"] = malignant_vs_benign_auc(y_true, probs, n_boot=n_boot, seed=seed, groups=groups, class_names=classes)
    report["ece"] = expected_calibration_error(probs, y_true)
    report["reliability"] = reliability_bins(probs, y_true)
    report["predictions"] = [
        {
            "image": r.key,
            "label": classes[t],
            **({"data_label": r.label} if r.label != classes[t] else {}),
            "predicted": classes[int(p.argmax())],
            **{f"p_{c}": round(float(p[i]), 5) for i, c in enumerate(classes)},
        }
        for (r, p), t in zip(rows, y_true)
    ]
    return report


def _lesion_dice(rows: list[dict], groups, n_boot: int, seed: int) -> dict:
    """Mean Dice over the lesion scans alone (with its CI): on a dataset of mostly normal scans the
    all-image mean is flattered by every correctly empty mask."""
    from busai.metrics import mean_with_ci

    lesion = [i for i, row in enumerate(rows) if row["lesion_px"] > 0]
    picked = None if groups is None else [groups[i] for i in lesion]
    return mean_with_ci([rows[i]["dice"] for i in lesion], picked, n_boot=n_boot, seed=seed)


def evaluate_run(
    run_dir: str | Path,
    data_dir,
    splits_file: str | Path,
    split: str,
    *,
    n_boot: int = N_BOOT,
    seed: int = 0,
    figures: bool = True,
    tta: bool = False,
    command: str | None = None,
    device: str = "cpu",
) -> dict:
    """Score a run's best checkpoint on ``split`` of one dataset; merged into ``RUN_DIR/metrics.json``.

    With ``tta`` (flip test-time augmentation, as ``busai predict --tta``) the result is stored
    under ``<split>_tta`` beside the plain one, and its figures are named the same way.
    """
    results = evaluate_model(
        run_dir, data_dir, splits_file=splits_file, split_names=[split], n_boot=n_boot, seed=seed, device=device, figures=figures, tta=tta, command=command
    )
    (by_key,) = results.values()
    wanted = f"{split}_tta" if tta else split
    return by_key.get(wanted) or next(iter(by_key.values()))


def resolve_models(model: str | Path, device: str = "cpu") -> list[tuple[object, Path | None, Path | None]]:
    """(loaded model, folder that records its training data or None, its run folder or None) for
    each model ``model`` names: a run folder (both tasks of a multitask run), ``release`` (both
    packaged models), a release or saved folder, or an ONNX file or folder (:class:`busai.runs.RunFolder`)."""
    if str(model) == "release":
        folders = [model_folder("release", task) for task in TASKS]
        return [(folder.load(task=task, device=device), folder.path, None) for folder, task in zip(folders, TASKS)]
    folder = model_folder(model, not_found="not found; pass a run folder, 'release', a release folder or an exported .onnx file")
    if folder.kind == "onnx":
        return [(folder.load(device=device), None, None)]
    run = folder.path if folder.kind == "run" else None
    return [(folder.load(task=task, device=device), folder.path, run) for task in folder.tasks()]  # a multitask network is scored on both tasks


def evaluate_model(
    model: str | Path,
    data,
    *,
    splits_file: str | Path | None = None,
    split_names=("test",),
    all_images: bool = False,
    out: str | Path | None = None,
    n_boot: int = N_BOOT,
    seed: int = 0,
    figures: bool = True,
    tta: bool = False,
    command: str | None = None,
    device: str = "cpu",
    progress: bool = False,
    precision: str = "auto",
) -> dict[str, dict[str, dict]]:
    """Score ``model`` on ``data`` (see the module docstring); returns {task: {key: result}}.
    ``progress`` shows a bar per scored set on stderr when it is a terminal. ``precision``: ``auto``
    scores what ``busai predict`` gives on this machine (bf16 where the CPU computes it natively),
    ``fp32`` the reference every machine reproduces (the release's committed scores).

    Results go into ``RUN_DIR/metrics.json`` for a run folder (unless ``out`` is given), else into
    ``OUT/<task>/metrics.json``; keys are ``split`` for one unnamed dataset, ``NAME/split`` per
    named dataset plus the pooled ``split`` for several, and ``.../all`` with ``all_images``.
    """
    from busai.data.sources import parse_data_specs
    from busai.provenance import check_unseen, dataset_fingerprints
    from busai.device import best_threads

    specs = parse_data_specs(data)
    if not specs:
        raise ConfigError(f"pass the data to score with {option('data', 'PATH')} (or {option('data', 'NAME=PATH')}, repeatable)")
    if all_images == (splits_file is not None):
        raise ConfigError(
            f"say which images to score: {option('splits_file', 'FILE', '--splits')} with {option('split_names', 'NAME', '--split')}, "
            f"or {option('all_images', flag='--all')} for every image of the data"
        )
    for split in split_names:
        if split not in SPLIT_NAMES:
            raise ConfigError(f"split '{split}': unknown; choose train, val or test")
    best_threads()
    models = resolve_models(model, device)
    if out is None and any(run is None for _, _, run in models):
        raise ConfigError(f"{model}: is not a run folder, so its scores need a place: pass {option('out', 'DIR')}")
    for loaded, _, run_dir in models:  # a read-only destination or a damaged metrics.json fails before any scoring
        dest = Path(out) / loaded.task if out is not None else scores_dir(run_dir, loaded.spec, loaded.task)
        output_dir(dest, option="--out" if out is not None else "run folder")
        read_metrics(dest)
    selections = _selections(specs, splits_file, split_names, all_images)
    fingerprints = dataset_fingerprints(specs)
    results: dict[str, dict[str, dict]] = {}
    for loaded, provenance_dir, run_dir in models:
        if provenance_dir is not None:
            for role, records, *_ in selections:
                check_unseen(provenance_dir, {role: records}, fingerprints, what="scoring")
        dest = Path(out) / loaded.task if out is not None else scores_dir(run_dir, loaded.spec, loaded.task)
        results[loaded.task] = _score_selections(
            loaded, selections, dest, n_boot=n_boot, seed=seed, figures=figures, tta=tta, command=command, progress=progress, precision=precision
        )
    diagnosis = _diagnosis_models(models)
    if diagnosis is not None:  # what predict answers by default: scored beside the classifier alone
        seg, cls, run_dir = diagnosis
        dest = Path(out) / DIAGNOSIS_TASK if out is not None else run_dir / DIAGNOSIS_TASK
        output_dir(dest, option="--out" if out is not None else "run folder")
        results[DIAGNOSIS_TASK] = _score_selections(
            cls, selections, dest, n_boot=n_boot, seed=seed, figures=figures, tta=tta, command=command, progress=progress, segmenter=seg, precision=precision
        )
    return results


def _diagnosis_models(models) -> tuple | None:
    """(segmenter, classifier, run folder) when the classifier carries a fusion for this segmenter, else None."""
    from busai.pipeline import diagnosis_fusion

    by_task = {loaded.task: (loaded, run) for loaded, _, run in models}
    if "segmentation" not in by_task or "classification" not in by_task:
        return None
    (seg, _), (cls, run) = by_task["segmentation"], by_task["classification"]
    if diagnosis_fusion({"segmentation": seg, "classification": cls}) is None:
        return None
    return seg, cls, run


def _selections(specs, splits_file, split_names, all_images) -> list[tuple[str, list, list, str, dict]]:
    """What to score: (role, records, their CI groups, key, images skipped with the reason) per
    dataset, plus pooled entries."""
    out = []
    if all_images:
        from busai.data.audit import audit_dataset, unusable_images
        from busai.data.sources import read_records

        for spec in specs:
            records = read_records([spec])
            report = audit_dataset(spec)
            skipped = unusable_images(report.problems, records)
            if skipped:
                log.info(
                    "%d images of %s cannot be scored and are left out (listed under 'skipped'): %s", len(skipped), spec.path, next(iter(skipped.values()))
                )
            kept = [r for r in records if r.key not in skipped]
            out.append(("all", kept, _groups_without_split(report, kept), f"{spec.name}/all" if spec.name else "all", skipped))
        return out
    from busai.data.splits import duplicate_groups, load_split_records, read_splits

    splits = read_splits(splits_file)
    for split in split_names:
        records = load_split_records(specs, splits, split)
        if not records:
            raise ConfigError(f"{splits_file}: split '{split}' is empty for the given data; nothing to evaluate")
        groups = duplicate_groups(splits, [r.key for r in records])
        names = list(dict.fromkeys(r.dataset for r in records))
        for name in names:
            idx = [i for i, r in enumerate(records) if r.dataset == name]
            out.append((split, [records[i] for i in idx], [groups[i] for i in idx], f"{name}/{split}" if name else split, {}))
        if len(names) > 1:
            out.append((split, records, groups, split, {}))
    return out


def _groups_without_split(report, records) -> list[str]:
    """CI groups for scoring every image of a dataset: its duplicate groups (from an audit) merged
    with its patient groups, so near-identical frames count as one observation."""
    from busai.data.splits import _merge_groups

    patients: dict[str, list[str]] = {}
    for r in records:
        if r.group is not None:
            patients.setdefault(r.group, []).append(r.key)
    merged = _merge_groups(report.duplicate_groups + list(patients.values()))
    group_of = {k: f"group {i}" for i, g in enumerate(merged) for k in g}
    return [group_of.get(r.key, r.key) for r in records]


def _score_selections(loaded, selections, dest: Path, segmenter=None, **options) -> dict[str, dict]:
    # Seeded for repeatable scores, without leaving the caller's global random state changed.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(options["seed"])
        return _score_seeded(loaded, selections, dest, segmenter=segmenter, **options)


def _score_seeded(
    loaded,
    selections,
    dest: Path,
    *,
    n_boot: int,
    seed: int,
    figures: bool,
    tta: bool,
    command: str | None,
    progress: bool = False,
    segmenter=None,
    precision: str = "auto",
) -> dict[str, dict]:
    """Score ``loaded`` on each selection; with ``segmenter``, the diagnosis of the pair (``loaded`` the classifier)."""
    evaluate = evaluate_segmentation if loaded.task == "segmentation" else evaluate_classification
    task = loaded.task
    if segmenter is not None:
        task = DIAGNOSIS_TASK

        def evaluate(cls, records, **options):
            return evaluate_diagnosis(segmenter, cls, records, **options)

    results = {}
    for role, records, groups, key, skipped in selections:
        if loaded.task == "segmentation":
            maskless = [r for r in records if not r.segmentable]
            if maskless:
                raise ConfigError(
                    f"{maskless[0].image}: a {maskless[0].label} image without a mask ({len(maskless)} such); "
                    "segmentation cannot be scored on it: score a classifier, or add the masks"
                )
        else:
            records, groups, skipped = _known_labels(loaded, records, groups, skipped, key)
        shown = f"Scoring {task} on {key} ({len(records)} images)" if progress else None
        result, samples = evaluate(loaded, records, n_boot=n_boot, seed=seed, tta=tta, groups=groups, progress=shown, precision=precision)
        key = f"{key}_tta" if tta else key
        datasets = sorted({r.dataset for r in records})
        result = {
            "split": role,
            "datasets": datasets,
            "skipped": skipped,
            "tta": tta,
            "command": command,
            "images": len(records),
            "task": task,
            "model": loaded.spec,
            "model_source": loaded.source,
            "weight_source": loaded.config.get("weight_source"),
            "n_boot": n_boot,
            # an ONNX network has no torch parameters: ask the backend interface, never the module
            "inference_path": "onnxruntime fp32"
            if loaded.backend == "onnx"
            else "fp32 eager (reference)"
            if precision == "fp32"
            else default_path_name(loaded.device),
            **result,
        }
        dest.mkdir(parents=True, exist_ok=True)
        if figures:
            from busai import figures as fig

            name = key.replace("/", "_")
            title = f"{model_label(loaded.spec)}: {key}"
            if loaded.task == "segmentation":
                result["figure"] = fig.segmentation_samples(samples, dest / f"samples_{name}.png", title=title)
            else:
                classes = result["classes"]
                result["figure"] = fig.confusion_matrix(np.array(result["confusion_matrix"]), dest / f"confusion_{name}.png", title=title, classes=classes)
                result["sample_figure"] = fig.classification_samples(samples, dest / f"samples_{name}.png", title=title, classes=classes)
                result["reliability_figure"] = reliability_figure(
                    {f"{key} (ECE {result['ece']:.3f})": result["reliability"]}, dest / f"reliability_{name}.png", title=title
                )
        metrics_path = dest / METRICS
        merged = read_metrics(dest)
        merged[key] = result
        write_json(metrics_path, merged)
        results[key] = result
    return results


def _known_labels(loaded, records, groups, skipped: dict, key: str):
    """The records a classifier can be scored on: those whose label is one of its classes (or
    maps to one through its training mapping); the others are listed under ``skipped`` and noted
    on stderr, since a class the model cannot predict has no score."""
    index = scoring_map(loaded.config, class_names(loaded.spec))
    unknown = [r for r in records if r.label not in index]
    if not unknown:
        return records, groups, skipped
    labels = sorted({str(r.label) for r in unknown})
    reason = f"label not among the model's classes ({', '.join(class_names(loaded.spec))})"
    log.info("%s: %d images labelled %s are left out (listed under 'skipped'): %s", key, len(unknown), ", ".join(labels), reason)
    kept = [i for i, r in enumerate(records) if r.label in index]
    if not kept:
        raise ConfigError(f"{key}: no image is labelled with a class of the model ({', '.join(class_names(loaded.spec))}); score it on data with those labels")
    skipped = {**skipped, **{r.key: f"{reason}: {r.label}" for r in unknown}}
    return [records[i] for i in kept], [groups[i] for i in kept], skipped
