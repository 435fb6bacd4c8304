"""The README and docs/: short README, no broken links, runnable quick start, numbers that match their sources."""

import argparse
import importlib.util
import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")


def load_script(path: str):
    spec = importlib.util.spec_from_file_location(Path(path).stem, ROOT / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = re.sub(r"[`*_]", "", heading.strip().lower())
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    return {slug(m) for m in re.findall(r"^#+ (.+)$", text, re.M)}


def test_readme_is_short_titled_and_has_no_table_markers():
    text = README.read_text()
    assert text.startswith("# busai\n")
    assert len(text.splitlines()) <= 200
    assert not re.search(r"<!--\s*[\w-]+:(start|end)\s*-->", text)
    assert "Research software, not a medical device" in text and "make demo" in text and "make test" in text


@pytest.mark.parametrize("page", [README, *DOCS], ids=lambda p: p.name)
def test_relative_links_resolve(page):
    text = re.sub(r"```.*?```", "", page.read_text(), flags=re.S)
    broken = []
    for target in LINK.findall(text):
        if re.match(r"[a-z]+:", target):  # http(s), mailto
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(target)
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(target)
    assert not broken, f"{page.name}: broken links {broken}"


def python_quick_start() -> str:
    section = README.read_text().split("## Python quick start", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


@pytest.mark.slow  # trains or starts processes
def test_readme_python_quick_start_runs_on_a_synthetic_scan(synthetic_dir, tmp_path, monkeypatch, capsys):
    code = python_quick_start()
    assert len(code.strip().splitlines()) <= 15
    scan = synthetic_dir / "malignant" / "malignant (1).png"
    (tmp_path / "scan.png").write_bytes(scan.read_bytes())
    monkeypatch.chdir(tmp_path)
    exec(compile(code, "README.md", "exec"), {"__name__": "__main__"})  # in a namespace of its own: its imports must be there
    label, p_malignant, area_mm2 = capsys.readouterr().out.split()[:3]
    assert label in ("normal", "benign", "malignant") and 0 <= float(p_malignant) <= 1
    import numpy as np
    from PIL import Image

    mask = np.asarray(Image.open(tmp_path / "scan_mask.png"))
    assert mask.shape == np.asarray(Image.open(scan).convert("L")).shape and set(np.unique(mask)) <= {0, 255}
    # the lesion's area in mm² at 0.08 mm per pixel: at most the whole outlined area
    assert area_mm2 == "None" or 0 < float(area_mm2) <= (mask > 0).sum() * 0.08**2 + 1e-3  # rounded to 3 decimals


def test_release_tables_match_the_shipped_scores():
    release = load_script("scripts/release_table.py")
    assert release.short_table() in README.read_text()
    assert release.full_table() in (ROOT / "docs" / "model-card.md").read_text()
    assert release.calibration_table() in (ROOT / "docs" / "model-card.md").read_text()


def test_release_scores_and_the_calibration_benchmark_measured_the_same_model():
    """scores.json (README, model card) and results/release_calibration.json (the model card's
    calibration table) are both of the shipped classifier: same images, accuracy and ECE."""
    release = load_script("scripts/release_table.py")
    scores = release.load("classification")["splits"]
    calibration = json.loads(release.CALIBRATION.read_text())
    compared = 0
    for split in ("val", "test"):
        for name, measured in calibration[split].items():
            if not isinstance(measured, dict):
                continue
            ours = scores[split if name == "pooled" else f"{name}/{split}"]
            where = f"{name}/{split}: scores.json vs results/release_calibration.json"
            assert ours["images"] == measured["images"], where
            # The benchmark stores 4 decimals.
            assert ours["accuracy"]["value"] == pytest.approx(measured["accuracy"], abs=1e-4), where
            assert ours["ece"] == pytest.approx(measured["ece_10_bins"], abs=1e-4), where
            compared += 1
    assert compared == 6


def test_results_page_holds_every_generated_table_as_rendered():
    tables = load_script("benchmarks/tables.py")
    text = (ROOT / "docs" / "results.md").read_text()
    rendered = tables.render(ROOT / "results", chart=False)
    assert set(rendered) == {
        "seg-table",
        "cls-table",
        "speed-table",
        "leak-table",
        "missed-table",
        "tune-table",
        "throughput-table",
        "startup-table",
        "adapt-table",
    }
    for marker, table in rendered.items():
        block = re.search(rf"<!-- {marker}:start -->\n(.*?)\n<!-- {marker}:end -->", text, re.S)
        assert block and block.group(1) == table, f"docs/results.md {marker} is stale: run python benchmarks/tables.py"


def test_cli_reference_documents_every_command_and_option():
    reference = load_script("scripts/cli_reference.py")
    text = (ROOT / "docs" / "cli.md").read_text()
    sections = dict(re.findall(r"^## `(busai[^`]*)`\n(.*?)(?=^## `|\Z)", text, re.S | re.M))
    from busai.cli import build_parser

    missing = []
    for command, parser, _ in reference.commands(build_parser()):
        if command not in sections:
            missing.append(command)
            continue
        for action in reference.options(parser):
            names = action.option_strings or [action.metavar or action.dest]
            if isinstance(names[0], tuple):
                names = [" ".join(names[0])]
            if not all(f"`{n}`" in sections[command] for n in names if isinstance(n, str)):
                missing.append(f"{command} {names[0]}")
    assert not missing, f"docs/cli.md lacks {missing}: run python scripts/cli_reference.py"
    assert argparse  # the reference walks argparse's own actions
