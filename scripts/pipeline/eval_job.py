"""One model of an eval job (pbs/eval.pbs, an array index per model): the real harness's command line run
on the model, its results kept with the exact command.

The suite's tasks are run by `python -m lm_eval run`, one run per few-shot count and limit of the suite
(the harness takes one of each per run), with the Hugging Face backend (or vLLM), bf16 on a GPU and fp32 on
a CPU, batch size auto, the hub offline and the staged caches (pipeline/eval_data.py). The result folder
(pipeline/eval_results.py) is built beside its final name and renamed once complete; a failure removes it
and leaves a marker that make status shows. A model already evaluated with the same key is not run again.
"""
from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pipeline.atomic import read_json, write_json
from pipeline.errors import PipelineError, fail
from pipeline.eval_data import cache_env, staged, staging_problems
from pipeline.eval_models import EvalModel, fingerprint, model_problems, tokenizer_verdict
from pipeline.eval_results import HARNESS_DIR, RECORD, already_evaluated, evaluation_key, failed_marker
from pipeline.eval_suite import Suite, SuiteTask, load_suite
from pipeline.paths import EVAL_TASKS_DIR
from pipeline.provenance import now_iso, provenance, sha256_file

BACKENDS = ("hf", "vllm")


def probe_python(python: str) -> tuple[bool, str]:
    """(whether its torch sees a GPU, its lm-eval version) of the interpreter that runs the harness."""
    code = ("import importlib.metadata as m, torch; "
            "print(int(torch.cuda.is_available()), m.version('lm_eval'))")
    result = subprocess.run([python, "-c", code], capture_output=True, text=True)
    if result.returncode != 0:
        fail(f"{python}: cannot import torch and lm-eval: {(result.stderr.strip().splitlines() or ['?'])[-1]}")
    cuda, version = result.stdout.split()[-2:]
    return cuda == "1", version


def harness_runs(suite: Suite, rolling: set[str]) -> list[tuple[int | None, int | None, bool, list[SuiteTask]]]:
    """The suite's tasks by (few-shot count, limit, scored by rolling log-likelihood), in the suite's order: one
    harness run each (the harness takes one few-shot count, limit and BOS setting per run)."""
    groups: dict[tuple[int | None, int | None, bool], list[SuiteTask]] = {}
    for task in suite.tasks:
        groups.setdefault((task.num_fewshot, task.limit, task.task in rolling), []).append(task)
    return [(shots, limit, is_rolling, tasks) for (shots, limit, is_rolling), tasks in groups.items()]


ROLLING = "loglikelihood_rolling"


def rolling_tasks(names: list[str], include: Path) -> set[str]:
    """Which of the tasks the harness scores by rolling log-likelihood (perplexity, bits per byte).

    Their text must reach the model as Megatron trained it, [BOS] + pieces: the harness puts its prefix token
    (BOS) before the first window itself, so the text is encoded without the tokenizer's own BOS there
    (add_bos_token=False); otherwise lm-eval 0.4.13 feeds BOS twice and scores predicting the second. The other
    tasks keep the tokenizer's default, which (make hf-tokenizer) starts every context with BOS as in training.
    A group or tag counts when all its tasks do; one that mixes both kinds is refused."""
    from lm_eval.tasks import TaskManager
    from lm_eval.tasks._index import Kind
    manager = TaskManager(include_defaults=False, include_path=[str(include)])
    if not all(name in manager.task_index for name in names):   # the whole registry takes seconds: only if needed
        manager = TaskManager(include_path=[str(include)])
    index = manager.task_index

    def kinds(name: str, seen: frozenset = frozenset()) -> set[bool]:
        entry = index.get(name)
        if entry is None or name in seen:
            return set()
        if entry.kind == Kind.TASK:
            return {(entry.cfg or {}).get("output_type") == ROLLING}
        if entry.kind == Kind.GROUP:
            members = (entry.cfg or {}).get("task") or []
        else:
            members = [other for other, e in index.items() if e.kind == Kind.TASK and name in (e.tags or ())]
        found: set[bool] = set()
        for member in members:
            if isinstance(member, dict):
                found.add(member.get("output_type") == ROLLING)
            else:
                found |= kinds(member, seen | {name})
        return found

    rolling = set()
    for name in names:
        found = kinds(name)
        if found == {True, False}:
            fail(f"task {name}: mixes perplexity (rolling log-likelihood) tasks and others, which need different BOS "
                 "settings in the harness; list its tasks separately in the suite")
        if found == {True}:
            rolling.add(name)
    return rolling


