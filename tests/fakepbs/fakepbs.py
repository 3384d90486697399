"""A strict stand-in for PBS Professional's qsub and qstat (as on ABCI 3.0), for the tests.

It accepts the documented PBS Professional grammar and rejects anything else with exit status 2 and a
message on stderr, the way qsub does on a usage error. Each accepted submission is appended to
$FAKEPBS_DIR/submissions.jsonl and gets an id like `1000.pbs1` (`1000[].pbs1` for arrays, whose subjobs
`1000[0].pbs1` ... `qstat -t` lists). Job states live in $FAKEPBS_DIR/jobs.json; tests change them to answer
`qstat -f -x -F json`. Where PBS's answers matter, they are those a real server gave (OpenPBS, run by
tests/test_pbs.py): a finished job is `F` with `substate` 92 (exit 0, or never ran: deleted because a
dependency failed, without `Exit_status`), 93 (failed) or 91 (qdel); without -x a finished id gives exit 35,
an unknown one 153, and `-F json` prints its skeleton all the same; given several ids, `-F json` prints only
the first job found (OpenPBS 23.06 does); a quote or backslash inside a -v value is refused (the real qsub
garbles it). With FAKEPBS_NO_HISTORY set, the server keeps no job history: finished jobs are unknown, and
`qstat -x` prints nothing but a message, even for a running job.

Only the Python standard library is used: the stand-in runs with whatever python3 is on PATH.
"""
from __future__ import annotations

import fcntl
import json
import os
import re
import sys
import time
from pathlib import Path

SERVER = "pbs1"
NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_.+-]{0,235}$")
VAR_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
JOB_ID = re.compile(r"^\d+(\[\d*\])?(\.[A-Za-z0-9_.-]+)?$")
QUEUE = re.compile(r"^[A-Za-z0-9_.-]+(@[A-Za-z0-9_.-]+)?$")
ARRAY = re.compile(r"^(\d+)-(\d+)(?::(\d+))?(?:%(\d+))?$")
WALLTIME = re.compile(r"^(?:(?:(\d+):)?(\d+):)?(\d+)$")
SELECT = re.compile(r"^[1-9]\d*(:[A-Za-z_]+=[^:,]+)*$")
DEPEND_TYPES = {"after", "afterok", "afternotok", "afterany", "before", "beforeok", "beforenotok",
                "beforeany", "on", "runone"}
RESOURCES = {"select", "walltime", "place", "ncpus", "ngpus", "mem", "nodes"}
MAX_WALLTIME_S = 168 * 3600
# option letter -> takes an argument
OPTIONS = {"a": True, "A": True, "c": True, "C": True, "e": True, "f": False, "h": False, "I": False,
           "j": True, "J": True, "k": True, "l": True, "m": True, "M": True, "N": True, "o": True,
           "p": True, "P": True, "q": True, "r": True, "S": True, "u": True, "v": True, "V": False,
           "W": True, "X": False, "z": False}


class Usage(Exception):
    """A usage error: qsub prints it and exits 2."""


def state_dir() -> Path:
    folder = os.environ.get("FAKEPBS_DIR")
    if not folder:
        print("fake PBS: FAKEPBS_DIR is not set", file=sys.stderr)
        sys.exit(1)
    path = Path(folder)
    path.mkdir(parents=True, exist_ok=True)
    return path


def parse_variable_list(text: str) -> dict[str, str]:
    """qsub -v: NAME[=VALUE] items split on commas; a value may be quoted with ' or \"."""
    result: dict[str, str] = {}
    i, n = 0, len(text)
    while i < n:
        match = re.match(r"[A-Za-z_][A-Za-z0-9_]*", text[i:])
        if not match:
            raise Usage(f"qsub: illegal -v value: bad variable name at {text[i:]!r}")
        name = match.group(0)
        i += len(name)
        value = None
        if i < n and text[i] == "=":
            i += 1
            if i < n and text[i] in "'\"":
                quote = text[i]
                end = text.find(quote, i + 1)
                if end < 0:
                    raise Usage(f"qsub: illegal -v value: unterminated {quote} quote for {name}")
                value = text[i + 1:end]
                if "'" in value or '"' in value or "\\" in value:
                    raise Usage(f"qsub: -v value of {name}: a quote or backslash inside a quoted value (the real "
                                "qsub garbles it)")
                i = end + 1
                if i < n and text[i] != ",":
                    raise Usage(f"qsub: illegal -v value: text after the closing quote of {name}")
            else:
                end = text.find(",", i)
                end = n if end < 0 else end
                value = text[i:end]
                if "'" in value or '"' in value or "\\" in value:
                    raise Usage(f"qsub: illegal -v value: stray quote or backslash in the value of {name}")
                i = end
        if value is None:
            value = os.environ.get(name, "")
        result[name] = value
        if i < n:
            if text[i] != ",":
                raise Usage(f"qsub: illegal -v value near {text[i:]!r}")
            i += 1
            if i == n:
                raise Usage("qsub: illegal -v value: trailing comma")
    if not result:
        raise Usage("qsub: illegal -v value: empty list")
    return result


