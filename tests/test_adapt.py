"""busai adapt: statistics re-estimated on a shifted site, the hold-out never used, bad input in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from busai.data.synthetic import write_synthetic_dataset

GAIN = 0.5  # the site's scanner: every grey level halved (a darker gain setting)


def _shifted_site(folder: Path, n: int = 24, seed: int = 7) -> Path:
    """Synthetic scans of the same kind as the parent's, through a constructed gain change (masks untouched)."""
    site = write_synthetic_dataset(folder, n=n, seed=seed, size=(64, 80))
    for path in site.rglob("*.png"):
        if "_mask" not in path.stem:
            grey = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
            Image.fromarray(np.round(grey * GAIN).astype(np.uint8)).save(path)
    return site


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    return _shifted_site(tmp_path_factory.mktemp("site") / "clinic")


@pytest.fixture(scope="module")
def unlabelled(seg_run, site, tmp_path_factory) -> tuple[Path, dict]:
    from busai.adaptation import adapt

    out = tmp_path_factory.mktemp("adapted") / "run"
    return out, adapt(seg_run, f"clinic={site}", out, labelled=0, n_boot=50, device="cpu")


@pytest.fixture(scope="module")
def few_label(seg_run, site, tmp_path_factory) -> tuple[Path, dict]:
    from busai.adaptation import adapt

    out = tmp_path_factory.mktemp("adapted") / "few"
    return out, adapt(seg_run, f"clinic={site}", out, epochs=2, patience=2, freeze_encoder=2, n_boot=50, device="cpu")


def _first_bn_input_mean(module, site: Path, loaded) -> torch.Tensor:
    """The channel means of the first BatchNorm layer's input over every site scan, measured directly."""
    from busai.adaptation import _bn_layers
    from busai.data.discover import read_image
    from busai.inference import preprocess

    _, first = _bn_layers(module)[0]
    seen = []
    handle = first.register_forward_pre_hook(lambda _m, args: seen.append(args[0].mean(dim=(0, 2, 3))))
    images = [p for p in sorted(site.rglob("*.png")) if "_mask" not in p.stem]
    with torch.no_grad():
        for path in images:
            module(preprocess(read_image(path), loaded.image_size, loaded.mean, loaded.std, loaded.grayscale)[None])
    handle.remove()
    return torch.stack(seen).mean(0)