def write_include_dir(folder: Path, suite: Suite, eval_text: Path | None) -> Path:
    """The one --include_path folder of the runs: the suite's include folders copied in, and local_ppl reading
    EVAL_TEXT (the harness takes a single folder)."""
    folder.mkdir(parents=True)
    for index, source in enumerate(suite.include):
        shutil.copytree(source, folder / f"include{index}", ignore=shutil.ignore_patterns("__pycache__"))
    template = (EVAL_TASKS_DIR / "local_ppl.yaml").read_text(encoding="utf-8")
    if eval_text is not None:
        template = template.replace("test: EVAL_TEXT", f"test: {json.dumps(str(eval_text))}")
    (folder / "local_ppl.yaml").write_text(template, encoding="utf-8")
    return folder


def harness_command(python: str, *, backend: str, model: Path, dtype: str, device: str, batch_size: str,
                    tasks: list[str], shots: int | None, limit: int | None, output: Path, include: Path,
                    rolling: bool = False) -> list[str]:
    model_args = f"pretrained={model},dtype={dtype}" + (",add_bos_token=False" if rolling else "")
    cmd = [python, "-m", "lm_eval", "run", "--model", backend, "--model_args", model_args,
           "--tasks", ",".join(tasks), "--batch_size", batch_size, "--output_path", str(output),
           "--include_path", str(include), "--log_samples"]
    if backend == "hf":
        cmd += ["--device", device]
    if shots is not None:
        cmd += ["--num_fewshot", str(shots)]
    if limit is not None:
        cmd += ["--limit", str(limit)]
    return cmd


def run_item(plan_path: Path, index: int, python: str) -> int:
    plan = read_json(plan_path, bad="fail")
    if plan is None:
        fail(f"{plan_path}: eval plan not found")
    items = plan["models"]
    if not 0 <= index < len(items):
        fail(f"{plan_path}: array index {index} is not one of its {len(items)} model(s)")
    item = items[index]
    exp, model = Path(plan["exp_dir"]), EvalModel.from_json(item["model"])
    result = Path(item["result_dir"])
    marker = failed_marker(result)
    try:
        return _evaluate(plan, exp, model, result, python, plan_path, index)
    except (PipelineError, OSError, KeyboardInterrupt) as exc:
        write_json(marker, {"time": now_iso(), "error": str(exc) or type(exc).__name__, "plan": str(plan_path),
                            "index": index, "job": os.environ.get("PBS_JOBID")})
        raise


