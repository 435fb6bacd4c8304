"""`busai report`, and the study's `python -m study.collect` / `python -m study.report`, on tiny synthetic runs:
every section, numbers equal to the runs' metrics files."""

import json
import re
import shutil

import pytest

from busai.evaluation import evaluate_run
from busai.report import fmt_value

SECTIONS = [
    "# busai report",
    "## Dataset audit",
    "## Data splits\n",
    "## Tuned hyper-parameters\n",
    "## Runs: weight source and training cost",
    "## Segmentation\n",
    "## Classification\n",
    "## Model comparison",
    "## Confusion matrices\n",
    "## Calibration",
    "## Training curves",
    "## Sample predictions\n",
]
# The study's report: the same sections, naming the paper's tables and figures.
STUDY_SECTIONS = [
    "## Data splits (paper's Tables 1 and 2)",
    "## Tuned hyper-parameters (paper's Tables 3 and 5)",
    "### Paper: tuned settings",
    "## Segmentation (paper's Table 4)",
    "## Classification (paper's Table 6)",
    "## Confusion matrices (paper's Figures 6-10)",
    "## Sample predictions (paper's Figures 3-5 and 12)",
]


@pytest.fixture(scope="module")
def evaluated(seg_run, cls_run, synthetic_dir, tmp_path_factory):
    """Copies of the tiny runs, evaluated on val and test, side by side in one folder."""
    root = tmp_path_factory.mktemp("report_runs")
    runs = {}
    for name, run in (("seg", seg_run), ("cls", cls_run)):
        runs[name] = shutil.copytree(run, root / name)
        for split in ("val", "test"):
            evaluate_run(runs[name], synthetic_dir, run.parent / "splits.json", split, n_boot=20)
    return root, runs


def ci(entry: dict) -> str:
    return f"{fmt_value(entry['value'])} ({fmt_value(entry['ci_low'])}–{fmt_value(entry['ci_high'])})"


def test_report_has_every_section_and_the_runs_numbers(cli, evaluated, synthetic_dir, tmp_path):
    root, runs = evaluated
    audit = tmp_path / "audit.json"
    code, out, _ = cli("data", "audit", synthetic_dir, "--json")
    assert code == 0
    audit.write_text(out)
    code, out, err = cli("report", root, "--out", tmp_path / "report", "--audit", audit)
    assert code == 0, err
    md = (tmp_path / "report" / "report.md").read_text()
    positions = [md.find(s) for s in SECTIONS]
    assert -1 not in positions and positions == sorted(positions), dict(zip(SECTIONS, positions))

    seg = json.loads((runs["seg"] / "metrics.json").read_text())
    for split in ("val", "test"):
        m = seg[split]
        dice, iou = ci(m["dice"]["mean"]), ci(m["iou"]["mean"])
        d = m["detection"]
        row = (
            f"| {split}† | {fmt_value(m['pixel_accuracy']['pooled']['value'], 3)} | {dice} | {iou} | {fmt_value(m['auc']['pooled']['value'])} | "
            f"{d['missed_lesions']} of {d['lesion_images']} | {d['false_alarms']} of {d['lesion_free_images']} |"
        )
        assert row.replace("†", "") in md.replace("†", ""), row
    cls = json.loads((runs["cls"] / "metrics.json").read_text())
    for split in ("val", "test"):
        m = cls[split]
        recalls = " / ".join(fmt_value(m["per_class"][c]["recall"]) for c in ("normal", "benign", "malignant"))
        row = f"| {ci(m['accuracy'])} | {ci(m['macro_f1'])} | {ci(m['macro_auc'])} | {recalls} |"
        assert row in md, row

    # images per class and split, from the split file; no paper here
    splits = json.loads((runs["seg"] / "splits.json").read_text())["counts"]
    assert f"| benign | {splits['train']['benign']} | {splits['val']['benign']} | {splits['test']['benign']} |" in md
    assert "paper" not in md.lower() and "Paper:" not in md
    # audit section from the audit JSON
    assert f"| Images | {json.loads(audit.read_text())['images']} |" in md
    # weight source and training cost per run
    fit = json.loads((runs["cls"] / "fit.json").read_text())
    assert re.search(rf"\| cls \| classification \| efficientnet_lite0 \| random init \| {fit['epochs_run']} \(max epochs\) \| {fit['best_epoch']} \| ", md)
    # calibration from the classifier's kept probabilities; training curves of both runs
    assert "| cls | val |" in md and "figures/cls_calibration_test.png" in md
    assert "figures/seg_training.png" in md and "figures/cls_training.png" in md
    assert (tmp_path / "report" / "figures" / "cls_confusion_val.png").exists()


