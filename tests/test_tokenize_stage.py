"""make tokenize: every merged file of a dataset, mirrored, with sentinels; re-runs, stale inputs,
clean-intermediate, and the PBS array job."""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from conftest import REPO, run_script
from tokenize_helpers import (assert_same_files, big_sp_model, corpus_texts, llama2_ids, megatron_build,
                              tiny_sp_model, write_jsonl)

DATASET = "dolmino-mix-1124"
FILES = {"dclm/dclm-0000-0009.jsonl": (0, 40), "flan-all.jsonl": (40, 80), "math/gsm8k-all.jsonl": (80, 120)}


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_sp_model(tmp_path_factory.getbasetemp() / "tokenize-models")


def merged(exp: Path) -> Path:
    return exp / f"{DATASET}-extracted-merged"


def state(exp: Path, stage: str) -> Path:
    return exp / ".state" / DATASET / stage


def write_merge_record(exp: Path) -> None:
    """merge's sentinel, as the merge step writes it: path, bytes, mtime_ns of every output."""
    outputs = []
    for rel in FILES:
        stat = (merged(exp) / rel).stat()
        outputs.append({"path": rel, "source": rel.split("/")[0], "bytes": stat.st_size, "documents": 40,
                        "mtime_ns": stat.st_mtime_ns})
    folder = state(exp, "merge")
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "done.json").write_text(json.dumps({"outputs": outputs}))


def make_merged(exp: Path) -> list[str]:
    texts = corpus_texts(seed=5)
    for rel, (a, b) in FILES.items():
        write_jsonl(merged(exp) / rel, texts[a:b])
    write_merge_record(exp)
    return texts


def tokenized(exp: Path, name: str = "tiny") -> Path:
    return exp / f"{DATASET}-{name}-tokenized"