def walltime_seconds(text: str) -> int:
    match = WALLTIME.match(text)
    if not match:
        raise Usage(f"qsub: Illegal attribute or resource value Resource_List.walltime={text}")
    hours, minutes, seconds = (int(g) if g else 0 for g in match.groups())
    return hours * 3600 + minutes * 60 + seconds


def parse_resources(text: str, into: dict[str, str]) -> None:
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not sep or not value:
            raise Usage(f"qsub: illegal -l value {item!r}")
        if key not in RESOURCES:
            raise Usage(f"qsub: Unknown resource Resource_List.{key}")
        if key == "select" and not SELECT.match(value):
            raise Usage(f"qsub: Illegal attribute or resource value Resource_List.select={value}")
        if key == "walltime":
            walltime_seconds(value)
        into[key] = value


def parse_depend(text: str) -> list[tuple[str, list[str]]]:
    clauses = []
    for clause in text.split(","):
        kind, sep, ids = clause.partition(":")
        if kind not in DEPEND_TYPES or not sep or not ids:
            raise Usage(f"qsub: illegal -W value: depend={text}")
        id_list = ids.split(":")
        for job_id in id_list:
            if not JOB_ID.match(job_id):
                raise Usage(f"qsub: illegal -W value: {job_id!r} is not a job id")
        clauses.append((kind, id_list))
    return clauses


def parse_options(argv: list[str], opts: dict) -> list[str]:
    """getopt-style parsing into `opts`; returns the operands."""
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "--":
            return argv[i + 1:]
        if not arg.startswith("-") or arg == "-":
            return argv[i:]
        letter = arg[1]
        if letter not in OPTIONS:
            raise Usage(f"qsub: invalid option -- '{letter}'")
        if OPTIONS[letter]:
            if len(arg) > 2:
                value = arg[2:]
            else:
                i += 1
                if i >= len(argv):
                    raise Usage(f"qsub: option requires an argument -- '{letter}'")
                value = argv[i]
            apply_option(letter, value, opts)
        else:
            if len(arg) > 2:
                raise Usage(f"qsub: invalid option -- '{arg[2]}'")
            opts["flags"].add(letter)
        i += 1
    return []


def apply_option(letter: str, value: str, opts: dict) -> None:
    if letter == "N":
        if not NAME.match(value):
            raise Usage(f"qsub: illegal -N value {value!r}")
        opts["N"] = value
    elif letter == "P":
        if not value or any(c.isspace() for c in value):
            raise Usage(f"qsub: illegal -P value {value!r}")
        opts["P"] = value
    elif letter == "q":
        if not QUEUE.match(value):
            raise Usage(f"qsub: illegal -q value {value!r}")
        opts["q"] = value
    elif letter == "l":
        parse_resources(value, opts["l"])
    elif letter == "v":
        opts["v"].update(parse_variable_list(value))
    elif letter == "j":
        if value not in ("oe", "eo", "n"):
            raise Usage(f"qsub: illegal -j value {value!r}")
        opts["j"] = value
    elif letter == "k":
        if not re.fullmatch(r"n|d?[oe]{1,2}|d", value):
            raise Usage(f"qsub: illegal -k value {value!r}")
        opts["k"] = value
    elif letter == "m":
        if not re.fullmatch(r"n|[abe]{1,3}", value):
            raise Usage(f"qsub: illegal -m value {value!r}")
        opts["m"] = value
    elif letter in ("o", "e"):
        if not value:
            raise Usage(f"qsub: illegal -{letter} value (empty path)")
        opts[letter] = value
    elif letter == "W":
        key, sep, rest = value.partition("=")
        if not sep:
            raise Usage(f"qsub: illegal -W value {value!r}")
        if key == "depend":
            opts["depend"] = parse_depend(rest)
        elif key in ("group_list", "block", "sandbox", "umask"):
            opts["W"][key] = rest
        else:
            raise Usage(f"qsub: illegal -W value {value!r}")
    elif letter == "J":
        match = ARRAY.match(value)
        if not match or int(match[2]) <= int(match[1]):
            raise Usage(f"qsub: illegal -J value {value!r}")
        opts["J"] = value
    elif letter == "r":
        if value not in ("y", "n"):
            raise Usage(f"qsub: illegal -r value {value!r}")
        opts["r"] = value
    else:
        opts.setdefault("other", {})[letter] = value