def test_html_is_self_contained_and_small(cli, evaluated, tmp_path):
    root, _ = evaluated
    assert cli("report", root, "--out", tmp_path / "r")[0] == 0
    page = (tmp_path / "r" / "report.html").read_text()
    sources = re.findall(r'<img src="([^"]+)"', page)
    assert sources and all(s.startswith("data:image/") for s in sources)
    assert "<link" not in page and "<script" not in page
    assert (tmp_path / "r" / "report.html").stat().st_size < 10_000_000
    assert "<h2>Segmentation</h2>" in page and "<table>" in page
    assert "No audit given" in page


def test_study_report_prints_the_papers_numbers_beside_ours(evaluated, tmp_path, capsys):
    from study.report import main

    root, runs = evaluated
    assert main([str(root), "--out", str(tmp_path / "study")]) == 0
    md = (tmp_path / "study" / "report.md").read_text()
    positions = [md.find(s) for s in STUDY_SECTIONS]
    assert -1 not in positions and positions == sorted(positions), dict(zip(STUDY_SECTIONS, positions))
    # Table 2: the split file's counts, the paper's in parentheses (study/paper.py: 350 / 43 / 43 benign)
    splits = json.loads((runs["seg"] / "splits.json").read_text())["counts"]
    assert f"| benign | {splits['train']['benign']} (350) | {splits['val']['benign']} (43) | {splits['test']['benign']} (43) |" in md
    assert "| Paper: acc / Dice / IoU / AUC |" in md and "| Paper: F1 / acc / macro F1 |" in md
    assert f"Written by `python -m study.report {root} --out {tmp_path / 'study'}`" in md


def test_study_collect_names_a_run_not_evaluated(seg_run, tmp_path, capsys):
    from study.collect import main

    run = shutil.copytree(seg_run, tmp_path / "seg")
    (run / "metrics.json").unlink(missing_ok=True)
    assert main([str(run), "--out", str(tmp_path / "results")]) == 2
    err = capsys.readouterr().err
    assert err == f"error: {run / 'metrics.json'}: missing; run `busai evaluate {run} --split train val test` first\n"
    assert not (tmp_path / "results" / "seg.json").exists()


def test_report_from_collected_results(cli, evaluated, tmp_path):
    """A results folder (what `python -m study.collect` writes) reports the same rows as the run folders."""
    from study.collect import main as collect

    root, runs = evaluated
    assert collect([str(runs["seg"]), "--out", str(tmp_path / "results" / "segmentation")]) == 0
    assert collect([str(runs["cls"]), "--out", str(tmp_path / "results" / "classification")]) == 0
    collected = json.loads((tmp_path / "results" / "segmentation" / "seg.json").read_text())
    assert collected["history"][0]["epoch"] == 1  # per-epoch history travels with the results file
    assert cli("report", tmp_path / "results", "--out", tmp_path / "from_results")[0] == 0
    assert cli("report", root, "--out", tmp_path / "from_runs")[0] == 0
    a, b = ((tmp_path / d / "report.md").read_text() for d in ("from_results", "from_runs"))
    table = re.compile(r"## Segmentation\n\n.*?\n\n(.*?)\n\n", re.S)
    assert table.search(a).group(1) == table.search(b).group(1)


def test_progress_png_is_written_by_training(seg_run):
    assert (seg_run / "progress.png").stat().st_size > 0


def test_bad_inputs_are_one_line_errors(cli, tmp_path):
    cli.fails("report", tmp_path / "nope", "--out", tmp_path / "r", expect="nope: not found; pass run folders")
    (tmp_path / "empty").mkdir()
    cli.fails(
        "report",
        tmp_path / "empty",
        "--out",
        tmp_path / "r",
        expect="empty: holds no run folder, release, evaluate --out folder, result file, tuning study or split file",
    )
    bad = tmp_path / "bad.json"
    bad.write_text("{}")
    cli.fails("report", bad, "--out", tmp_path / "r", expect="bad.json: holds no run folder")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "notes.txt").write_text("mine")
    cli.fails("report", tmp_path / "empty", "--out", tmp_path / "other", expect="exists and is not a busai report folder")


def test_report_rewrites_its_own_folder_only(cli, evaluated, tmp_path):
    root, _ = evaluated
    assert cli("report", root, "--out", tmp_path / "r")[0] == 0
    assert cli("report", root, "--out", tmp_path / "r")[0] == 0  # a previous report is replaced
    (tmp_path / "runs_copy").mkdir()
    (tmp_path / "runs_copy" / "config.json").write_text("{}")
    cli.fails("report", root, "--out", tmp_path / "runs_copy", expect="--out " + str(tmp_path / "runs_copy") + ": exists and is not a busai report folder")
    assert (tmp_path / "runs_copy" / "config.json").read_text() == "{}"


