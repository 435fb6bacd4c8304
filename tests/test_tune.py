"""Optuna tuning: the paper's spaces, narrowing, pruning, failures, resume, shared storages.

Most studies here run `fake_train` (a stand-in for `busai.training.train` whose loss depends on the
sampled learning rate) so they take milliseconds; `test_real_study_resumes_and_retrains` runs the
real engine end to end on a tiny synthetic dataset.
"""

import glob
import json
import math
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import optuna
import pytest
from optuna.trial import TrialState

import busai.training
import busai.tune
from busai.cli import main
from busai.config import TrainConfig
from busai.errors import ConfigError
from busai.tune import (
    CLASSIFICATION_SPACE,
    SEGMENTATION_SPACE,
    apply_budget,
    best_params_table,
    build_space,
    default_space,
    narrow_space,
    parse_space_flags,
    run_study,
    suggest_config,
)

optuna.logging.set_verbosity(optuna.logging.ERROR)


def fake_train(cfg, run_dir, *, quiet=False, on_epoch=None, command=None):
    """Loss falls with epochs and is lowest for lr near 1e-4; FAKE_FAIL_ABOVE_LR makes chosen trials
    raise; FAKE_BARRIER=DIR holds each worker's trials until two workers have started one."""
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True)
    (run_dir / "pid.txt").write_text(str(os.getpid()))
    if os.environ.get("FAKE_BARRIER"):
        barrier = Path(os.environ["FAKE_BARRIER"])
        (barrier / str(os.getpid())).touch()
        deadline = time.monotonic() + 60
        while len(list(barrier.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
    if cfg.lr >= float(os.environ.get("FAKE_FAIL_ABOVE_LR", "inf")):
        raise FloatingPointError("loss became nan; lower the learning rate")
    distance = abs(math.log10(cfg.lr) + 4)
    for epoch in range(1, cfg.epochs + 1):
        loss = 0.2 + distance + 1.0 / epoch
        time.sleep(float(os.environ.get("FAKE_EPOCH_SECONDS", "0")))
        on_epoch(
            epoch,
            {
                "epoch": epoch,
                "train_loss": loss,
                "val_loss": loss,
                "val_dice": 1 - loss / 4,
                "val_macro_f1": 1 - loss / 4,
                "val_accuracy": 1 - loss / 5,
                "lr": cfg.lr,
                "seconds": 0.0,
                "best": True,
            },
        )


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    from busai.data.discover import discover_records
    from busai.data.splits import make_splits, write_splits
    from busai.data.synthetic import write_synthetic_dataset

    root = tmp_path_factory.mktemp("tune_data")
    data = write_synthetic_dataset(root / "busi", n=24, seed=0, size=(64, 64))
    splits = write_splits(root / "splits.json", make_splits(discover_records(data), [], val=0.25, test=0.1, seed=0))
    return str(data), str(splits)


@pytest.fixture
def fake(monkeypatch):
    """Fake trials, and no plots (seconds each on 2 cores; the real-engine test draws them)."""
    monkeypatch.setattr(busai.training, "train", fake_train)
    monkeypatch.setattr(busai.tune.outputs, "write_plots", lambda study, out_dir: {})


def states(out_dir, storage=None, study=None):
    storage = storage or f"sqlite:///{Path(out_dir).resolve() / 'study.db'}"
    loaded = optuna.load_study(study_name=study or Path(out_dir).resolve().name, storage=storage)
    return [t.state for t in loaded.trials]


# ------------------------------------------------------------------------------------- spaces


def sampled_configs(task, n=300):
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    configs = []
    for _ in range(n):
        trial = study.ask()
        configs.append(suggest_config(trial, default_space(task), TrainConfig(task=task)))
        study.tell(trial, 0.0)
    return configs


def test_segmentation_samples_stay_in_the_papers_ranges():
    configs = sampled_configs("seg")
    assert all(1e-5 <= c.lr <= 1e-3 and 1e-5 <= c.weight_decay <= 1e-3 for c in configs)
    assert all(10 <= c.epochs <= 100 for c in configs)
    assert {c.batch_size for c in configs} == {4, 8, 16}
    assert {c.image_size for c in configs} == {256, 288, 320}
    assert {c.optimizer for c in configs} == {"adam", "adamw", "rmsprop", "sgd", "adagrad"}
    assert {c.encoder for c in configs} == {"resnet18", "efficientnet-b0", "mobilenet_v2", "vgg16", "efficientnet-lite0"}
    assert {c.model for c in configs} == {"unet", "unetplusplus", "deeplabv3"}
    # Log-uniform: about as many draws below 1e-4 as above it.
    assert 0.3 < sum(c.lr < 1e-4 for c in configs) / len(configs) < 0.7


def test_classification_samples_stay_in_the_papers_ranges():
    configs = sampled_configs("cls")
    assert all(1e-5 <= c.lr <= 1e-1 and 1e-5 <= c.weight_decay <= 1e-1 for c in configs)
    assert all(0.3 <= c.focal_alpha <= 0.75 and 3 <= c.focal_gamma <= 5 for c in configs)
    assert {c.batch_size for c in configs} == {8, 16, 32}
    assert {c.optimizer for c in configs} == {"sgd", "adam", "rmsprop", "adamw"}
    assert all(c.epochs == 100 and c.task == "classification" for c in configs)
    # Betas are sampled only where they apply.
    for c in configs:
        if c.optimizer in ("adam", "adamw"):
            assert 0.8 <= c.betas[0] <= 0.95 and 0.9 <= c.betas[1] <= 0.999
        else:
            assert c.betas is None


def test_papers_best_settings_are_points_of_the_spaces():
    # Table 3 (ResNet18 U-Net) and Table 5 (InceptionV3) rows, replayed through FixedTrial.
    seg = suggest_config(
        optuna.trial.FixedTrial(
            {
                "model": "unet",
                "encoder": "resnet18",
                "lr": 8.1e-5,
                "weight_decay": 7.9e-5,
                "batch_size": 8,
                "optimizer": "adam",
                "image_size": 288,
                "epochs": 100,
            }
        ),
        SEGMENTATION_SPACE,
        TrainConfig(task="seg"),
    )
    assert (seg.encoder, seg.model, seg.lr, seg.batch_size, seg.image_size) == ("resnet18", "unet", 8.1e-5, 8, 288)
    cls = suggest_config(
        optuna.trial.FixedTrial(
            {
                "model": "inception_v3",
                "lr": 1.63e-5,
                "batch_size": 16,
                "weight_decay": 9e-5,
                "focal_alpha": 0.33,
                "focal_gamma": 4.41,
                "optimizer": "adam",
                "beta1": 0.84,
                "beta2": 0.98,
            }
        ),
        CLASSIFICATION_SPACE,
        TrainConfig(task="cls"),
    )
    assert (cls.model, cls.focal_alpha, cls.focal_gamma, cls.betas) == ("inception_v3", 0.33, 4.41, (0.84, 0.98))


def test_narrowing_ranges_choices_and_fixed_values(tmp_path):
    space = narrow_space(default_space("seg"), parse_space_flags(["lr=1e-4:1e-3", "encoder=resnet18,efficientnet-lite0", "model=unet", "batch-size=8"]))
    assert space["lr"] == {"type": "loguniform", "low": 1e-4, "high": 1e-3}
    assert space["encoder"]["choices"] == ["resnet18", "efficientnet-lite0"]
    assert space["model"] == {"type": "fixed", "value": "unet"} and space["batch_size"] == {"type": "fixed", "value": 8}
    file = tmp_path / "space.json"
    file.write_text(json.dumps({"epochs": [20, 40], "optimizer": ["adam", "adamw"], "weight_decay": 1e-4}))
    space = build_space("seg", space_file=file, space_flags=["epochs=20:30", "model=unet", "batch_size=8"])
    assert (space["epochs"]["low"], space["epochs"]["high"]) == (20, 30)
    assert space["optimizer"]["choices"] == ["adam", "adamw"] and space["weight_decay"]["value"] == 1e-4
    # Suggestions honour the narrowed space.
    cfg = suggest_config(
        optuna.trial.FixedTrial({"lr": 2e-4, "encoder": "resnet18", "epochs": 25, "optimizer": "adam", "image_size": 256}), space, TrainConfig(task="seg")
    )
    assert (cfg.model, cfg.batch_size, cfg.weight_decay) == ("unet", 8, 1e-4)


@pytest.mark.parametrize(
    "flag, message",
    [
        ("lr=1e-6:1e-3", "outside the space"),
        ("lr=1e-3:1e-4", "above high"),
        ("lr=fast", "not a number"),
        ("epochs=10.5:20", "not an integer"),
        ("encoder=resnet50", "not in the space"),
        ("colour=red", "unknown parameter"),
        ("lr", "expected KEY=VALUE"),
    ],
)
def test_narrowing_rejects_bad_input(flag, message):
    with pytest.raises(ConfigError, match=message):
        narrow_space(default_space("seg"), parse_space_flags([flag]))


def test_fixed_entries_and_bad_space_files_are_rejected(tmp_path):
    with pytest.raises(ConfigError, match="fixed at 100"):
        narrow_space(default_space("cls"), {"epochs": "50"})
    bad = tmp_path / "bad.json"
    bad.write_text("[1, 2]")
    with pytest.raises(ConfigError, match="JSON object"):
        build_space("cls", space_file=bad)
    with pytest.raises(ConfigError, match="not found"):
        build_space("cls", space_file=tmp_path / "missing.json")


def test_cpu_budget_overrides_are_recorded():
    space = apply_budget(default_space("seg"), image_size=64, max_epochs=5)
    assert space["image_size"]["value"] == 64 and "--image-size" in space["image_size"]["note"]
    assert space["epochs"]["value"] == 5 and "10..100" in space["epochs"]["note"]
    assert apply_budget(default_space("seg"), max_epochs=40)["epochs"] | {"note": ""} == {"type": "int", "low": 10, "high": 40, "note": ""}
    assert apply_budget(default_space("cls"), max_epochs=3)["epochs"]["value"] == 3


# ------------------------------------------------------------------------------------- studies


@pytest.mark.slow  # trains or starts processes
def test_median_pruner_stops_poor_trials(tmp_path, dataset, fake):
    summary = run_study("seg", *dataset, out_dir=tmp_path / "s", trials=10, space=build_space("seg", max_epochs=6), pruner="median", seed=1)
    found = states(tmp_path / "s")
    assert TrialState.PRUNED in found and TrialState.COMPLETE in found
    study = optuna.load_study(study_name="s", storage=f"sqlite:///{tmp_path / 's' / 'study.db'}")
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert all(len(t.intermediate_values) < 6 for t in pruned)  # stopped before the last epoch
    assert summary.summary["best"]["value"] == min(t.value for t in study.trials if t.state == TrialState.COMPLETE)


@pytest.mark.slow  # trains or starts processes
def test_hyperband_prunes_and_patience_only_early_stops(tmp_path, dataset, fake):
    run_study("seg", *dataset, out_dir=tmp_path / "h", trials=10, space=build_space("seg", max_epochs=6), pruner="hyperband", seed=1)
    assert TrialState.PRUNED in states(tmp_path / "h")
    summary = run_study("cls", *dataset, out_dir=tmp_path / "p", trials=3, space=build_space("cls", max_epochs=4), pruner="patience", trial_patience=2)
    assert states(tmp_path / "p") == [TrialState.COMPLETE] * 3
    best = json.loads((tmp_path / "p" / "best_config.json").read_text())
    assert best["patience"] == 2 and summary.summary["direction"] == "maximize"


@pytest.mark.slow  # trains or starts processes
def test_failed_trial_is_recorded_and_the_study_goes_on(tmp_path, dataset, fake, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL_ABOVE_LR", "3e-4")
    space = build_space("seg", space_flags=["lr=1e-5:1e-3"], max_epochs=2)
    summary = run_study("seg", *dataset, out_dir=tmp_path / "f", trials=8, space=space, seed=0).summary
    found = states(tmp_path / "f")
    assert len(found) == 8 and TrialState.FAIL in found and TrialState.COMPLETE in found
    assert summary["trials"]["FAIL"] == found.count(TrialState.FAIL)
    assert "FloatingPointError: loss became nan" in summary["failures"][0]["reason"]
    assert "fail_reason" in (tmp_path / "f" / "trials.csv").read_text().splitlines()[0]


@pytest.mark.slow  # trains or starts processes
def test_a_setup_that_always_fails_stops_after_three_trials(tmp_path, dataset, fake, monkeypatch):
    monkeypatch.setenv("FAKE_FAIL_ABOVE_LR", "0")
    summary = run_study("cls", *dataset, out_dir=tmp_path / "x", trials=20, space=build_space("cls", max_epochs=1)).summary
    assert states(tmp_path / "x") == [TrialState.FAIL] * 3
    assert summary["stopped_after_consecutive_failures"] and summary["best"] is None


@pytest.mark.slow  # trains or starts processes
def test_paper_settings_run_first_for_comparison(tmp_path, dataset, fake):
    space = build_space("seg", space_flags=["model=unet", "encoder=efficientnet-lite0"], image_size=64, max_epochs=3)
    summary = run_study("seg", *dataset, out_dir=tmp_path / "e", trials=4, space=space, enqueue_paper=True).summary
    paper = summary["paper_trial"]
    # Table 3's U-Net row; its image size 288 gives way to the budget's fixed 64.
    assert paper["number"] == 0 and paper["params"] == {"lr": 8.1e-5, "weight_decay": 7.9e-5, "batch_size": 8, "optimizer": "adam"}
    assert paper["tuned_beats_paper"] == (summary["best"]["number"] != 0)
    assert "with the paper's settings" in best_params_table([tmp_path / "e"])
    with pytest.raises(ConfigError, match="needs one model"):
        run_study("cls", *dataset, out_dir=tmp_path / "e2", trials=1, space=build_space("cls"), enqueue_paper=True)


@pytest.mark.slow  # trains or starts processes
def test_timeout_and_trial_budget(tmp_path, dataset, fake, monkeypatch):
    monkeypatch.setenv("FAKE_EPOCH_SECONDS", "0.2")
    summary = run_study(
        "seg", *dataset, out_dir=tmp_path / "t", trials=50, timeout_minutes=0.01, trial_minutes=3, space=build_space("seg", max_epochs=2)
    ).summary
    assert 1 <= summary["trials"]["total"] < 5  # 0.6 s of budget, 0.4 s per trial
    study = optuna.load_study(study_name="t", storage=f"sqlite:///{tmp_path / 't' / 'study.db'}")
    assert study.trials[0].user_attrs["config"]["max_minutes"] == 3
    assert json.loads((tmp_path / "t" / "best_config.json").read_text())["max_minutes"] is None


@pytest.mark.slow  # trains or starts processes
def test_resume_refuses_a_changed_space(tmp_path, dataset, fake):
    run_study("seg", *dataset, out_dir=tmp_path / "r", trials=1, space=build_space("seg", max_epochs=2))
    with pytest.raises(ConfigError, match="different task or search space"):
        run_study("seg", *dataset, out_dir=tmp_path / "r", trials=2, space=build_space("seg", max_epochs=3))


# A worker process whose trials are fake_train: busai.training is a stand-in module holding it, so the
# worker never imports torch (seconds per process that these trials do not use).
WORKER = """
import sys, types
sys.path.insert(0, {tests!r})
import busai
sys.modules["busai.training"] = busai.training = types.ModuleType("busai.training")
import busai.tune
from test_tune import fake_train
busai.training.train = fake_train
busai.tune.outputs.write_plots = lambda study, out_dir: {{}}
from busai.cli import main
code = main(sys.argv[1:])
assert "torch" not in sys.modules, "a fake worker imported torch"
sys.exit(code)
"""


@pytest.mark.slow  # over a second on 2 idle cores: outside the fast loop (make test-fast)
def test_two_workers_share_one_sqlite_study(tmp_path, dataset):
    data, splits = dataset
    storage = f"sqlite:///{tmp_path / 'shared.db'}"
    script = tmp_path / "worker.py"
    script.write_text(WORKER.format(tests=str(Path(__file__).parent)))
    (tmp_path / "barrier").mkdir()
    env = {**os.environ, "FAKE_EPOCH_SECONDS": "0.1", "FAKE_BARRIER": str(tmp_path / "barrier")}
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                str(script),
                "tune",
                "seg",
                "--data",
                data,
                "--splits",
                splits,
                "--out",
                str(tmp_path / f"w{i}"),
                "--trials",
                "6",
                "--max-epochs",
                "2",
                "--storage",
                storage,
                "--study",
                "shared",
                "--seed",
                str(i),
                "--quiet",
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(2)
    ]
    for worker in workers:
        _, err = worker.communicate(timeout=120)
        assert worker.returncode == 0, err
    study = optuna.load_study(study_name="shared", storage=storage)
    assert 6 <= len(study.trials) <= 7  # two workers may both start a trial before either sees the total
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    pids = {p.read_text() for p in tmp_path.glob("w*/trials/*/pid.txt")}
    assert len(pids) == 2  # both workers ran trials
    assert len({t.number for t in study.trials}) == len(study.trials)


# ------------------------------------------------------------------------------------- PostgreSQL


def _postgres_bin():
    initdb = shutil.which("initdb") or next(iter(sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))), None)
    return Path(initdb).resolve().parent if initdb else None


