"""Integration check on the real BUSI dataset (skipped where it is not available)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from busai.data.audit import audit_dataset
from busai.data.discover import discover_records
from busai.data.splits import make_splits

BUSI_DIR = Path(os.environ.get("BUSAI_BUSI_DIR") or Path(__file__).resolve().parents[2] / "shared/data/Dataset_BUSI_with_GT")


@pytest.mark.slow  # over a second on 2 idle cores: outside the fast loop (make test-fast)
@pytest.mark.busi
@pytest.mark.skipif(not BUSI_DIR.is_dir(), reason=f"BUSI not found at {BUSI_DIR} (set BUSAI_BUSI_DIR)")
def test_busi_audit_and_split():
    report = audit_dataset(BUSI_DIR)
    assert report.counts == {"normal": 133, "benign": 437, "malignant": 210}
    assert report.masks == 798 and report.images == 780
    assert report.exact_duplicate_groups == [["benign/benign (433).png", "malignant/malignant (145).png"]]
    conflicts = [c["keys"] for c in report.conflicts]
    assert ["benign/benign (433).png", "malignant/malignant (145).png"] in conflicts
    assert ["benign/benign (42).png", "benign/benign (131).png", "malignant/malignant (51).png"] in conflicts
    assert report.problems == []

    splits = make_splits(discover_records(BUSI_DIR), report.duplicate_groups, seed=42)
    where = {k: name for name in ("train", "val", "test") for k in splits[name]}
    assert all(len({where[k] for k in group}) == 1 for group in report.duplicate_groups)
    for name, fraction in (("train", 0.8), ("val", 0.1), ("test", 0.1)):
        for c, total in report.counts.items():
            assert abs(splits["counts"][name][c] - fraction * total) <= 2
