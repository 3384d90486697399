"""Faults and bad input, one section per class of the hardening issue: every value reaches a shell as
data, concurrent and interrupted runs stay correct, every failure names its file."""
from __future__ import annotations

import errno
import json
import os
import resource
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from acquire_helpers import big_jsonl, run, state, write_description
from conftest import SCRIPTS
from tokenize_helpers import tiny_sp_model

# a dataset with two sources of plain JSONL files: quick to extract, merge and tokenize
TWO_PARTS = """
name: parts
hub: {repo_id: test/parts, revision: main}
sources:
  web:
    files: data/{part}/*
    output: web/{part}-all.jsonl
"""


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> Path:
    return tiny_sp_model(tmp_path_factory.getbasetemp() / "fault-models")


def parts_dataset(tmp_path: Path, exp: Path, docs: int = 20) -> str:
    """The TWO_PARTS description and a raw tree for it (parts a and b); returns the description path."""
    description = write_description(tmp_path / "descriptions", "parts", TWO_PARTS)
    for part in ("a", "b"):
        folder = exp / "parts" / "data" / part
        folder.mkdir(parents=True, exist_ok=True)
        (folder / "0.jsonl").write_bytes(big_jsonl(docs, seed=ord(part)))
    return str(description)


def step(name: str, exp: Path, dataset: str, *args: str, check: bool = True, **kw):
    return run(name, "--exp-dir", str(exp), "--dataset", dataset, "--no-progress", *args, check=check, **kw)


def one_error_line(stderr: str) -> str:
    """The failure is one line: 'error: ...', no traceback."""
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr and len(lines) == 1 and lines[0].startswith("error: "), stderr
    return lines[0]