@pytest.fixture
def postgres_url():
    """A throw-away PostgreSQL server on a free port (run as the `postgres` user when we are root)."""
    pytest.importorskip("psycopg2", reason="psycopg2-binary is not installed: pip install -e '.[test]'")
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("PostgreSQL server binaries (initdb, pg_ctl) not found: apt-get install postgresql (.ci/run does)")
    prefix = []
    if os.geteuid() == 0:
        if shutil.which("runuser") is None:
            pytest.skip("running as root without runuser: cannot start PostgreSQL as an unprivileged user")
        prefix = ["runuser", "-u", "postgres", "--"]
    root = Path(tempfile.mkdtemp(prefix="busai-pg-"))
    if prefix:
        shutil.chown(root, "postgres")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    pgdata = root / "data"

    def pg(*args):
        subprocess.run([*prefix, *args], check=True, capture_output=True, text=True, timeout=60)

    try:
        pg(str(bindir / "initdb"), "-D", str(pgdata), "-A", "trust", "-U", "busai", "-E", "UTF8", "--no-sync")
        pg(
            str(bindir / "pg_ctl"),
            "-D",
            str(pgdata),
            "-l",
            str(root / "log.txt"),
            "-w",
            "-t",
            "60",
            "start",
            "-o",
            f"-p {port} -k {root} -c listen_addresses=127.0.0.1 -c fsync=off",
        )
    except subprocess.CalledProcessError as exc:
        shutil.rmtree(root, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {exc.stderr}")
    import psycopg2

    conn = psycopg2.connect(host="127.0.0.1", port=port, user="busai", dbname="postgres")
    conn.autocommit = True
    conn.cursor().execute("CREATE DATABASE optuna")
    conn.close()
    yield f"postgresql+psycopg2://busai@127.0.0.1:{port}/optuna"
    subprocess.run([*prefix, str(bindir / "pg_ctl"), "-D", str(pgdata), "-m", "immediate", "stop"], capture_output=True, timeout=60)
    shutil.rmtree(root, ignore_errors=True)


@pytest.mark.slow  # trains or starts processes
def test_study_on_postgresql_runs_and_resumes(tmp_path, dataset, fake, postgres_url):
    space = build_space("cls", max_epochs=2)
    run_study("cls", *dataset, out_dir=tmp_path / "pg", trials=2, storage=postgres_url, study_name="pg-study", space=space)
    summary = run_study("cls", *dataset, out_dir=tmp_path / "pg", trials=3, storage=postgres_url, study_name="pg-study", space=space).summary
    assert states(None, storage=postgres_url, study="pg-study") == [TrialState.COMPLETE] * 3
    assert summary["storage"].startswith("postgresql+psycopg2://") and summary["trials"]["total"] == 3
    assert not (tmp_path / "pg" / "study.db").exists()


# ------------------------------------------------------------------------------------- real engine


@pytest.mark.slow  # over a second on 2 idle cores: outside the fast loop (make test-fast)
def test_real_study_resumes_and_retrains(tmp_path, dataset, capsys):
    data, splits = dataset
    out = tmp_path / "study"
    args = [
        "tune",
        "seg",
        "--data",
        data,
        "--splits",
        splits,
        "--out",
        str(out),
        "--max-epochs",
        "1",
        "--image-size",
        "64",
        "--weights",
        "none",
        "--space",
        "encoder=resnet18",
        "--space",
        "model=unet",
        "--space",
        "batch_size=8",
        "--device",
        "cpu",
    ]
    assert main([*args, "--trials", "1", "--quiet"]) == 0
    assert main([*args, "--trials", "2", "--json"]) == 0  # resumes: one more trial
    summary = json.loads(capsys.readouterr().out)
    assert summary["trials"]["total"] == 2 and summary["trials"]["COMPLETE"] == 2
    assert summary["seconds_per_trial"]["complete"] > 0
    for name in ("study.db", "space.json", "summary.json", "best_config.json", "trials.csv", "history.png", "importances.png", "parallel.png"):
        assert (out / name).exists(), name
    assert json.loads((out / "space.json").read_text())["space"]["image_size"]["value"] == 64
    best = TrainConfig.from_file(out / "best_config.json")
    assert (best.encoder, best.image_size, best.epochs, best.max_minutes) == ("resnet18", 64, 1, None)
    assert main(["train", "--config", str(out / "best_config.json"), "--out", str(tmp_path / "retrain"), "--quiet"]) == 0
    assert (tmp_path / "retrain" / "checkpoint_best.safetensors").exists()
    capsys.readouterr()
    assert main(["tune", "table", str(out)]) == 0
    table = capsys.readouterr().out
    assert "| Study | Encoder | Decoder | Learning rate" in table and "| study | resnet18 | unet |" in table


def test_cli_reports_bad_space_in_one_line(dataset, tmp_path, capsys):
    data, splits = dataset
    code = main(["tune", "cls", "--data", data, "--splits", splits, "--out", str(tmp_path / "o"), "--trials", "1", "--space", "lr=1:2"])
    assert code == 2
    assert capsys.readouterr().err.strip() == "error: --space lr=1:2: outside the space 1e-05..0.1; narrow within it"


@pytest.mark.slow  # trains or starts processes
def test_best_params_table_for_classification(tmp_path, dataset, fake):
    run_study("cls", *dataset, out_dir=tmp_path / "c", trials=2, space=build_space("cls", space_flags=["optimizer=adam", "model=resnet18"], max_epochs=1))
    table = best_params_table([tmp_path / "c"])
    assert table.splitlines()[0].startswith("| Study | Model | Optimizer | Learning rate | Weight decay | FL(α) | FL(γ) | Batch size | β1 | β2 |")
    assert "| c | resnet18 | adam |" in table


@pytest.mark.slow  # trains or starts processes
def test_tuning_table_renders_into_the_results_page_and_the_report(tmp_path, dataset, fake):
    import importlib.util

    results = tmp_path / "results"
    run_study(
        "cls", *dataset, out_dir=results / "tuning" / "c", trials=1, space=build_space("cls", space_flags=["optimizer=adam", "model=resnet18"], max_epochs=1)
    )
    doc = tmp_path / "results.md"
    doc.write_text("".join(f"<!-- {m}:start -->\nold\n<!-- {m}:end -->\n" for m in ("seg-table", "cls-table", "speed-table", "tune-table")))
    spec = importlib.util.spec_from_file_location("tables", Path(__file__).parents[1] / "benchmarks" / "tables.py")
    tables = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tables)
    assert tables.main(["--results", str(results), "--doc", str(doc)]) == 0
    tuned = doc.read_text().split("<!-- tune-table:start -->\n")[1].split("<!-- tune-table:end -->")[0]
    assert tuned.startswith("| Study | Model | Optimizer |") and "| c | resnet18 | adam |" in tuned
    assert main(["report", str(results / "tuning" / "c"), "--out", str(tmp_path / "report")]) == 0
    assert "| c | resnet18 | adam |" in (tmp_path / "report" / "report.md").read_text()


@pytest.mark.slow  # trains or starts processes
def test_a_killed_worker_s_trial_is_failed_and_not_counted(tmp_path, dataset, fake):
    """Issue 21 item 6: a trial left RUNNING by a killed worker no longer counts towards --trials."""
    out = tmp_path / "k"
    space = build_space("seg", max_epochs=2)
    run_study("seg", *dataset, out_dir=out, trials=1, space=space)
    # A worker on this machine that started trial 1 and was killed: its process no longer exists.
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    study = optuna.load_study(study_name="k", storage=f"sqlite:///{out / 'study.db'}")
    orphan = study.ask()
    orphan.set_user_attr("worker", {"host": socket.gethostname(), "pid": dead.pid})
    summary = run_study("seg", *dataset, out_dir=out, trials=2, space=space).summary
    assert states(out) == [TrialState.COMPLETE, TrialState.FAIL, TrialState.COMPLETE]
    assert summary["trials"] == {"total": 3, "COMPLETE": 2, "FAIL": 1}
    assert "not counted towards --trials" in summary["failures"][0]["reason"]
    # The killed trial is the only one left out of the count.
    assert busai.tune.study.counted_trials(optuna.load_study(study_name="k", storage=f"sqlite:///{out / 'study.db'}")) == 2