def _evaluate(plan: dict, exp: Path, model: EvalModel, result: Path, python: str, plan_path: Path,
              index: int) -> int:
    suite = load_suite(plan["suite"]["path"])
    if suite.fingerprint() != plan["suite"]["fingerprint"]:
        fail(f"{suite.path}: the suite changed since make eval planned this job ({plan_path}); run make eval again")
    tokenizer_model = Path(plan["tokenizer_model"]) if plan.get("tokenizer_model") else None
    problems = model_problems(EvalModel(model.label, model.role, model.folder), tokenizer_model)
    problems += staging_problems(exp, suite)
    eval_text = Path(plan["eval_text"]["path"]) if plan.get("eval_text") else None
    if eval_text is not None and sha256_file(eval_text) != plan["eval_text"]["sha256"]:
        problems.append(f"{eval_text}: EVAL_TEXT changed since make eval planned this job; run make eval again")
    if problems:
        fail(f"{model.label}: cannot be evaluated:\n  " + "\n  ".join(problems))
    cuda, version = probe_python(python)
    if version != plan["harness_version"]:
        print(f"note: {python} has lm-eval {version}, make eval planned with {plan['harness_version']}: "
              f"evaluating with {version}", file=sys.stderr)
    key = evaluation_key(suite=suite.name, suite_fingerprint=suite.fingerprint(), harness_version=version,
                         model_fingerprint=fingerprint(model.folder, exp / ".cache" / "eval-file-hashes.json"),
                         backend=plan["backend"], text_sha256=(plan.get("eval_text") or {}).get("sha256"))
    if not plan.get("force") and already_evaluated(result, key):
        print(f"eval: {model.label} ({model.folder}) was already evaluated on suite {suite.name} with these files and "
              f"lm-eval {key['harness_version']}: {result}")
        failed_marker(result).unlink(missing_ok=True)
        return 0
    if suite.device == "gpu" and not cuda:
        fail(f"suite {suite.name} needs a GPU (device: gpu in {suite.path}) and torch sees none on "
             f"{os.uname().nodename}: submit make eval to a GPU queue")
    if plan["backend"] == "vllm" and not cuda:
        fail("EVAL_BACKEND=vllm needs a GPU and torch sees none here")
    dtype, device = ("bfloat16", "cuda:0") if cuda else ("float32", "cpu")
    tmp = result.with_name(f".{result.name}.tmp.{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    started, runs = time.monotonic(), []
    try:
        include = write_include_dir(tmp / "tasks", suite, eval_text)
        env = {**os.environ, **cache_env(exp, offline=True), "TOKENIZERS_PARALLELISM": "false"}
        rolling = rolling_tasks([t.task for t in suite.tasks], include)
        for number, (shots, limit, is_rolling, tasks) in enumerate(harness_runs(suite, rolling)):
            output = tmp / HARNESS_DIR / str(number)
            cmd = harness_command(python, backend=plan["backend"], model=model.folder, dtype=dtype, device=device,
                                  batch_size=plan["batch_size"], tasks=[t.task for t in tasks], shots=shots,
                                  limit=limit, output=output, include=include, rolling=is_rolling)
            print(f"eval: {model.label}: run {number + 1}: {shlex.join(cmd)}", flush=True)
            run_started = time.monotonic()
            status = subprocess.run(cmd, env=env, stdin=subprocess.DEVNULL).returncode
            if status != 0:
                fail(f"{model.label}: the harness exited {status} on {', '.join(t.task for t in tasks)} "
                     f"(its output is above, in the job's log)")
            found = sorted(output.rglob("results_*.json"))
            if len(found) != 1:
                fail(f"{output}: expected one results_*.json from the harness, found {len(found)}")
            runs.append({"tasks": [t.task for t in tasks], "num_fewshot": shots, "limit": limit,
                         "command": cmd, "command_text": shlex.join(cmd),
                         "results_file": str(found[0].relative_to(tmp)),
                         "seconds": round(time.monotonic() - run_started, 1)})
        datasets = {t.task: staged(exp).get(t.task) for t in suite.tasks if t.hub}
        write_json(tmp / RECORD, {
            "key": key, "model": {**model.to_json(), "fingerprint": key["model_fingerprint"]},
            "suite": {"name": suite.name, "path": str(suite.path), "description": suite.description,
                      "fingerprint": key["suite_fingerprint"]},
            "harness": {"version": version, "backend": plan["backend"], "dtype": dtype,
                        "device": device, "batch_size": plan["batch_size"], "python": python},
            "eval_text": plan.get("eval_text"), "datasets": datasets,
            "tokenizer": tokenizer_verdict(model.folder, tokenizer_model),
            "runs": runs, "seconds": round(time.monotonic() - started, 1),
            "plan": {"path": str(plan_path), "index": index}, "provenance": provenance()})
        result.parent.mkdir(parents=True, exist_ok=True)
        old = result.with_name(f".{result.name}.old.{os.getpid()}")
        if result.exists():
            os.replace(result, old)
        os.replace(tmp, result)
        shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    failed_marker(result).unlink(missing_ok=True)
    print(f"eval: {model.label}: {len(runs)} harness run(s) in {time.monotonic() - started:.0f} s -> {result}",
          file=sys.stderr)
    return 0


def eval_text_record(path: Path) -> dict:
    """EVAL_TEXT checked line by line (a JSON object with a string `text`); its sha256 keys the evaluation."""
    if not path.is_file():
        fail(f"EVAL_TEXT={path}: file not found")
    documents = 0
    with open(path, "rb") as handle:
        for number, raw in enumerate(handle, 1):
            if not raw.strip():
                continue
            try:
                record = json.loads(raw.decode("utf-8"))
            except (UnicodeDecodeError, ValueError) as exc:
                fail(f"{path}:{number}: not a JSON line ({exc})")
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                fail(f"{path}:{number}: no string \"text\" field (local-ppl scores each line's text)")
            documents += 1
    if documents == 0:
        fail(f"EVAL_TEXT={path}: holds no document")
    return {"path": str(path), "sha256": sha256_file(path), "documents": documents}
