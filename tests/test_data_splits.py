"""Splits: stratification, duplicate groups, folds, the JSON file, and one test per error message."""

from __future__ import annotations

import json
import warnings

import pytest

from busai import CLASSES
from busai.data.discover import discover_records
from busai.data.splits import (
    FORMAT,
    dataset_fingerprint,
    load_split_records,
    make_splits,
    read_splits,
    unit_label,
    write_splits,
)
from busai.data.synthetic import write_synthetic_dataset
from busai.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def hundred(tmp_path_factory):
    """100 tiny phantoms (45 benign, 30 malignant, 25 normal) and duplicate groups drawn over them."""
    root = write_synthetic_dataset(tmp_path_factory.mktemp("hundred") / "busi", n=100, seed=3, size=(32, 40))
    records = discover_records(root)
    groups = [
        ["benign/benign (1).png", "benign/benign (2).png", "benign/benign (3).png", "benign/benign (4).png"],
        ["benign/benign (5).png", "malignant/malignant (5).png"],  # conflict, tie -> malignant
        ["normal/normal (1).png", "normal/normal (2).png"],
        ["malignant/malignant (1).png", "malignant/malignant (2).png", "benign/benign (9).png"],  # conflict, majority malignant
    ]
    return root, records, groups


def _where(splits: dict, key: str, names=("train", "val", "test")) -> set[str]:
    return {name for name in names if key in splits[name]}


def test_per_class_counts_match_fractions(hundred):
    _, records, groups = hundred
    totals = {c: sum(r.label == c for r in records) for c in CLASSES}
    for seed in range(5):
        splits = make_splits(records, groups, seed=seed)
        for name, fraction in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
            for c in CLASSES:
                assert abs(splits["counts"][name][c] - fraction * totals[c]) <= 2, (seed, name, c, splits["counts"])


def test_every_image_in_exactly_one_split(hundred):
    _, records, groups = hundred
    splits = make_splits(records, groups, seed=1)
    listed = splits["train"] + splits["val"] + splits["test"]
    assert sorted(listed) == sorted(r.key for r in records) and splits["excluded"] == []


def test_no_duplicate_group_straddles_splits(hundred):
    _, records, groups = hundred
    for seed in range(5):
        splits = make_splits(records, groups, seed=seed)
        for group in splits["groups"]:
            assert len(set.union(*(_where(splits, k) for k in group))) == 1, (seed, group)


def test_same_seed_same_splits_other_seed_differs(hundred):
    _, records, groups = hundred
    assert make_splits(records, groups, seed=7) == make_splits(records, groups, seed=7)
    assert make_splits(records, groups, seed=7)["test"] != make_splits(records, groups, seed=8)["test"]


def test_custom_fractions(hundred):
    _, records, groups = hundred
    splits = make_splits(records, groups, val=0.2, test=0.3, seed=0)
    assert abs(len(splits["test"]) - 30) <= 3 and abs(len(splits["val"]) - 20) <= 3
    assert splits["fractions"] == {"val": 0.2, "test": 0.3}


def test_exclude_policy_lists_and_drops_every_grouped_image(hundred):
    _, records, groups = hundred
    splits = make_splits(records, groups, duplicates="exclude")
    grouped = {k for g in groups for k in g}
    assert set(splits["excluded"]) == grouped and splits["duplicates"] == "exclude"
    assert not grouped & set(splits["train"] + splits["val"] + splits["test"])
    assert sum(splits["counts"]["excluded"].values()) == len(grouped)


def test_ignore_policy_splits_images_and_lists_the_leaks(hundred):
    _, records, groups = hundred
    grouped_splits = make_splits(records, groups, seed=3)
    assert grouped_splits["leaked"] == {"val": [], "test": []}
    splits = make_splits(records, groups, seed=3, duplicates="ignore")
    assert sorted(splits["train"] + splits["val"] + splits["test"]) == sorted(r.key for r in records)
    assert splits["groups"] == grouped_splits["groups"]  # still written, so evaluation can still resample them
    where = {k: name for name in ("train", "val", "test") for k in splits[name]}
    for name in ("val", "test"):
        expected = [k for k in splits[name] if any(k in g and any(where[o] == "train" for o in g) for g in splits["groups"])]
        assert splits["leaked"][name] == expected
    assert splits["leaked"]["val"] or splits["leaked"]["test"]  # the fixture's groups do straddle here


def test_conflict_group_label_is_majority_then_more_severe():
    label_of = {"a": "benign", "b": "malignant", "c": "malignant", "d": "normal"}
    assert unit_label(["a", "b"], label_of) == "malignant"  # tie
    assert unit_label(["a", "d"], label_of) == "benign"  # tie
    assert unit_label(["a", "b", "c"], label_of) == "malignant"
    assert unit_label(["a", "d", "d"], {**label_of, "d": "normal"}) == "normal"


