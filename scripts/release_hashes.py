"""Add content hashes (issue 30) to shipped releases whose ``training_data.json`` lacks them.

The leak guard (``busai.provenance``) recognises a release's training images by their pixels and
phash, whatever their folder; releases made before it record paths only. This hashes each
dataset's train / val images from the real dataset, after checking that the dataset's
fingerprint is the one recorded (the same listing, so the same images behind the same paths):

    python scripts/release_hashes.py --data busi=PATH/Dataset_BUSI_with_GT --data uclm=PATH/BUS-UCLM
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from busai.data.sources import parse_data_specs
from busai.provenance import TRAINING_DATA, dataset_fingerprints, hash_entries
from busai.runs import write_json

RELEASE = Path(__file__).resolve().parents[1] / "src" / "busai" / "release"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", action="append", required=True, metavar="NAME=PATH", help="each dataset a release names, as it trained on it")
    args = parser.parse_args()
    specs = {spec.name: spec for spec in parse_data_specs(args.data)}
    fingerprints = dataset_fingerprints(list(specs.values()))
    for path in sorted(RELEASE.glob(f"*/{TRAINING_DATA}")):
        record = json.loads(path.read_text())
        for entry in record["datasets"]:
            if "content" in entry:
                continue
            if entry["name"] not in specs:
                sys.exit(f"error: {path}: names dataset '{entry['name']}'; pass --data {entry['name']}=PATH")
            if fingerprints[entry["name"]] != entry["fingerprint"]:
                sys.exit(f"error: --data {specs[entry['name']]}: its fingerprint is not the one {path} records; pass the dataset the release trained on")
        incomplete = hash_entries(record["datasets"], {name: spec.path for name, spec in specs.items()})
        if incomplete:
            sys.exit(f"error: {path}: images not found: {incomplete}")
        write_json(path, record)
        print(f"{path}: {sum(len(e['content']) for e in record['datasets'])} images hashed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
