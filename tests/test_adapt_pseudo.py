"""busai adapt --pseudo-label: the confidence / consistency rule on constructed maps, the hold-out
never pseudo-labelled or trained on, the keep-if-it-pays choice, bad thresholds in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from test_adapt import _shifted_site

IGNORE = 255


def _rule(**kw):
    from busai.adaptation import PseudoRule

    return PseudoRule(**{"agreement": 0.9, "confidence": 0.8, "band": 0.2, **kw})


def test_a_consistent_confident_map_is_kept_with_its_uncertain_pixels_ignored():
    from busai.adaptation import pseudo_label

    prob = np.full((4, 6), 0.05)
    prob[1:3, 1:4] = 0.99  # the lesion: 6 pixels
    prob[0, 4] = 0.6  # a lesion pixel, uncertain
    prob[3, 0] = 0.4  # a background pixel, uncertain
    label = pseudo_label(prob, prob.copy(), _rule())
    expected = np.array(
        [
            [0, 0, 0, 0, IGNORE, 0],
            [0, 1, 1, 1, 0, 0],
            [0, 1, 1, 1, 0, 0],
            [IGNORE, 0, 0, 0, 0, 0],
        ],
        dtype=np.uint8,
    )
    assert np.array_equal(label.mask, expected)
    assert label.kept and label.reason == "lesion" and label.agreement == 1.0
    assert label.confidence == pytest.approx((6 * 0.98 + 0.2) / 7)  # mean |2p - 1| over the 7 pixels at p >= 0.5


def test_a_map_its_mirror_image_disagrees_with_is_dropped():
    from busai.adaptation import pseudo_label

    prob, mirrored = np.full((4, 6), 0.02), np.full((4, 6), 0.02)
    prob[1:3, 0:2] = 0.98
    mirrored[1:3, 1:3] = 0.98  # overlaps in 2 of 4 + 4 pixels: Dice 0.5
    label = pseudo_label(prob, mirrored, _rule())
    assert label.agreement == pytest.approx(0.5)
    assert not label.kept and label.reason == "mirror image disagrees"
    # The mean map: the shared column confident (0.98), the others at 0.5 (ignored).
    assert label.mask[1, 1] == 1 and label.mask[1, 0] == label.mask[1, 2] == IGNORE
    assert label.confidence == pytest.approx((2 * 0.96 + 4 * 0.0) / 6)
    assert pseudo_label(prob, mirrored, _rule(agreement=0.5, confidence=0.3)).kept  # a looser rule takes it


def test_unconfident_lesions_and_uncertain_empty_scans_are_dropped_confident_empty_ones_kept():
    from busai.adaptation import pseudo_label

    faint = np.full((4, 6), 0.1)
    faint[1:3, 1:4] = 0.6  # agreed on, but mean |2p - 1| = 0.2
    label = pseudo_label(faint, faint, _rule())
    assert not label.kept and label.reason == "unconfident lesion" and label.confidence == pytest.approx(0.2)

    empty = np.full((4, 6), 0.1)
    label = pseudo_label(empty, empty, _rule())
    assert label.kept and label.reason == "empty" and not label.mask.any() and label.confidence == pytest.approx(0.8)

    empty[2, 2] = 0.35  # no lesion, but one pixel in the uncertain band (0.3 to 0.7)
    label = pseudo_label(empty, empty, _rule())
    assert not label.kept and label.reason == "uncertain empty" and label.mask[2, 2] == IGNORE
    assert pseudo_label(empty, empty, _rule(band=0.1)).kept  # outside a narrower band: confidently empty


def test_the_loss_and_the_early_stop_score_leave_ignored_pixels_out():
    from busai.adaptation import _ignoring_adapter
    from busai.config import TrainConfig

    adapter = _ignoring_adapter(TrainConfig(task="segmentation", model="unet", encoder="efficientnet-lite0", loss="dice_bce", select="lesion_dice"))
    mask = torch.zeros(1, 1, 4, 4)
    mask[0, 0, 1:3, 1:3] = 1
    mask[0, 0, 0, 0] = IGNORE
    logits = torch.full((1, 1, 4, 4), -3.0)
    logits[0, 0, 1:3, 1:3] = 3.0
    logits[0, 0, 0, 0] = 5.0  # predicted lesion where the pseudo-label is uncertain
    assert adapter.score(logits, mask)["lesion_dice"] == pytest.approx(1.0)  # the ignored pixel is no false positive
    logits.requires_grad_(True)
    adapter.loss(logits, {"mask": mask}).backward()
    assert logits.grad[0, 0, 0, 0] == 0 and (logits.grad[0, 0, 1:3, 1:3] != 0).all()


@pytest.mark.parametrize(
    ("option", "value", "expect"),
    [
        ("--pseudo-agreement", "1.5", "--pseudo-agreement 1.5: must be a Dice in [0, 1]"),
        ("--pseudo-confidence", "-0.1", "--pseudo-confidence -0.1: must be in [0, 1]"),
        ("--pseudo-band", "0.5", "--pseudo-band 0.5: must be in [0, 0.5)"),
        ("--pseudo-band", "nan", "--pseudo-band nan: must be in [0, 0.5)"),
        ("--max-minutes", "0", "--max-minutes 0.0: must be positive"),
    ],
)
def test_thresholds_out_of_range_are_one_line(tmp_path, cli, option, value, expect):
    cli.fails("adapt", tmp_path / "model", "--data", tmp_path, "--out", tmp_path / "run", "--pseudo-label", option, value, expect=expect)
    assert not (tmp_path / "run").exists()


# --------------------------------------------------------------------------- end to end, on a tiny model
@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return _shifted_site(tmp_path_factory.mktemp("site") / "clinic")


@pytest.fixture(scope="module")
def self_trained(seg_run, site, tmp_path_factory):
    """adapt --pseudo-label on the gain-shifted site, recording every scan the pseudo-labeller and the fine-tuning are handed."""
    import busai.adaptation as adaptation

    seen: dict[str, list] = {"predicted": [], "trained": []}
    mirror, finetune = adaptation._mirror_predictions, adaptation._finetune

    def spy_mirror(loaded, records, *args, **kw):
        seen["predicted"] += [r.image for r in records]
        return mirror(loaded, records, *args, **kw)

    def spy_finetune(loaded, train, early_stop, *args, **kw):
        seen["trained"] += [r.image for r in [*train, *early_stop]]
        return finetune(loaded, train, early_stop, *args, **kw)

    out = tmp_path_factory.mktemp("adapted") / "pseudo"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(adaptation, "_mirror_predictions", spy_mirror)
        mp.setattr(adaptation, "_finetune", spy_finetune)
        # A loose rule, so the tiny model's scans are kept and the fine-tuning runs (the rule itself is tested above).
        report = adaptation.adapt(
            seg_run,
            f"clinic={site}",
            out,
            labelled=0,
            pseudo_label=True,
            pseudo_agreement=0.0,
            pseudo_confidence=0.0,
            pseudo_band=0.05,
            epochs=2,
            patience=2,
            freeze_encoder=2,
            n_boot=50,
            device="cpu",
        )
    return out, report, seen


def test_held_out_scans_are_never_pseudo_labelled_or_trained_on(site, self_trained):
    out, report, seen = self_trained
    lists = report["lists"]
    held = {(site / k.split(":", 1)[1]).resolve() for k in lists["holdout"] + lists["left_out"]}
    pool = {(site / k.split(":", 1)[1]).resolve() for k in lists["pool"]}
    assert held and seen["trained"], "the fixture must hold scans out and fine-tune"
    predicted, trained = {Path(p).resolve() for p in seen["predicted"]}, {Path(p).resolve() for p in seen["trained"]}
    assert not predicted & held and not trained & held
    assert trained <= predicted <= pool
    assert set(lists["pseudo_finetune"]) | set(lists["pseudo_early_stop"]) == set(lists["pseudo_labelled"])


def test_pseudo_label_mode_runs_end_to_end_and_keeps_the_model_only_if_it_pays(seg_run, self_trained):
    from busai.runs import load_model

    out, report, _ = self_trained
    section, scores = report["pseudo_label"], report["scores"]
    assert report["mode"] == "unlabelled"
    assert section["scans"] == report["site"]["adaptation_images"] == section["used"] + sum(section["skipped"].values())
    assert section["rule"]["ignored_probabilities"] == [0.45, 0.55] and section["fine_tuning"]["frozen_encoder_stages"] == 2
    assert section["flip_agreement"]["before"] is not None and section["flip_agreement"]["after"] is not None
    # Kept exactly when the held-out Dice over lesion scans is not below the statistics-only model's
    # and no more normal scans are outlined.
    stats_only, self_score = scores["statistics_only"]["lesion_dice"]["value"], scores["self_trained"]["lesion_dice"]["value"]
    outlined = [scores[k]["detection"]["false_alarms"] for k in ("statistics_only", "self_trained")]
    assert section["kept"] == (self_score >= stats_only and outlined[1] <= outlined[0])
    assert scores["after"]["lesion_dice"]["value"] == (self_score if section["kept"] else stats_only)
    parent, adapted = load_model(seg_run).module.state_dict(), load_model(out).module.state_dict()
    weights = [k for k in parent if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert all(torch.equal(parent[k], adapted[k]) for k in weights) != section["kept"]  # discarded: the parent's weights
    assert (out / "checkpoint_last.pt").exists() == (out / "history.csv").exists() == section["kept"]
    text = (out / "adapt.md").read_text()
    assert "## Self-training on pseudo-labels" in text and "self-trained on pseudo-labels" in text and section["decision"] in text


def test_without_held_out_labels_the_self_trained_model_is_kept_with_its_agreement(seg_run, site, tmp_path, cli):
    scans = tmp_path / "scans"
    scans.mkdir()
    for i, p in enumerate(sorted(q for q in site.rglob("*.png") if "_mask" not in q.stem)[:12]):
        shutil.copy(p, scans / f"IMG_{i:03d}.png")
    # a budget spent by the first epoch: self-training stops there (of 3), as busai train --max-minutes does
    args = ("--pseudo-label", "--pseudo-agreement", "0", "--pseudo-confidence", "0", "--pseudo-band", "0.05", "--epochs", "3", "--max-minutes", "1e-6")
    code, out, err = cli("adapt", seg_run, "--data", scans, "--out", tmp_path / "run", *args, "--device", "cpu", "--quiet")
    assert code == 0, err
    report = json.loads((tmp_path / "run" / "adapt.json").read_text())
    section = report["pseudo_label"]
    assert report["scores"]["before"] is None and section["used"] >= 8 and section["kept"]
    assert section["decision"].startswith("kept: no labelled held-out scans") and section["flip_agreement"]["after"] is not None
    assert "pseudo-labels:" in out and len((tmp_path / "run" / "history.csv").read_text().splitlines()) == 2  # header + one epoch


def test_pseudo_label_with_labels_to_fine_tune_on_is_one_line(seg_run, site, tmp_path, cli):
    cli.fails("adapt", seg_run, "--data", f"clinic={site}", "--out", tmp_path / "run", "--pseudo-label", expect="pass --labelled 0 to self-train")
    assert not (tmp_path / "run").exists()


def test_with_a_split_file_the_keep_or_discard_choice_is_planned_on_its_val_scans(site, tmp_path):
    from busai.adaptation import plan_site, read_site
    from busai.data.sources import parse_data_specs
    from busai.data.splits import make_splits, write_splits

    spec = parse_data_specs([f"clinic={site}"])[0]
    records, _, _ = read_site(spec)
    split = write_splits(tmp_path / "split.json", make_splits(records, [], val=0.25, test=0.25, seed=0))
    plan = plan_site(records, split, spec, labelled=0, holdout=0.2, seed=0)
    parts = json.loads(split.read_text())
    assert plan.val and {r.key for r in plan.val} == {k for k in parts["val"] if any(r.key == k and r.segmentable for r in records)}
    assert not {r.key for r in plan.val} & {r.key for r in plan.pool + plan.holdout}


def test_a_self_trained_model_that_scores_worse_is_discarded(seg_run, site, tmp_path, monkeypatch):
    import busai.adaptation as adaptation
    from busai.engine import save_weights
    from busai.runs import load_model

    finetune = adaptation._finetune

    def worse(loaded, train, early_stop, out, **kw):
        result = finetune(loaded, train, early_stop, out, **kw)
        # The fine-tuned model made to find no lesion at all: below the statistics alone on the held-out lesion scans.
        model = load_model(out)
        head = [m for m in model.module.modules() if isinstance(m, torch.nn.Conv2d)][-1]
        with torch.no_grad():
            head.weight.zero_()
            head.bias.fill_(-50.0)
        save_weights(model.module, out / "checkpoint_best.safetensors", {"busai": json.dumps({"model_spec": model.spec, "image_size": model.image_size})})
        return result

    monkeypatch.setattr(adaptation, "_finetune", worse)
    out = tmp_path / "run"
    report = adaptation.adapt(
        seg_run,
        f"clinic={site}",
        out,
        labelled=0,
        pseudo_label=True,
        pseudo_agreement=0.0,
        pseudo_confidence=0.0,
        pseudo_band=0.05,
        epochs=1,
        n_boot=20,
        device="cpu",
    )
    section, scores = report["pseudo_label"], report["scores"]
    assert scores["statistics_only"]["lesion_dice"]["value"] > 0 and scores["self_trained"]["lesion_dice"]["value"] == 0
    assert not section["kept"] and section["decision"].startswith("discarded: held-out lesion_dice")
    assert scores["after"]["lesion_dice"]["value"] == scores["statistics_only"]["lesion_dice"]["value"]
    parent, adapted = load_model(seg_run).module.state_dict(), load_model(out).module.state_dict()
    assert all(torch.equal(parent[k], adapted[k]) for k in parent if not k.endswith(("running_mean", "running_var", "num_batches_tracked")))
    assert not (out / "history.csv").exists() and json.loads((out / "config.json").read_text())["train"] == {}


def test_self_training_that_outlines_more_normal_scans_does_not_pay():
    from busai.adaptation import _pays

    def summary(lesion_dice, outlined):
        return {"lesion_dice": {"value": lesion_dice}, "detection": {"false_alarms": outlined, "lesion_free_images": 10}}

    assert _pays(summary(0.70, 2), summary(0.75, 2)) == (True, "lesion_dice 0.7500 vs 0.7000, normals outlined 2 vs 2 of 10")
    assert not _pays(summary(0.70, 2), summary(0.80, 3))[0]  # better on lesions, but one more normal scan outlined
    assert not _pays(summary(0.70, 2), summary(0.69, 0))[0]
    only_normals = {"lesion_dice": {"value": None}, "detection": {"false_alarms": 1, "lesion_free_images": 10}}
    assert _pays(only_normals, {**only_normals, "detection": {"false_alarms": 0, "lesion_free_images": 10}}) == (True, "normals outlined 0 vs 1 of 10")