def mtimes(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*") if p.is_file()}


def test_tokenizer_model_is_required(make, exp_dir):
    result = make("tokenize", check=False)
    assert result.returncode != 0 and "TOKENIZER_MODEL is not set" in result.stderr
    bad = make("tokenize", "TOKENIZER_MODEL=x.model", "TOKENIZER_TYPE=Bert", check=False)
    assert bad.returncode != 0 and "TOKENIZER_TYPE must be one of" in bad.stderr


def test_tokenize_before_merge_says_so(make, model):
    result = make("tokenize", f"TOKENIZER_MODEL={model}", check=False)
    assert result.returncode != 0 and "merge has not completed" in result.stderr


def test_demo_tokenizer_training_is_deterministic_and_skipped_when_up_to_date(tmp_path):
    from conftest import DEMO, run_script
    texts = corpus_texts(seed=2)[:120]
    data = write_jsonl(tmp_path / "merged" / "a.jsonl", texts)
    first = tmp_path / "one" / "demo.model"
    run_script("train_tokenizer", "--input", str(data.parent), "--output", str(first), "--vocab-size", "300",
               folder=DEMO)
    again = run_script("train_tokenizer", "--input", str(data.parent), "--output", str(first), "--vocab-size", "300",
                       folder=DEMO)
    assert "up to date" in again.stdout
    second = tmp_path / "two" / "demo.model"
    run_script("train_tokenizer", "--input", str(data), "--output", str(second), "--vocab-size", "300", folder=DEMO)
    assert first.read_bytes() == second.read_bytes()


def test_make_tokenize_mirrors_the_tree_and_reruns_only_what_is_stale(make, exp_dir, model, tmp_path):
    texts = make_merged(exp_dir)
    args = ("tokenize", f"TOKENIZER_MODEL={model}", "TOKENIZER_NAME=tiny", "JOBS=2")
    make(*args)
    out = tokenized(exp_dir)
    for rel, (a, b) in FILES.items():
        prefix = out / f"{rel[: -len('.jsonl')]}_text_document"
        expected = megatron_build(tmp_path / "m" / rel, llama2_ids(model, texts[a:b]), 400)
        assert_same_files(prefix, expected)
        assert Path(f"{prefix}.provenance.json").is_file()
        sentinel = json.loads((state(exp_dir, "tokenize-tiny") / f"{rel[: -len('.jsonl')]}.json").read_text())
        assert sentinel["fingerprint"]["input"]["path"] == rel and sentinel["outputs"]["text"]["documents"] == 40
    done = json.loads((state(exp_dir, "tokenize-tiny") / "done.json").read_text())
    assert [o["path"] for o in done["outputs"]] == [f"{r[:-6]}_text_document" for r in FILES]
    assert done["tokens"] == sum(len(d) for d in llama2_ids(model, texts[:120]))
    assert "tokenize-tiny  done" in make("status", "TOKENIZER_NAME=tiny").stdout

    # a re-run touches nothing
    before = mtimes(out)
    again = make(*args)
    assert "up to date" in again.stdout and mtimes(out) == before

    # one merged file re-made by merge (new content, new record): only it is redone
    write_jsonl(merged(exp_dir) / "flan-all.jsonl", texts[200:230])
    os.utime(merged(exp_dir) / "flan-all.jsonl", ns=(1, 1))
    write_merge_record(exp_dir)
    make(*args)
    after = mtimes(out)
    changed = {k for k in after if after[k] != before.get(k)}
    assert changed == {f"flan-all_text_document.{s}" for s in ("bin", "idx", "provenance.json")}
    assert_same_files(out / "flan-all_text_document",
                      megatron_build(tmp_path / "m2" / "flan", llama2_ids(model, texts[200:230]), 400))

    # after clean-intermediate removed the merged tree, complete outputs stay up to date
    subprocess.run(["mv", str(merged(exp_dir)), str(exp_dir / "merged.moved")], check=True)
    assert "up to date" in make(*args).stdout
    (out / "dclm" / "dclm-0000-0009_text_document.idx").unlink()
    missing = make(*args, check=False)
    assert missing.returncode != 0 and "dclm/dclm-0000-0009.jsonl: missing" in missing.stderr
    assert not (state(exp_dir, "tokenize-tiny") / "done.json").exists(), "the stage is no longer complete"


def test_a_changed_tokenizer_makes_every_output_stale(make, exp_dir, model):
    make_merged(exp_dir)
    make("tokenize", f"TOKENIZER_MODEL={model}", "TOKENIZER_NAME=tiny", "JOBS=1")
    big = big_sp_model(model.parent)
    result = make("tokenize", f"TOKENIZER_MODEL={big}", "TOKENIZER_NAME=tiny", "JOBS=1")
    assert "3 to do (3 stale)" in result.stderr
    idx = tokenized(exp_dir) / "flan-all_text_document.idx"
    assert idx.read_bytes()[17] == 4, "redone with the 66,000-piece model: int32"


def test_pbs_runs_one_array_index_per_file(make, exp_dir, model, fake_pbs):
    make_merged(exp_dir)
    args = ("tokenize", f"TOKENIZER_MODEL={model}", "TOKENIZER_NAME=tiny", "SCHEDULER=pbs", "PBS_GROUP=grp",
            "PBS_QUEUE=rt_HC")
    make(*args)
    sub = fake_pbs.submissions()[-1]
    assert sub["array"] == "0-2" and sub["variables"]["WORKERS"] == "0"
    plan = Path(sub["variables"]["PLAN"])
    assert json.loads(plan.read_text())["items"] == list(FILES)
    # run the template the way PBS would, one index at a time; the last one completes the stage
    for index in range(3):
        env = {**os.environ, **sub["variables"], "PBS_ARRAY_INDEX": str(index), "PBS_JOBID": f"1[{index}].pbs1",
               "PBS_JOBNAME": "tokenize", "WORKERS": "1"}
        subprocess.run(["bash", str(REPO / "pbs" / "tokenize.pbs")], env=env, check=True, capture_output=True)
        assert (state(exp_dir, "tokenize-tiny") / "done.json").exists() == (index == 2)
    assert len(list(tokenized(exp_dir).rglob("*.idx"))) == 3

    # one file not up to date: a plain job (PBS refuses a one-element array)
    (tokenized(exp_dir) / "flan-all_text_document.bin").unlink()
    make(*args)
    single = fake_pbs.submissions()[-1]
    assert single["array"] is None and "-J" not in single["argv"]
    assert json.loads(Path(single["variables"]["PLAN"]).read_text())["items"] == ["flan-all.jsonl"]


def test_make_data_runs_extract_to_mix_in_order(make, exp_dir, model, tmp_path):
    run_script("demo_data", "--output", str(exp_dir / "dolmino-mix-1124"), "--docs", "5", folder=REPO / "demo")
    out = tmp_path / "task"
    result = make("data", "ALLOW_PARTIAL=1", f"TOKENIZER_MODEL={model}", "TOKENIZER_NAME=tiny", "TASK=demo",
                  "SIZE=demo", "PARAM=tiny", f"TASK_OUT={out}")
    steps = ("pbs/extract.pbs", "pbs/merge.pbs", "tokenize_dataset.py submit")
    order = [result.stdout.index(marker) for marker in steps]
    assert order == sorted(order) and result.stdout.index("scripts/mix.py") > order[-1]
    assert (out / "train_data.all.sh").is_file() and (out / "train_data_demo.sh").is_file()


def test_tokenize_after_a_pending_merge_is_one_job_that_plans_when_it_starts(make, exp_dir, model, fake_pbs):
    # merge has not run yet: the files are not known, so no array can be sized
    result = make("-s", "tokenize", "SCHEDULER=pbs", "PBS_GROUP=g", "PBS_QUEUE=q", f"TOKENIZER_MODEL={model}",
                  "TOKENIZER_NAME=tiny", "DEPEND=afterok:12.pbs1")
    sub = fake_pbs.submissions()[-1]
    assert result.stdout.strip() == sub["job_id"] and sub["depend"] == [["afterok", ["12.pbs1"]]]
    assert "PLAN" not in sub["variables"] and "-J" not in sub["argv"]
    # what the job runs once merge is done: every file, as the array would
    make_merged(exp_dir)
    run_script("tokenize_dataset", "run-all", "--exp-dir", str(exp_dir), "--plan-args", sub["variables"]["PLAN_ARGS"],
               "--workers", "1")
    assert (state(exp_dir, "tokenize-tiny") / "done.json").is_file()
    assert len(list(tokenized(exp_dir).rglob("*_text_document.bin"))) == len(FILES)
