"""Where an evaluation's results live and what they say: one folder per model and suite,
EXP_DIR/eval/results/<suite>/<the model folder's path under EXP_DIR>/ (external/<name>-<hash> for a folder
elsewhere), holding the harness's own output (harness/<run>/<model>/results_*.json and samples_*.jsonl, one
run per few-shot count and limit of the suite) and eval.json: the exact harness command of each run, the
model's fingerprint and the key of the no-second-evaluation rule.

Shared by the job (writes), make eval (skips what is done), make eval-report and make status (read).
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

from pipeline.atomic import read_json
from pipeline.paths import eval_results_root

RECORD = "eval.json"
HARNESS_DIR = "harness"


def result_dir(exp: Path, suite: str, folder: Path) -> Path:
    folder = Path(folder).absolute()
    root = eval_results_root(exp, suite)
    try:   # resolved: an EXP_DIR reached through a link still holds its own models
        return root / folder.resolve().relative_to(exp.resolve())
    except ValueError:
        digest = hashlib.sha256(str(folder).encode()).hexdigest()[:10]
        return root / "external" / f"{folder.name}-{digest}"


def failed_marker(result: Path) -> Path:
    """Written by a job whose evaluation failed (removed by the next one that succeeds)."""
    return result.with_name(f".{result.name}.failed.json")


def evaluation_key(*, suite: str, suite_fingerprint: str, harness_version: str, model_fingerprint: str,
                   backend: str, text_sha256: str | None) -> dict:
    """Same key, same evaluation: the suite (its tasks, few-shot counts, limits and task files), the harness
    version, the model's files, the backend and, for local-ppl, the text."""
    return {"suite": suite, "suite_fingerprint": suite_fingerprint, "harness_version": harness_version,
            "model_fingerprint": model_fingerprint, "backend": backend, "eval_text_sha256": text_sha256}


def read_record(result: Path) -> dict | None:
    record = read_json(result / RECORD, bad="none")
    if not record or not isinstance(record.get("runs"), list):
        return None
    if not all((result / run.get("results_file", "")).is_file() for run in record["runs"]):
        return None   # a results file went missing: not a finished evaluation
    return record


def already_evaluated(result: Path, key: dict) -> dict | None:
    record = read_record(result)
    return record if record and record.get("key") == key else None


def harness_results(result: Path, record: dict) -> dict:
    """The harness's results JSONs of an evaluation merged: results, higher_is_better, n-shot, n-samples."""
    merged: dict = {"results": {}, "higher_is_better": {}, "n-shot": {}, "n-samples": {}}
    for run in record["runs"]:
        data = json.loads((result / run["results_file"]).read_text(encoding="utf-8"))
        for key in merged:
            merged[key].update(data.get(key) or {})
    return merged