def test_groups_with_unknown_keys_or_overlaps_are_merged(hundred):
    _, records, _ = hundred
    groups = [["benign/benign (1).png", "gone.png"], ["benign/benign (1).png", "benign/benign (2).png"], ["normal/normal (9).png", "benign/benign (2).png"]]
    splits = make_splits(records, groups)
    assert splits["groups"] == [["normal/normal (9).png", "benign/benign (1).png", "benign/benign (2).png"]]


def test_folds_are_disjoint_cover_train_val_and_keep_groups(hundred):
    _, records, groups = hundred
    splits = make_splits(records, groups, folds=3, seed=2)
    pool = set(splits["train"]) | set(splits["val"])
    vals = [set(f["val"]) for f in splits["folds"]]
    assert len(vals) == 3 and set.union(*vals) == pool and sum(map(len, vals)) == len(pool)
    for fold in splits["folds"]:
        assert set(fold["train"]) | set(fold["val"]) == pool and not set(fold["train"]) & set(fold["val"])
        for group in splits["groups"]:
            assert len(set().union(*(_where(fold, k, ("train", "val")) for k in group))) <= 1
    assert splits["test"] == make_splits(records, groups, seed=2)["test"]  # test fixed with or without folds


def test_json_fields(hundred):
    _, records, groups = hundred
    splits = make_splits(records, groups, seed=4)
    assert splits["format"] == FORMAT and splits["seed"] == 4 and splits["duplicates"] == "group"
    assert splits["fingerprint"] == dataset_fingerprint(records) and len(splits["fingerprint"]) == 64
    assert "folds" not in splits
    json.dumps(splits)


def test_bad_fractions_and_policy(hundred):
    _, records, groups = hundred
    with pytest.raises(ConfigError, match=r"--val 1.5: must be a fraction in \[0, 1\)"):
        make_splits(records, groups, val=1.5)
    with pytest.raises(ConfigError, match="leave some images for training"):
        make_splits(records, groups, val=0.5, test=0.5)
    with pytest.raises(ConfigError, match="--folds 1: need at least 2 folds"):
        make_splits(records, groups, folds=1)
    with pytest.raises(ConfigError, match="duplicates 'drop': unknown policy; choose group, exclude, ignore"):
        make_splits(records, groups, duplicates="drop")


def test_too_many_folds(synthetic_dir):
    records = discover_records(synthetic_dir)
    with pytest.raises(DataError, match="--folds 30: cannot make 30 folds"):
        make_splits(records, [], folds=30)


# --- the file ------------------------------------------------------------------------------


def test_write_read_round_trip(hundred, tmp_path):
    _, records, groups = hundred
    splits = make_splits(records, groups, folds=2)
    path = write_splits(tmp_path / "sub" / "splits.json", splits)
    assert read_splits(path) == splits
    assert [p.name for p in path.parent.iterdir()] == ["splits.json"]  # no temporary file left behind


def test_rewriting_identical_splits_is_allowed(hundred, tmp_path):
    _, records, groups = hundred
    path = write_splits(tmp_path / "s.json", {"command": "one", **make_splits(records, groups)})
    before = path.read_bytes()
    write_splits(path, {"command": "two", **make_splits(records, groups)})
    assert path.read_bytes() == before  # the same splits: the file (and the sha256 runs record) is kept


def test_refuses_to_overwrite_different_splits(hundred, tmp_path):
    _, records, groups = hundred
    path = write_splits(tmp_path / "s.json", make_splits(records, groups, seed=0))
    with pytest.raises(DataError, match="s.json: already holds different splits; pass --force to overwrite it"):
        write_splits(path, make_splits(records, groups, seed=1))
    write_splits(path, make_splits(records, groups, seed=1), overwrite=True)
    assert read_splits(path)["seed"] == 1


def test_missing_split_file(tmp_path):
    with pytest.raises(DataError, match="none.json: split file not found; create it with `busai data split DATA_DIR --out"):
        read_splits(tmp_path / "none.json")


def test_bad_split_json(tmp_path):
    path = tmp_path / "s.json"
    path.write_text('{"format": "busai-splits/1", "train": [')
    with pytest.raises(DataError, match=r"s.json: not valid JSON \(Expecting value at line 1\); re-create it with `busai data split"):
        read_splits(path)


def test_wrong_split_format(tmp_path):
    path = tmp_path / "s.json"
    path.write_text('{"format": "nnunet", "train": []}')
    with pytest.raises(DataError, match="not a busai split file \\(format 'nnunet', expected 'busai-splits/1'\\)"):
        read_splits(path)


def test_split_list_missing(tmp_path):
    path = tmp_path / "s.json"
    path.write_text(json.dumps({"format": FORMAT, "train": [], "val": []}))
    with pytest.raises(DataError, match="the 'test' list is missing"):
        read_splits(path)


# --- loading records -----------------------------------------------------------------------