@pytest.fixture(scope="module")
def external(seg_run, cls_run, tmp_path_factory, cli_module):
    """What the docs' external-validation recipe writes: `busai evaluate MODEL --data ext=DIR --all --out OUT` for both models."""
    from busai.data.synthetic import write_layout, write_synthetic_dataset

    root = tmp_path_factory.mktemp("external")
    data = write_layout(write_synthetic_dataset(root / "busi", n=12, seed=7, size=(64, 80)), root / "ext", "manifest")
    out = root / "scores"
    for run in (seg_run, cls_run):
        code, _, err = cli_module("evaluate", run, "--data", f"ext={data}", "--all", "--out", out, "--n-boot", "20")
        assert code == 0, err
    return out


@pytest.fixture(scope="module")
def cli_module():
    """The `cli` fixture for module-scoped fixtures: main() with its exit code, stdout and stderr."""
    import contextlib
    import io

    from busai.cli import main

    def run(*args):
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([str(a) for a in args])
        return code, out.getvalue(), err.getvalue()

    return run


def test_report_on_an_evaluate_out_folder_is_an_external_validation_report(cli, external, tmp_path):
    code, _, err = cli("report", external, "--out", tmp_path / "r")
    assert code == 0, err
    text = (tmp_path / "r" / "report.md").read_text()
    assert "## Scores per dataset (external validation)" in text and "## Runs: weight source" not in text  # no training to show
    seg = json.loads((external / "segmentation" / "metrics.json").read_text())["ext/all"]
    cls = json.loads((external / "classification" / "metrics.json").read_text())["ext/all"]
    dice = f"{fmt_value(seg['dice']['mean']['value'])} ({fmt_value(seg['dice']['mean']['ci_low'])}–{fmt_value(seg['dice']['mean']['ci_high'])})"
    assert re.search(rf"\| ext/all \| 12 \| {re.escape(dice)} \|", text)
    assert re.search(rf"\| ext/all \| 12 \| {re.escape(ci(cls['accuracy']))} \| {re.escape(ci(cls['macro_f1']))} \|", text)
    # Figures: the evaluation's samples and confusion matrix, and a calibration diagram from its predictions.
    assert "scores/segmentation/samples_ext_all.png" in text and "scores/classification/confusion_ext_all.png" in text
    assert f"| ext/all | 12 | {cls['ece']:.3f} |" in text


def test_report_on_the_release_shows_its_scores_without_machine_paths(cli, tmp_path):
    from busai.release import RELEASE_DIR

    code, _, err = cli("report", "release", "--out", tmp_path / "r")
    assert code == 0, err
    text = (tmp_path / "r" / "report.md").read_text()
    scores = json.loads((RELEASE_DIR / "classification" / "scores.json").read_text())["splits"]
    assert f"| busi/test | {scores['busi/test']['images']} | {ci(scores['busi/test']['accuracy'])} |" in text
    assert re.search(rf"\| test†? \| {re.escape(ci(scores['test']['accuracy']))} \|", text)  # the pooled test split in the paper-shaped table
    assert "release weights" in text and "/work/" not in text and str(RELEASE_DIR) not in text


def test_weight_sources_lose_the_machines_path():
    from busai.release import RELEASE_DIR, portable_weight_source
    from busai.report import _short_source

    assert portable_weight_source("file: /home/me/runs/seg-a/best.safetensors (sha256 0123)") == "file: seg-a/best.safetensors (sha256 0123)"
    assert (
        portable_weight_source("file: /opt/x/busai/release/segmentation/model.safetensors (sha256 ab)")
        == "file: release/segmentation/model.safetensors (sha256 ab)"
    )
    assert portable_weight_source("imagenet (torchvision)") == "imagenet (torchvision)"
    assert _short_source("file: /home/me/weights/mine.pt (sha256 1)") == "file: mine.pt"
    assert _short_source("file: release/segmentation/model.safetensors (sha256 ab)") == "release weights"
    for task in ("segmentation", "classification"):  # what the package ships
        source = json.loads((RELEASE_DIR / task / "config.json").read_text())["weight_source"]
        assert source == portable_weight_source(source) and not source.removeprefix("file: ").startswith("/")


def test_evaluate_progress_bar_shows_on_a_terminal_only(monkeypatch, capsys):
    from busai.cli import build_parser
    from busai.inference import progress_bar

    for env, description, shown in (("1", "Scoring test (3 images)", True), (None, "Scoring test (3 images)", False), ("1", None, False)):
        if env:
            monkeypatch.setenv("FORCE_COLOR", env)  # rich treats stderr as a terminal
        else:
            monkeypatch.delenv("FORCE_COLOR", raising=False)
        with progress_bar(description, 3) as advance:
            advance(3)
        assert ("Scoring test" in capsys.readouterr().err) == shown
    assert build_parser().parse_args(["evaluate", "M", "--data", "D", "--quiet"]).quiet
