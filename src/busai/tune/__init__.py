"""Hyper-parameter search with Optuna: the paper's search spaces as data (:mod:`.space`), studies
whose trials are ordinary ``busai.training.train`` runs (:mod:`.study`), their storage
(:mod:`.storage`) and their outputs (:mod:`.outputs`).

A study folder holds ``study.db`` (the default storage), ``space.json``, ``summary.json``,
``best_config.json`` (a config for ``busai train --config``), ``trials.csv``, the plots
``history.png`` / ``importances.png`` / ``parallel.png`` and ``trials/trial_NNNN/`` run folders.

Objectives: segmentation minimises the trial's lowest validation loss (the paper's objective);
classification maximises validation macro-F1 at the epoch with the lowest validation loss, i.e.
the F1 of the checkpoint ``busai train`` keeps (the paper scores trials by macro-F1; taking the
maximum over epochs instead would reward a lucky epoch on a ~80-image validation split).
"""

from busai.extras import require

require("tune")  # one clear line instead of an ImportError from optuna

from busai.tune.outputs import best_params_table, write_outputs, write_plots  # noqa: E402
from busai.tune.space import (  # noqa: E402
    CLASSIFICATION_SPACE,
    DIRECTIONS,
    OBJECTIVES,
    PAPER_SETTINGS,
    SEGMENTATION_SPACE,
    SPACES,
    apply_budget,
    build_space,
    default_space,
    describe_space,
    narrow_space,
    paper_trial_params,
    parse_space_flags,
    read_space_file,
    suggest_config,
    validate_space,
)
from busai.tune.storage import default_storage, redact  # noqa: E402
from busai.tune.study import PRUNERS, TRIAL_PATIENCE, StudySummary, make_pruner, objective_value, run_study  # noqa: E402

__all__ = [
    "CLASSIFICATION_SPACE",
    "DIRECTIONS",
    "OBJECTIVES",
    "PAPER_SETTINGS",
    "PRUNERS",
    "SEGMENTATION_SPACE",
    "SPACES",
    "TRIAL_PATIENCE",
    "StudySummary",
    "apply_budget",
    "best_params_table",
    "build_space",
    "default_space",
    "default_storage",
    "describe_space",
    "make_pruner",
    "narrow_space",
    "objective_value",
    "paper_trial_params",
    "parse_space_flags",
    "read_space_file",
    "redact",
    "run_study",
    "suggest_config",
    "validate_space",
    "write_outputs",
    "write_plots",
]