def test_load_split_records(hundred, tmp_path):
    root, records, groups = hundred
    splits = make_splits(records, groups, folds=2)
    path = write_splits(tmp_path / "s.json", splits)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # same folder: no fingerprint warning
        test = load_split_records(root, path, "test")
    assert [r.key for r in test] == splits["test"]
    assert [r.key for r in load_split_records(root, splits, "val", fold=1)] == splits["folds"][1]["val"]
    assert [r.key for r in load_split_records(root, splits, "test", fold=1)] == splits["test"]


def test_missing_split_key(hundred):
    root, records, groups = hundred
    splits = make_splits(records, groups)
    splits["val"] = splits["val"] + ["benign/benign (999).png"]
    with pytest.raises(DataError, match=r"benign/benign \(999\).png: listed in the 'val' split but not found in .*re-run `busai data split"):
        load_split_records(root, splits, "val")


def test_unknown_split_name(hundred):
    root, records, groups = hundred
    with pytest.raises(DataError, match="split 'validation': unknown; choose train, val or test"):
        load_split_records(root, make_splits(records, groups), "validation")


def test_fold_without_folds(hundred):
    root, records, groups = hundred
    with pytest.raises(DataError, match="fold 0: the split file has no folds; re-run `busai data split DATA_DIR --out FILE --folds K"):
        load_split_records(root, make_splits(records, groups), "train", fold=0)


def test_fold_out_of_range(hundred):
    root, records, groups = hundred
    with pytest.raises(DataError, match=r"fold 3: out of range; the split file has 2 folds \(0 to 1\)"):
        load_split_records(root, make_splits(records, groups, folds=2), "train", fold=3)


def test_changed_folder_warns(busi_copy):
    splits = make_splits(discover_records(busi_copy), [])
    with open(busi_copy / "benign" / "benign (2).png", "ab") as f:
        f.write(b"\0")  # one byte more: same key, different file
    with pytest.warns(UserWarning, match="fingerprint mismatch"):
        load_split_records(busi_copy, splits, "train")


# --- CLI -----------------------------------------------------------------------------------


def test_cli_split_writes_file_with_command(cli, synthetic_dir, tmp_path):
    out = tmp_path / "splits.json"
    code, stdout, err = cli("data", "split", synthetic_dir, "--out", out, "--seed", "3", "--folds", "2")
    assert code == 0, err
    splits = read_splits(out)
    assert splits["command"].startswith("busai data split ") and "--seed 3 --val 0.1 --test 0.1 --folds 2" in splits["command"]
    assert len(splits["folds"]) == 2 and splits["near_threshold"] == 8
    assert "train" in stdout and "malignant" in stdout and "2 cross-validation folds" in stdout


def test_cli_leaky_control_split_is_recorded_and_reported(cli, synthetic_dir, tmp_path):
    out = tmp_path / "leaky.json"
    code, stdout, err = cli("data", "split", synthetic_dir, "--out", out, "--seed", "3", "--duplicates", "ignore")
    assert code == 0, err
    splits = read_splits(out)
    assert "--duplicates ignore" in splits["command"] and splits["duplicates"] == "ignore"
    leaked = splits["leaked"]
    assert f"{len(leaked['val'])} val and {len(leaked['test'])} test images" in " ".join(stdout.split())


def test_cli_refuses_to_overwrite_without_force(cli, synthetic_dir, tmp_path):
    out = tmp_path / "splits.json"
    assert cli("data", "split", synthetic_dir, "--out", out, "--seed", "1")[0] == 0
    assert cli("data", "split", synthetic_dir, "--out", out, "--seed", "1")[0] == 0  # same splits: fine
    older = json.loads(out.read_text())
    del older["leaked"]  # a file written before split files listed their leaks: still the same splits
    out.write_text(json.dumps(older))
    assert cli("data", "split", synthetic_dir, "--out", out, "--seed", "1")[0] == 0
    assert json.loads(out.read_text()) == older  # not rewritten: its sha256, recorded by runs, stays
    cli.fails("data", "split", synthetic_dir, "--out", out, "--seed", "2", expect="already holds different splits; pass --force")
    assert cli("data", "split", synthetic_dir, "--out", out, "--seed", "2", "--force")[0] == 0


def test_cli_bad_fraction(cli, synthetic_dir, tmp_path):
    cli.fails("data", "split", synthetic_dir, "--out", tmp_path / "s.json", "--test", "-0.1", expect="--test -0.1: must be a fraction")


def test_canonical_busi_split_file_keeps_groups_together():
    """splits/busi.json (committed) is valid, covers 780 images once, and no group straddles splits."""
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "splits" / "busi.json"
    splits = read_splits(path)  # committed: a missing file fails here rather than skipping
    where = {k: name for name in ("train", "val", "test") for k in splits[name]}
    assert len(where) == sum(len(splits[n]) for n in ("train", "val", "test")) == 780
    assert all(len({where[k] for k in group}) == 1 for group in splits["groups"])
