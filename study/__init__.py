"""The study: busai's re-creation of ArunKumar et al. (2025) on BUSI, kept beside the package, not in it.

The library (``src/busai``) trains, evaluates and reports on any run; what belongs to this one
paper lives here: its published numbers (:mod:`study.paper`), the result files that
docs/results.md is rendered from (:mod:`study.collect`) and the report with the paper's numbers
beside ours (:mod:`study.report`). Run from the repository root:

    python -m study.collect RUN... --out results/segmentation
    python -m study.report results --splits splits/busi.json --out report/
"""
