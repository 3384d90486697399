"""What a Megatron-LM checkout accepts, asked of its own argument parser (run with the Python that runs Megatron).

    python megatron_probe.py /path/to/Megatron-LM      # prints {"core_version": ..., "options": [...]} as JSON

Run as a standalone script (standard library plus the checkout itself, no pipeline imports), because it
runs in the training environment's interpreter, not the pipeline's venv. It imports
`megatron.training.arguments`, lets Megatron build its whole parser (`parse_args`, which newer versions
partly generate from config dataclasses, so no text search of the sources would do) and records every
option string the parser knows. `pipeline.megatron_features` decides from that set how a job is
launched: which attention flag exists, whether `--use-mpi` does, and that every generated flag is known.
"""
from __future__ import annotations

import argparse
import json
import os
import sys


def probe(megatron_path: str) -> dict:
    os.environ.setdefault("NO_VCS_VERSION", "1")  # else the version gets the git commit of the current folder
    sys.path.insert(0, os.path.abspath(megatron_path))
    captured: dict[str, list[str]] = {}
    original = argparse.ArgumentParser.parse_known_args

    def recording(self, args=None, namespace=None):
        captured.setdefault("options", sorted(s for s in self._option_string_actions if s.startswith("--")))
        return original(self, args, namespace)

    argparse.ArgumentParser.parse_known_args = recording
    saved_argv = sys.argv
    sys.argv = ["pretrain_gpt.py"]
    try:
        from megatron.training.arguments import parse_args
        parse_args(ignore_unknown_args=True)
    finally:
        argparse.ArgumentParser.parse_known_args = original
        sys.argv = saved_argv
    try:
        from megatron.core.package_info import __version__ as version
    except ImportError:
        version = None
    arguments = sys.modules["megatron.training.arguments"]   # `megatron` is a namespace package: no __file__
    return {"megatron_path": os.path.abspath(megatron_path), "core_version": version,
            "imported_from": os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(arguments.__file__)))),
            "options": captured.get("options", [])}


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: megatron_probe.py MEGATRON_PATH")
    import warnings
    warnings.simplefilter("ignore")
    result = probe(sys.argv[1])
    sys.stdout.write(json.dumps(result) + "\n")