def script_directives(script: Path) -> list[str]:
    """Arguments from the leading `#PBS` lines (PBS stops at the first command line)."""
    args: list[str] = []
    for line in script.read_text(encoding="utf-8", errors="replace").splitlines():
        stripped = line.strip()
        if not stripped or (stripped.startswith("#") and not stripped.startswith("#PBS")):
            continue
        if not stripped.startswith("#PBS"):
            break
        words = stripped[4:].split()
        if not words or not words[0].startswith("-"):
            raise Usage(f"qsub: directive error: {line!r}")
        args += words
    return args


def new_opts() -> dict:
    return {"flags": set(), "l": {}, "v": {}, "W": {}}


def next_id(folder: Path, array: bool) -> str:
    counter = folder / "counter"
    with open(folder / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        number = int(counter.read_text()) + 1 if counter.exists() else 1000
        counter.write_text(str(number))
    return f"{number}[].{SERVER}" if array else f"{number}.{SERVER}"


def update_jobs(folder: Path, change) -> dict:
    with open(folder / "lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        path = folder / "jobs.json"
        jobs = json.loads(path.read_text()) if path.exists() else {}
        change(jobs)
        path.write_text(json.dumps(jobs, indent=1))
    return jobs


def qsub(argv: list[str]) -> int:
    folder = state_dir()
    if os.environ.get("FAKEPBS_QSUB_FAIL"):
        print(f"qsub: {os.environ['FAKEPBS_QSUB_FAIL']}", file=sys.stderr)
        return 1
    try:
        cli = new_opts()
        operands = parse_options(argv, cli)
        if len(operands) != 1:
            raise Usage("usage: qsub [options] script (exactly one job script)")
        script = Path(operands[0])
        if not script.is_file():
            raise Usage(f"qsub: script file:: No such file or directory: {script}")
        merged = new_opts()
        # directives first, the command line overrides them
        parse_options(script_directives(script), merged)
        parse_options(argv, merged)
        if "P" not in merged:
            raise Usage("qsub: -P <group> is mandatory on this system")
        if "select" not in merged["l"]:
            raise Usage("qsub: -l select=<N> is mandatory on this system")
        if "q" not in merged:
            raise Usage("qsub: -q <queue or reservation> is mandatory on this system")
        if "walltime" in merged["l"] and walltime_seconds(merged["l"]["walltime"]) > MAX_WALLTIME_S:
            raise Usage(f"qsub: walltime {merged['l']['walltime']} exceeds the 168:00:00 limit")
        if "V" in merged["flags"]:
            merged["v"] = {**dict(os.environ), **merged["v"]}
    except Usage as exc:
        print(exc, file=sys.stderr)
        return 2
    job_id = next_id(folder, "J" in merged)
    entry = {
        "job_id": job_id, "time": time.time(), "argv": argv, "script": str(script.resolve()),
        "name": merged.get("N", script.name), "project": merged["P"], "queue": merged["q"],
        "resources": merged["l"], "variables": merged["v"], "array": merged.get("J"),
        "depend": [[kind, ids] for kind, ids in merged.get("depend", [])],
        "join": merged.get("j"), "output": merged.get("o"), "flags": sorted(merged["flags"]),
    }
    with open(folder / "submissions.jsonl", "a", encoding="utf-8") as handle:
        handle.write(json.dumps(entry) + "\n")
    record = {"Job_Name": entry["name"], "job_state": "H" if entry["depend"] else "Q",
              "substate": 22 if entry["depend"] else 10, "queue": entry["queue"], "project": entry["project"],
              "Resource_List": entry["resources"], "array": bool(entry["array"])}
    if entry["depend"]:
        record["depend"] = ",".join(f"{kind}:{':'.join(ids)}" for kind, ids in entry["depend"])

    def add(jobs):
        jobs[job_id] = record
        if entry["array"]:
            match = ARRAY.match(entry["array"])
            for index in range(int(match[1]), int(match[2]) + 1, int(match[3] or 1)):
                jobs[job_id.replace("[]", f"[{index}]")] = {**record, "array": False, "subjob": True}
    update_jobs(folder, add)
    print(job_id)
    return 0


def json_answer(jobs: dict) -> str:
    """qstat -F json's output: the skeleton, and "Jobs" only when there are some."""
    answer = {"timestamp": int(time.time()), "pbs_version": "23.06.06", "pbs_server": SERVER}
    if jobs:
        answer["Jobs"] = jobs
    return json.dumps(answer, indent=4)


def qstat(argv: list[str]) -> int:
    folder = state_dir()
    full = history = subjobs = False
    fmt = None
    ids: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg == "-f":
            full = True
        elif arg == "-x":
            history = True
        elif arg == "-t":
            subjobs = True
        elif arg == "-F":
            i += 1
            fmt = argv[i] if i < len(argv) else None
            if fmt not in ("json", "dsv"):
                print("qstat: -F needs json or dsv", file=sys.stderr)
                return 2
        elif arg.startswith("-"):
            print(f"qstat: invalid option -- '{arg[1:]}'", file=sys.stderr)
            return 2
        else:
            ids.append(arg)
        i += 1
    if fmt == "json" and not full:
        print("qstat: -F json requires -f", file=sys.stderr)
        return 2
    path = folder / "jobs.json"
    jobs = json.loads(path.read_text()) if path.exists() else {}
    shown = {}
    status = 0
    if os.environ.get("FAKEPBS_NO_HISTORY"):    # job_history_enable = False
        if history:     # -x is refused, even for a running job: a message, exit 0, and the skeleton
            for job_id in ids:
                print(f"qstat: PBS is not configured to maintain job history {job_id}", file=sys.stderr)
            if fmt == "json":
                print(json_answer({}))
            return 0
        jobs = {k: v for k, v in jobs.items() if v.get("job_state") != "F"}    # gone once finished
    for job_id in ids or [k for k, v in jobs.items() if not v.get("subjob")]:
        if job_id not in jobs:
            print(f"qstat: Unknown Job Id {job_id}", file=sys.stderr)
            status = 153
            continue
        job = jobs[job_id]
        if job.get("job_state") == "F" and not history:
            print(f"qstat: {job_id} Job has finished, use -x or -H to obtain historical job information",
                  file=sys.stderr)
            status = 35
            continue
        found = {job_id: job}
        if subjobs and "[]" in job_id:
            found.update({k: v for k, v in jobs.items() if v.get("subjob") and k.split("[")[0] == job_id.split("[")[0]})
        if fmt == "json" and ids and shown:
            continue      # OpenPBS 23.06: with several ids only the first job found is printed
        shown.update(found)
    if fmt == "json":
        print(json_answer(shown))
    else:
        for job_id, job in shown.items():
            print(f"{job_id:<20} {job.get('Job_Name', ''):<16} {job.get('job_state', '')}")
    return status


def set_state(job_id: str, state: str, exit_status: int | None = None, substate: int | None = None) -> None:
    """For tests: move a job to state Q/R/H/F. F's substate is, unless given, what PBS gives: 92 (exit 0, or
    never ran when there is no exit status) or 93 (failed); 91 is a job qdel ended."""
    def change(jobs):
        job = jobs.setdefault(job_id, {})
        job["job_state"] = state
        if exit_status is not None:
            job["Exit_status"] = exit_status
        if substate is not None:
            job["substate"] = substate
        elif state == "F":
            job["substate"] = 93 if exit_status not in (0, None) else 92
        else:
            job["substate"] = {"Q": 10, "H": 22, "R": 42}.get(state, 0)
    update_jobs(state_dir(), change)


def submissions(folder: str | os.PathLike | None = None) -> list[dict]:
    path = Path(folder or state_dir()) / "submissions.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