def error_lines(stderr: str) -> list[str]:
    """'error: <step>:' then one line per failed file; no traceback."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    assert "Traceback" not in stderr and lines and lines[0].startswith("error: "), stderr
    return lines


# ---------------------------------------------------------------------------------------------
# 2. Two runs of one step at once: the second refuses, naming the first, and removes nothing of it
# ---------------------------------------------------------------------------------------------

def test_concurrent_extract_and_merge_refuse_the_output_another_run_holds(tmp_path):
    from pipeline.locks import output_lock

    exp = tmp_path / "exp"
    dataset = parts_dataset(tmp_path, exp)
    extracted = exp / "parts-extracted" / "data" / "a" / "0.jsonl"
    live_tmp = extracted.with_name(f".{extracted.name}.tmp.{os.getpid()}")
    live_tmp.parent.mkdir(parents=True)
    live_tmp.write_bytes(b"the other run's half-written output")
    host = socket.gethostname()
    with output_lock(extracted):       # "the other run" is this test process
        busy = step("extract", exp, dataset, check=False)
    assert busy.returncode == 1
    assert f"{extracted}: being extracted by another run (pid {os.getpid()} on {host}" in busy.stderr
    assert live_tmp.read_bytes() == b"the other run's half-written output", "a live temporary is never removed"
    assert (exp / "parts-extracted" / "data" / "b" / "0.jsonl").is_file(), "outputs nobody holds are done"
    assert not (state(exp, "parts", "extract") / "done.json").exists()
    step("extract", exp, dataset)
    assert not live_tmp.exists(), "once the lock is free, whatever its owner left is removed"
    assert (state(exp, "parts", "extract") / "done.json").is_file()

    merged = exp / "parts-extracted-merged" / "web" / "b-all.jsonl"
    with output_lock(merged):
        busy = step("merge", exp, dataset, check=False)
    assert busy.returncode == 1 and f"{merged}: being merged by another run (pid {os.getpid()}" in busy.stderr
    assert not merged.exists() and not (state(exp, "parts", "merge") / "done.json").exists()
    again = step("merge", exp, dataset)
    assert "1 up to date" in again.stdout, "what the refused run finished is kept"
    assert merged.is_file() and (state(exp, "parts", "merge") / "done.json").is_file()


def test_concurrent_tokenize_refuses_and_never_touches_the_other_runs_files(tmp_path, model):
    from pipeline.locks import output_lock

    exp = tmp_path / "exp"
    dataset = parts_dataset(tmp_path, exp)
    step("extract", exp, dataset)
    step("merge", exp, dataset)
    plan = run("tokenize_dataset", "plan", "--exp-dir", str(exp), "--dataset", "parts", "--tokenizer-name", "t",
               "--tokenizer-type", "Llama2Tokenizer", "--tokenizer-model", str(model)).stdout.split()
    assert plan[0] == "2"
    prefix = exp / "parts-t-tokenized" / "web" / "a-all"
    bin_tmp = prefix.parent / f".{prefix.name}_text_document.bin.tmp.{os.getpid()}"
    bin_tmp.parent.mkdir(parents=True)
    bin_tmp.write_bytes(b"tokens being written")
    with output_lock(prefix):
        busy = run("tokenize_dataset", "run", "--plan", plan[1], "--index", "0", "--quiet", check=False)
    assert busy.returncode == 1
    assert f"{prefix}: being tokenized by another run (pid {os.getpid()} on {socket.gethostname()}" in busy.stderr
    assert bin_tmp.read_bytes() == b"tokens being written"
    for index in ("0", "1"):
        run("tokenize_dataset", "run", "--plan", plan[1], "--index", index, "--quiet")
    for name in ("a-all", "b-all"):
        assert (prefix.parent / f"{name}_text_document.bin").is_file()
        assert (prefix.parent / f"{name}_text_document.idx").is_file()
    assert not bin_tmp.exists()
    assert json.loads((state(exp, "parts", "tokenize-t") / "done.json").read_text())["files"] == 2
    assert not list(prefix.parent.glob(".*.lock")), "locks go with their run"


# ---------------------------------------------------------------------------------------------
# 4. A symlinked folder in the raw tree (data on another disk) is followed; a loop is refused
# ---------------------------------------------------------------------------------------------

def test_symlinked_raw_folders_are_followed_and_loops_refused(tmp_path):
    exp = tmp_path / "exp"
    dataset = parts_dataset(tmp_path, exp)
    other_disk = tmp_path / "other-disk" / "b"
    other_disk.parent.mkdir()
    (exp / "parts" / "data" / "b").rename(other_disk)
    (exp / "parts" / "data" / "b").symlink_to(other_disk, target_is_directory=True)
    step("extract", exp, dataset)
    done = json.loads((state(exp, "parts", "extract") / "done.json").read_text())
    assert sorted(o["path"] for o in done["outputs"]) == ["data/a/0.jsonl", "data/b/0.jsonl"]
    assert (exp / "parts-extracted" / "data" / "b" / "0.jsonl").read_bytes() == (other_disk / "0.jsonl").read_bytes()

    loop = other_disk / "again"
    loop.symlink_to(other_disk.parent, target_is_directory=True)
    refused = step("extract", exp, dataset, check=False)
    assert refused.returncode == 1
    assert f"{exp / 'parts' / 'data' / 'b' / 'again' / 'b'}: a symbolic link to {other_disk}" in refused.stderr
    assert "a loop, or the same files twice" in one_error_line(refused.stderr)
    loop.unlink()
    (other_disk / "gone.jsonl").symlink_to(tmp_path / "nowhere.jsonl")
    broken = step("extract", exp, dataset, check=False)
    assert broken.returncode == 1 and "gone.jsonl: a symbolic link to" in broken.stderr
    assert "which does not exist" in one_error_line(broken.stderr)


# ---------------------------------------------------------------------------------------------
# 5. Up to date means made by this format and these options (the bad-line policy included)
# ---------------------------------------------------------------------------------------------

def tokenize_plan(exp: Path, model: Path, *args: str) -> list[str]:
    return run("tokenize_dataset", "plan", "--exp-dir", str(exp), "--dataset", "parts", "--tokenizer-name", "t",
               "--tokenizer-type", "Llama2Tokenizer", "--tokenizer-model", str(model), *args).stdout.split()


def test_tokenize_fingerprint_holds_the_format_and_the_bad_line_policy(tmp_path, model):
    exp = tmp_path / "exp"
    dataset = parts_dataset(tmp_path, exp)
    bad = exp / "parts" / "data" / "a" / "0.jsonl"
    bad.write_bytes(bad.read_bytes() + b'{"text": 7}\n')
    step("extract", exp, dataset)
    step("merge", exp, dataset)
    plan = tokenize_plan(exp, model, "--on-bad-line", "skip")
    for index in ("0", "1"):
        run("tokenize_dataset", "run", "--plan", plan[1], "--index", index, "--quiet")
    assert tokenize_plan(exp, model, "--on-bad-line", "skip")[0] == "0"
    # strict: the output that skipped a line is not what a strict run makes; the one that skipped none is
    strict = tokenize_plan(exp, model)
    assert strict[0] == "1"
    failed = run("tokenize_dataset", "run", "--plan", strict[1], "--index", "0", "--quiet", check=False)
    assert failed.returncode == 1 and "a-all.jsonl:21: key 'text' holds int" in failed.stderr

    # a sentinel of an older layout (no format version) is not up to date
    sentinel = state(exp, "parts", "tokenize-t") / "web" / "b-all.json"
    record = json.loads(sentinel.read_text())
    del record["fingerprint"]["format"]
    sentinel.write_text(json.dumps(record))
    assert tokenize_plan(exp, model, "--on-bad-line", "skip")[0] == "2"


# ---------------------------------------------------------------------------------------------
# 6. merge VALIDATE=1 and tokenize are one check
# ---------------------------------------------------------------------------------------------

LINES = [b'{"text": "fine"}', b'{"text": "lone \\ud800 surrogate"}', b'{"text": "pair \\ud83d\\ude80 ok"}',
         b'{"text": "x", "n": NaN}', b'{"text": NaN}', b'{"text": null}', b'{"body": "no text"}', b'["a"]',
         b'{"text": "bad \xff utf-8"}', b'{"text": "unterminated', b'{"text": "a"} trailing', b'"just a string"',
         b'{"text": "dup", "text": 3}', b'\xef\xbb\xbf{"text": "bom"}', b'{"text": "tab\\tand \\u0000 nul"}']


@pytest.mark.parametrize("line", LINES, ids=range(len(LINES)))
def test_merge_validation_and_tokenize_agree_on_every_line(tmp_path, model, line):
    from pipeline.errors import PipelineError
    from pipeline.streams import copy_lines
    from pipeline.tokenization import TokenizerSpec, build_engine, process_chunk

    path = tmp_path / "one.jsonl"
    path.write_bytes(line + b"\n")
    with open(tmp_path / "out.jsonl", "wb") as out:
        try:
            copy_lines(path, out.fileno(), validate=True, on_bad_line="fail")
            merge_accepts = True
        except PipelineError:
            merge_accepts = False
    engine = build_engine(TokenizerSpec("Llama2Tokenizer", str(model)))
    tokenize_accepts = process_chunk(engine, ("text",), 0, "lines", line + b"\n", "error").error is None
    assert merge_accepts == tokenize_accepts


def test_merge_validate_refuses_a_lone_surrogate_with_file_and_line(tmp_path):
    exp = tmp_path / "exp"
    dataset = parts_dataset(tmp_path, exp, docs=3)
    bad = exp / "parts" / "data" / "a" / "0.jsonl"
    bad.write_bytes(bad.read_bytes() + b'{"text": "\\ud800"}\n')
    step("extract", exp, dataset)
    failed = step("merge", exp, dataset, "--validate", "1", check=False)
    assert failed.returncode == 1
    assert "parts-extracted/data/a/0.jsonl:4: text holds an unpaired surrogate" in one_error_line(failed.stderr)
    step("merge", exp, dataset, "--validate", "1", "--on-bad-line", "skip")
    meta = json.loads((exp / "parts-extracted-merged" / "web" / "a-all.jsonl.meta.json").read_text())
    assert meta["bad_lines_skipped"] == 1 and meta["documents"] == 3


# ---------------------------------------------------------------------------------------------
# 9. An OS error (disk full, a file-size limit) is one line naming the file, and leaves nothing behind
# ---------------------------------------------------------------------------------------------

def limited(max_bytes: int):
    """preexec_fn: writes past max_bytes fail with EFBIG (Python ignores SIGXFSZ), as on a full disk."""
    return lambda: resource.setrlimit(resource.RLIMIT_FSIZE, (max_bytes, max_bytes))


def run_limited(name: str, *args: str, max_bytes: int) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(SCRIPTS / f"{name}.py"), *args], capture_output=True, text=True,
                          preexec_fn=limited(max_bytes), timeout=300)


@pytest.mark.parametrize("validate", ["0", "1"])
def test_a_write_that_fails_in_merge_is_one_line_naming_the_output(tmp_path, validate):
    exp = tmp_path / "exp"
    dataset = parts_dataset(tmp_path, exp, docs=300)       # about 300 KB per merged output
    step("extract", exp, dataset)
    result = run_limited("merge", "--exp-dir", str(exp), "--dataset", dataset, "--no-progress", "--validate",
                         validate, max_bytes=100_000)
    assert result.returncode == 1
    lines = error_lines(result.stderr)
    for name in ("a-all", "b-all"):
        assert any(f"parts-extracted-merged/web/{name}.jsonl: File too large" in line for line in lines), lines
    merged = exp / "parts-extracted-merged" / "web"
    assert not list(merged.glob("*-all.jsonl")) and not list(merged.glob(".*tmp*")), "no partial output"


def test_a_write_that_fails_in_tokenize_is_one_line_naming_the_output(tmp_path, model):
    exp = tmp_path / "exp"
    dataset = parts_dataset(tmp_path, exp, docs=300)
    step("extract", exp, dataset)
    step("merge", exp, dataset)
    plan = tokenize_plan(exp, model)
    result = run_limited("tokenize_dataset", "run", "--plan", plan[1], "--index", "0", "--quiet", "--workers", "1",
                         max_bytes=100_000)
    assert result.returncode == 1
    line = one_error_line(result.stderr)
    assert "parts-t-tokenized/web/a-all_text_document.bin: File too large" in line
    out = exp / "parts-t-tokenized" / "web"
    assert not list(out.glob("a-all_text_document.*")) and not list(out.glob(".a-all*")), "no partial output"


def test_disk_full_names_the_file_system_and_its_room(tmp_path, capsys):
    from pipeline.errors import os_error_message, run_main

    message = os_error_message(OSError(errno.ENOSPC, "No space left on device"), tmp_path / "out" / "x.bin")
    assert message.startswith(f"{tmp_path / 'out' / 'x.bin'}: No space left on device (file system /")
    assert " free of " in message

    def missing():
        open(tmp_path / "nope.json")

    with pytest.raises(SystemExit) as exit_info:
        run_main(missing)
    assert exit_info.value.code == 1
    assert capsys.readouterr().err == f"error: {tmp_path / 'nope.json'}: No such file or directory\n"


# ---------------------------------------------------------------------------------------------
# 1. No knob is run as shell code: quotes, backticks and $( ) arrive as data or are refused
# ---------------------------------------------------------------------------------------------
PBS = ["SCHEDULER=pbs", "PBS_GROUP=g", "PBS_QUEUE=rt_HC"]
# (target, knob with {m} = the marker file the payload would create, other knobs); $$ is make's $, and
# $${{IFS}} a space that make's path functions do not see
INJECTIONS = [
    ("help", "SEED=1' ]] && touch {m}; [[ '1", []),              # the integer check itself
    ("help", "PARAM=`touch {m}`", []),
    ("download", "INCLUDE=data/x'; touch {m}; '", PBS),
    ("download", "DATASET=x`touch {m}`", PBS),
    ("download", "HF_ENDPOINT=http://h/'$$(touch {m})'", PBS),
    ("extract", "WALLTIME=1:00:00$$(touch {m})", PBS),
    ("extract", "PBS_GROUP=g'$$(touch {m})'", PBS),
    ("args", "WANDB_PROJECT=p'$$(touch {m})'", ["TOKENIZER_MODEL=/none"]),
    ("env-check", "ENV_DIR=/tmp/env$$(touch$${{IFS}}{m})", ["ENV_CHECK_ARGS=--no-gpu"]),
    ("env-check", "ENV_DIR=/tmp/env'`touch$${{IFS}}{m}`'", PBS),
    ("tokenize", "TOKENIZE_ARGS=--no-bos;touch$${{IFS}}{m}", ["TOKENIZER_MODEL=/none"]),
    ("soup", "SOUP_VERIFY=full'$$(touch$${{IFS}}{m})'", ["SOUP_CONFIG=/none.yaml", "DEPEND=1.pbs1", *PBS]),
]


@pytest.mark.parametrize("target, knob, others", INJECTIONS, ids=[f"{t}-{k.split('=')[0]}" for t, k, _ in INJECTIONS])
def test_no_knob_value_runs_as_shell_code(make, fake_pbs, tmp_path, target, knob, others):
    marker = tmp_path / "pwned"
    setting = knob.format(m=marker)
    result = make(target, *others, setting, check=False)
    assert not marker.exists(), f"{setting!r} ran as code:\n{result.stdout}\n{result.stderr}"
    name, _, value = setting.partition("=")
    for submission in fake_pbs.submissions():     # what was submitted carries the value itself
        if name in submission["variables"]:
            assert submission["variables"][name] == value.replace("$$", "$")


def test_env_check_under_pbs_passes_its_flags_as_data(make, fake_pbs, tmp_path):
    import shlex

    env_dir = "/tmp/env,with,commas"
    make("env-check", *PBS, f"ENV_DIR={env_dir}", "ENV_CHECK_ARGS=--no-gpu")
    step_args = fake_pbs.submissions()[-1]["variables"]["STEP_ARGS"]
    words = shlex.split(step_args)
    assert f"--env-dir={env_dir}" in words and words[-1] == "--no-gpu"
    assert "'" not in step_args, "re-quoted where a word needs it only: qsub -v cannot carry a quote"
    # a word that needs quotes cannot pass through qsub -v (the real one garbles it): refused before qsub
    refused = make("env-check", *PBS, "ENV_DIR=/tmp/envit's`here`", "ENV_CHECK_ARGS=--no-gpu", check=False)
    assert refused.returncode != 0 and "--var STEP_ARGS=" in refused.stderr and "cannot pass" in refused.stderr
    assert len(fake_pbs.submissions()) == 1


def test_run_step_splits_step_args_and_never_evaluates_them(exp_dir, tmp_path):
    marker = tmp_path / "pwned"
    env = {**os.environ, "REPO_DIR": str(SCRIPTS.parent), "EXP_DIR": str(exp_dir), "STEP": "status",
           "STEP_ARGS": f"--exp-dir '{exp_dir}' --dataset 'x$(touch {marker})' --tokenizer-name \"`touch {marker}`\""}
    result = subprocess.run(["bash", str(SCRIPTS.parent / "pbs" / "run_step.pbs")], env=env, capture_output=True,
                            text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not marker.exists()
    assert f"x$(touch {marker})" in result.stdout, "the value arrived as it was written"
    bad = subprocess.run(["bash", str(SCRIPTS.parent / "pbs" / "run_step.pbs")], capture_output=True, text=True,
                         env={**env, "STEP": "../tests/conftest"}, timeout=60)
    assert bad.returncode != 0 and "STEP='../tests/conftest': not a script of" in bad.stdout + bad.stderr


# ---------------------------------------------------------------------------------------------
# 3. A local job dies with its make: SIGTERM to make, SIGHUP to the terminal's process group
# ---------------------------------------------------------------------------------------------
SLOW_JOB = """#!/bin/bash
set -euo pipefail
source "${REPO_DIR:?}/pbs/common.sh"
job_start OUT_DIR
echo $$ > "${OUT_DIR}/job.pid"
sleep 120 &
wait
"""


def alive(pid: int) -> bool:
    try:
        state_field = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state_field != "Z"


def group_alive(pgid: int) -> bool:
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


@pytest.mark.parametrize("how", ["SIGTERM to make", "SIGHUP to its process group"])
def test_a_local_job_dies_with_its_make(exp_dir, tmp_path, how):
    import signal
    import time

    from conftest import REPO

    template = tmp_path / "slow.pbs"
    template.write_text(SLOW_JOB)
    env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS")}
    proc = subprocess.Popen(["make", "--no-print-directory", "-C", str(REPO), "-f", str(REPO / "Makefile"),
                             "-f", str(REPO / "tests" / "data" / "jobs.mk"), "test-job", f"EXP_DIR={exp_dir}",
                             f"TEMPLATE={template}", f"JOB_VARS=OUT_DIR={tmp_path}"],
                            env=env, start_new_session=True, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    pid_file = tmp_path / "job.pid"
    try:
        deadline = time.monotonic() + 60
        while not (pid_file.is_file() and pid_file.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.05)
        job = int(pid_file.read_text())
        assert alive(job)
        if how.startswith("SIGTERM"):
            os.kill(proc.pid, signal.SIGTERM)
        else:
            os.killpg(proc.pid, signal.SIGHUP)
        output = proc.communicate(timeout=60)[0].decode()
        assert proc.returncode != 0
        deadline = time.monotonic() + 10
        while group_alive(job) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not group_alive(job), f"the job's processes outlived make ({how}):\n{output}"
        assert "stopped (SIG" in output
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        if pid_file.is_file() and pid_file.read_text().strip():
            try:
                os.killpg(int(pid_file.read_text()), signal.SIGKILL)
            except ProcessLookupError:
                pass


# ---------------------------------------------------------------------------------------------
# 10. A path knob with a space is refused clearly (make's path functions split on spaces)
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("knob", ["EXP_DIR=sp ace/exp", "ENV_DIR=/env with space"])
def test_a_path_with_a_space_is_refused_naming_the_knob(make, knob, fake_pbs):
    name, _, value = knob.partition("=")
    result = make("env-check" if name == "ENV_DIR" else "extract", knob, *PBS, check=False)
    assert result.returncode != 0
    assert f"{name}='{value}' holds a space or tab: make's path functions cannot take one" in result.stderr
    assert "unrecognized arguments" not in result.stderr and fake_pbs.submissions() == []


# ---------------------------------------------------------------------------------------------
# 11. A qsub that hangs is given up after PBS_TIMEOUT seconds, with a message
# ---------------------------------------------------------------------------------------------

def test_a_hanging_qsub_times_out_with_a_message(make, exp_dir, tmp_path):
    import time

    from conftest import write_executable

    bin_dir = tmp_path / "bin"
    write_executable(bin_dir / "qsub", "#!/bin/sh\nexec sleep 60\n")
    started = time.monotonic()
    result = make("extract", *PBS, "PBS_TIMEOUT=1", env={"PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}"},
                  check=False)
    assert time.monotonic() - started < 30
    assert result.returncode != 0
    assert "qsub did not answer within 1 s (submitting extract.pbs as extract-dolmino-mix-1124)" in result.stderr
    assert "look with qstat -u $USER before submitting again" in result.stderr
    assert "Traceback" not in result.stderr
    bad = make("help", "PBS_TIMEOUT=soon", check=False)
    assert bad.returncode != 0 and "PBS_TIMEOUT must be a whole number" in bad.stderr


# ---------------------------------------------------------------------------------------------
# 12. Completeness: a revision pinned mid-upload, a partial raw tree, a gated repository
# ---------------------------------------------------------------------------------------------
MATH_SUBSETS = ["codesearchnet-owmfilter", "dolmino_math_synth", "gsm8k", "mathcoder2-synthmath",
                "metamath-owmfilter", "tinyGSM-MIND", "tulu_math"]


def dolmino_listing() -> dict:
    """Every folder the dolmino description expects, one tiny file each (only listings are read)."""
    from hub_server import HubFile

    files = {f"data/dclm/{d:04d}/dclm-0000.json.zst": HubFile(b"d%d" % d, lfs=True) for d in range(247)}
    for source in ("flan", "pes2o", "stackexchange", "wiki"):
        files[f"data/{source}/{source}-0000.json.gz"] = HubFile(source.encode(), lfs=True)
    for subset in MATH_SUBSETS:
        files[f"data/math/{subset}/0000.jsonl"] = HubFile(subset.encode())
    return files


def hub_env(hub, exp: Path) -> dict:
    from acquire_helpers import script_env
    return script_env(HF_ENDPOINT=hub.url, HF_HOME=str(exp.parent / "hf-home"))


def test_a_pinned_revision_taken_mid_upload_is_refused_and_compared_with_the_newest(tmp_path):
    from hub_server import HubRepo, HubServer
    from pipeline.datasets import load_dataset

    newest = dolmino_listing()
    pinned = {p: f for p, f in newest.items()
              if not (p.startswith("data/dclm/02") and p >= "data/dclm/0200") and "tulu_math" not in p}
    repo = HubRepo("allenai/dolmino-mix-1124", files=pinned, commit=load_dataset("dolmino-mix-1124").revision,
                   commits={"f" * 40: newest}, main="f" * 40)
    exp = tmp_path / "exp"
    with HubServer(repo) as hub:
        refused = run("download", "--exp-dir", str(exp), "--dataset", "dolmino-mix-1124", check=False,
                      env=hub_env(hub, exp))
        assert refused.returncode == 1 and "Traceback" not in refused.stderr
        assert "dclm: no files for {dir} = 0200-0246 (47 of 247 expected values missing)" in refused.stderr
        assert "math: no files for {subset} = tulu_math (1 of 7" in refused.stderr
        assert "make check-revision DATASET=dolmino-mix-1124" in refused.stderr
        assert hub.file_gets() == [], "nothing is fetched from an incomplete revision"

        compared = run("check_revision", "--dataset", "dolmino-mix-1124", check=False, env=hub_env(hub, exp))
        assert compared.returncode == 1
        assert "48 missing at the pin (dclm 47, math 1):\n    data/dclm/0200/dclm-0000.json.zst" in compared.stdout
        assert f"main    {'f' * 40}: 258 files" in compared.stdout and "expect at main: complete" in compared.stdout
        assert "expect at pinned: 2 gap(s)\n    dclm: no files for {dir} = 0200-0246" in compared.stdout
        assert f"pin {'f' * 40} (or a later complete revision)" in compared.stderr


def test_extract_refuses_a_raw_tree_without_what_the_description_expects(tmp_path):
    from pipeline.sample import generate

    exp = tmp_path / "exp"
    generate(exp / "dolmino-mix-1124", docs=2)
    refused = step("extract", exp, "dolmino-mix-1124", check=False)
    assert refused.returncode == 1
    assert "dclm: no files for {dir} = 0012-0246 (235 of 247" in refused.stderr
    assert not (exp / "dolmino-mix-1124-extracted").exists()
    partial = step("extract", exp, "dolmino-mix-1124", "--allow-partial", "--jobs", "2")
    assert "ALLOW_PARTIAL=1, going on" in partial.stderr
    assert (state(exp, "dolmino-mix-1124", "extract") / "done.json").is_file()


def test_a_gated_repository_says_how_to_get_access(tmp_path):
    from hub_server import HubFile, HubRepo, HubServer

    repo = HubRepo("OctoThinker/MegaMath-Web-Pro-Max", files={"000_00000.parquet": HubFile(b"p", lfs=True)},
                   gated=True)
    exp = tmp_path / "exp"
    with HubServer(repo) as hub:
        refused = run("download", "--exp-dir", str(exp), "--dataset", "megamath-web-pro-max", check=False,
                      env=hub_env(hub, exp))
    assert refused.returncode == 1
    line = one_error_line(refused.stderr)
    assert "OctoThinker/MegaMath-Web-Pro-Max is gated: open https://huggingface.co/datasets/OctoThinker/" in line
    assert "accept its terms" in line and "hf auth login" in line