def test_unlabelled_mode_moves_the_statistics_to_the_sites(seg_run, site, unlabelled):
    from busai.adaptation import _bn_layers
    from busai.runs import load_model

    out, report = unlabelled
    parent, adapted = load_model(seg_run), load_model(out)
    held = set(report["lists"]["holdout"])
    pool = [p for p in sorted(site.rglob("*.png")) if "_mask" not in p.stem and f"clinic:{p.relative_to(site).as_posix()}" not in held]
    pool_dir = out.parent / "pool"
    for p in pool:
        (pool_dir / p.relative_to(site)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(p, pool_dir / p.relative_to(site))
    # The first layer's input does not depend on any BatchNorm statistics: the parent measures it.
    target = _first_bn_input_mean(parent.module, pool_dir, parent)
    (_, before), (_, after) = _bn_layers(parent.module)[0], _bn_layers(adapted.module)[0]
    assert torch.allclose(after.running_mean, target, rtol=0.02, atol=1e-3)
    assert (after.running_mean - target).abs().sum() < 0.1 * (before.running_mean - target).abs().sum()
    assert report["bn_shift"]["first_layer"]["mean_shift_sd"] > 0.1
    # Only statistics changed: every weight is the parent's.
    parent_state, adapted_state = parent.module.state_dict(), adapted.module.state_dict()
    weights = [k for k in parent_state if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]
    assert all(torch.equal(parent_state[k], adapted_state[k]) for k in weights)


def test_unlabelled_mode_does_not_make_the_held_out_scores_worse(unlabelled):
    out, report = unlabelled
    scores = report["scores"]
    assert report["mode"] == "unlabelled" and scores["before"]["images"] == scores["after"]["images"] > 0
    assert scores["after"]["dice"]["value"] >= scores["before"]["dice"]["value"] - 0.02
    assert scores["after"]["detection"]["missed_lesions"] <= scores["before"]["detection"]["missed_lesions"]
    text = (out / "adapt.md").read_text()
    assert "Dice, lesion scans" in text and "Input gate on" in text
    assert report["site_statistics"]["images_measured"] == report["site"]["adaptation_images"]


def test_the_hold_out_is_never_adapted_on(site, unlabelled, few_label):
    from busai.data.sources import parse_data_specs
    from busai.errors import ConfigError
    from busai.provenance import check_unseen

    for out, report in (unlabelled, few_label):
        lists = report["lists"]
        held = set(lists["holdout"])
        assert held and not held & (set(lists["pool"]) | set(lists["finetune"]) | set(lists["early_stop"]))
        assert set(lists["finetune"]) | set(lists["early_stop"]) <= set(lists["pool"])
        recorded = json.loads((out / "training_data.json").read_text())["datasets"][-1]
        assert recorded["fingerprint"] == report["site"]["fingerprint"]
        assert not {f"clinic:{k}" for k in recorded["train"] + recorded["val"]} & held
        assert set(recorded["content"]) == set(recorded["train"] + recorded["val"])  # the content guard knows every scan it used
        # The leak guard now applies to the adapted model: its hold-out may be scored, its pool not.
        from busai.adaptation import read_site

        records, fingerprint, _ = read_site(parse_data_specs([f"clinic={site}"])[0])
        by_key = {r.key: r for r in records}
        check_unseen(out, {"test": [by_key[k] for k in held]}, {"clinic": fingerprint}, what="scoring")
        with pytest.raises(ConfigError, match="were in this model's training data"):
            check_unseen(out, {"test": [by_key[lists["pool"][0]]]}, {"clinic": fingerprint}, what="scoring")
        # A copy of a pool scan in another folder, under another name: refused by its pixels.
        copy = Path(out).parent / "copy" / "benign"
        copy.mkdir(parents=True, exist_ok=True)
        shutil.copy(by_key[lists["pool"][0]].image, copy / "renamed (1).png")
        shutil.copy(by_key[lists["pool"][0]].masks[0], copy / "renamed (1)_mask.png")
        copied, copied_fingerprint, _ = read_site(parse_data_specs([f"copy={copy.parent}"])[0])
        with pytest.raises(ConfigError, match="the same pixels as clinic:"):
            check_unseen(out, {"test": copied}, {"copy": copied_fingerprint}, what="scoring")


def test_few_label_mode_fine_tunes_with_frozen_stages_and_an_early_stop_hold_out(seg_run, few_label):
    from busai.adaptation import encoder_stages
    from busai.runs import load_model

    out, report = few_label
    assert report["mode"] == "few-label"
    assert len(report["lists"]["finetune"]) + len(report["lists"]["early_stop"]) == report["site"]["finetune_images"] + report["site"]["early_stop_images"]
    assert report["lists"]["early_stop"] and (out / "history.csv").is_file()
    parent, adapted = load_model(seg_run), load_model(out)
    frozen = [p for stage in encoder_stages(adapted.module)[:2] for p in stage]
    parent_frozen = [p for stage in encoder_stages(parent.module)[:2] for p in stage]
    assert frozen and all(torch.equal(a, b) for a, b in zip(frozen, parent_frozen))  # frozen: the parent's weights
    assert report["scores"]["statistics_only"] is not None and "fine-tuned on" in (out / "adapt.md").read_text().lower()


def test_adapted_run_loads_and_predicts(site, unlabelled):
    import busai

    out, _ = unlabelled
    model = busai.load(out, task="seg", device="cpu")
    assert model.predict(site / "benign" / "benign (1).png").mask.shape == (64, 80)
    assert busai.adapt.__module__ == "busai.adaptation"


def test_a_plain_folder_of_scans_is_adapted_without_labels(seg_run, site, tmp_path, cli):
    scans = tmp_path / "scans"
    for i, p in enumerate(sorted(q for q in site.rglob("*.png") if "_mask" not in q.stem)[:10]):
        scans.mkdir(exist_ok=True)
        shutil.copy(p, scans / f"IMG_{i:03d}.png")
    code, out, err = cli("adapt", seg_run, "--data", scans, "--out", tmp_path / "run", "--n-boot", "20", "--device", "cpu", "--quiet")
    assert code == 0, err
    assert "no held-out labelled scans" in out
    report = json.loads((tmp_path / "run" / "adapt.json").read_text())
    assert report["site"]["layout"] == "images" and report["site"]["adaptation_images"] == 10 and report["scores"]["before"] is None


def test_no_images_is_one_line(seg_run, tmp_path, cli):
    (tmp_path / "empty").mkdir()
    cli.fails("adapt", seg_run, "--data", tmp_path / "empty", "--out", tmp_path / "run", expect="no images found")
    assert not (tmp_path / "run").exists()


def test_too_few_labels_is_one_line(seg_run, site, tmp_path, cli):
    cli.fails("adapt", seg_run, "--data", f"clinic={site}", "--out", tmp_path / "run", "--labelled", "3", expect="needs at least 8 labelled scans")
    cli.fails("adapt", seg_run, "--data", f"clinic={site}", "--out", tmp_path / "run", "--labelled", "500", expect="has only")


def test_a_site_overlapping_the_training_data_is_one_line(seg_run, synthetic_dir, tmp_path, cli):
    cli.fails("adapt", seg_run, "--data", synthetic_dir, "--out", tmp_path / "run", expect="were in this model's training data")


def test_a_classifier_is_one_line(cls_run, site, tmp_path, cli):
    cli.fails("adapt", cls_run, "--data", site, "--out", tmp_path / "run", expect="segmentation")
