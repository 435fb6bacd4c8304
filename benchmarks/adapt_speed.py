"""How long `busai adapt` takes on a clinic's archive of about 2,000 unlabelled scans (issue 29).

    python benchmarks/adapt_speed.py --uclm ../shared/data/BUS-UCLM --n 2000

A site of ``--n`` scans is written from BUS-UCLM's images (each image reused with a different gain
and bottom crop per pass, so the files differ; no masks or labels: the unlabelled case), and
``busai adapt`` runs on it from the command line, timed from start to exit: statistics only, then
with ``--pseudo-label`` under a self-training budget (``--max-minutes``, default 8; the epochs it
ran are recorded). The parent is the BUSI-only release before issue 19
(``runs/release-v1/segmentation``, the same EfficientNet-Lite0 U-Net at 256 px as today's release):
today's release trained on BUS-UCLM, so its leak guard rightly refuses that site. Run it alone:
another heavy process makes the time meaningless. Writes ``results/adapt_speed.json`` with the CPU.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PARENT = "runs/release-v1/segmentation"
GAINS = (1.0, 0.85, 1.15, 0.7, 1.3)


def write_site(uclm: str, n: int, folder: Path) -> int:
    """``n`` scans from BUS-UCLM's images into ``folder`` (pass k: gain GAINS[k], bottom k x 3% cropped)."""
    from PIL import Image

    from busai.data.discover import read_image
    from busai.data.sources import parse_data_specs, scan_source

    (spec,) = parse_data_specs([f"uclm={uclm}"])
    records = scan_source(spec)[0].records
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        record, k = records[i % len(records)], i // len(records)
        grey = np.asarray(read_image(record.image, mode="L"), dtype=np.float32) * GAINS[k % len(GAINS)]
        keep = grey.shape[0] - int(grey.shape[0] * 0.03 * k)
        Image.fromarray(np.clip(np.round(grey[:keep]), 0, 255).astype(np.uint8)).save(folder / f"scan_{i:05d}.png")
    return len(records)


def timed(command: list[str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--uclm", required=True, help="BUS-UCLM folder (the source of the site's scans)")
    parser.add_argument("--n", type=int, default=2000, help="scans in the site (default 2000)")
    parser.add_argument("--model", default=PARENT, help=f"the parent (default {PARENT})")
    parser.add_argument("--pseudo-minutes", type=float, default=8.0, help="--max-minutes of the self-training run (default 8)")
    parser.add_argument("--work", default="runs/adapt-speed", help="site and adapted runs (deleted first)")
    parser.add_argument("--out", default=str(ROOT / "results" / "adapt_speed.json"))
    args = parser.parse_args(argv)

    from busai.runs import machine_info

    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    sources = write_site(args.uclm, args.n, work / "site")
    busai = [sys.executable, "-m", "busai", "adapt", args.model, "--data", f"clinic={work / 'site'}", "--labelled", "0", "--quiet"]
    results = {
        "command": "python benchmarks/adapt_speed.py " + " ".join(sys.argv[1:] if argv is None else argv),
        "machine": machine_info(),
        "site_scans": args.n,
        "source_images": sources,
        "parent": args.model,
        "seconds": {},
    }
    for mode, extra in (("statistics", []), ("pseudo-label", ["--pseudo-label", "--max-minutes", str(args.pseudo_minutes)])):
        out = work / mode
        results["seconds"][mode] = round(timed([*busai, "--out", str(out), *extra]), 1)
        results.setdefault("commands", {})[mode] = " ".join(["busai", *busai[3:], "--out", str(out), *extra])
        report = json.loads((out / "adapt.json").read_text())
        results.setdefault("adaptation_images", {})[mode] = report["site"].get("adaptation_images")
        if "pseudo_label" in report:
            section = report["pseudo_label"]
            tuning = section.get("fine_tuning") or {}
            results["pseudo_label"] = {"used": section.get("used"), **{k: tuning.get(k) for k in ("epochs_run", "stop_reason", "seconds")}}
        print(f"{mode}: {results['seconds'][mode]} s", file=sys.stderr)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results["seconds"]))
    return 0


if __name__ == "__main__":
    sys.exit(main())
