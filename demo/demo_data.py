#!/usr/bin/env python3
"""Generate the built-in dolmino-shaped sample (see pipeline/sample.py) as a raw dataset tree.

Re-running with the same arguments does nothing (the files would be byte-identical anyway, but
keeping their timestamps lets later steps see they are unchanged).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))  # pipeline/ lives in scripts/
from pipeline.atomic import write_json
from pipeline.config import load_yaml
from pipeline.errors import run_main
from pipeline.paths import state_dir
from pipeline.sample import generate


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", required=True, type=Path,
                        help="the raw dataset folder, EXP_DIR/<dataset> (its data/ tree is written)")
    parser.add_argument("--seed", type=int, default=0, help="random seed of the generated text")
    parser.add_argument("--docs", type=int, default=20, help="documents per file (scales the sample)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    output = args.output.resolve()
    sentinel = state_dir(output.parent, output.name, "sample") / "done.json"
    wanted = {"seed": args.seed, "docs": args.docs}
    if sentinel.is_file() and {k: v for k, v in load_yaml(sentinel).items() if k in wanted} == wanted:
        print(f"sample: {output} already generated (seed {args.seed}, {args.docs} docs per file)")
        return
    sample = generate(output, seed=args.seed, docs=args.docs)
    write_json(sentinel, {**wanted, "files": len(sample.files), "documents": sample.documents,
                          "training_documents": sample.training_documents})
    # the raw tree is complete, as after a download; a real `make download` does not trust this record
    # (its sentinel check wants the hub repo and revision) and would fetch everything
    size = sum((output / f.path).stat().st_size for f in sample.files)
    write_json(state_dir(output.parent, output.name, "download") / "done.json",
               {"source": "generated sample (demo/demo_data.py), not downloaded", "files": len(sample.files),
                "bytes": size, "revision": "sample"})
    print(f"sample: {len(sample.files)} files, {sample.documents} documents "
          f"({sample.training_documents} outside the gsm8k test split) under {output}")


if __name__ == "__main__":
    run_main(main)
