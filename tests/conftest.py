"""Shared fixtures: the repo's scripts on sys.path, a strict qsub/qstat stand-in, real Slurm and PBS clusters,
and `make` runs."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SCRIPTS = REPO / "scripts"
DEMO = REPO / "demo"
BENCH = REPO / "bench"
FAKEPBS = REPO / "tests" / "fakepbs"
SHARED = REPO.parent / "shared"
for path in (SCRIPTS, DEMO, FAKEPBS):
    if str(path) not in sys.path:
        sys.path.insert(0, str(path))

import fakepbs  # noqa: E402  (needs the path above)


class FakePBS:
    """Handle on the stand-in's state folder: what was submitted, and job states for qstat."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder

    def submissions(self) -> list[dict]:
        return fakepbs.submissions(self.folder)

    def set_state(self, job_id: str, state: str, exit_status: int | None = None, substate: int | None = None) -> None:
        old = os.environ.get("FAKEPBS_DIR")
        os.environ["FAKEPBS_DIR"] = str(self.folder)
        try:
            fakepbs.set_state(job_id, state, exit_status, substate)
        finally:
            if old is None:
                os.environ.pop("FAKEPBS_DIR", None)
            else:
                os.environ["FAKEPBS_DIR"] = old


@pytest.fixture
def fake_pbs(tmp_path, monkeypatch) -> FakePBS:
    """qsub/qstat stand-ins first on PATH (for this process and the makes it starts)."""
    folder = tmp_path / "fakepbs"
    folder.mkdir()
    monkeypatch.setenv("FAKEPBS_DIR", str(folder))
    monkeypatch.setenv("PATH", f"{FAKEPBS}{os.pathsep}{os.environ['PATH']}")
    return FakePBS(folder)


@pytest.fixture
def exp_dir(tmp_path) -> Path:
    path = tmp_path / "exp"
    path.mkdir()
    return path


@pytest.fixture
def make(exp_dir):
    """run `make ARGS` in the repo with EXP_DIR in tmp; returns the CompletedProcess.

    check=True (default) fails the test, showing the output, on a non-zero exit.
    """
    def run(*args: str, check: bool = True, env: dict | None = None, makefiles: tuple[str, ...] = (),
            timeout: float = 600) -> subprocess.CompletedProcess:
        cmd = ["make", "--no-print-directory", "-C", str(REPO)]
        for makefile in makefiles:
            cmd += ["-f", str(makefile)]
        cmd += [f"EXP_DIR={exp_dir}", *args]
        full_env = {**os.environ, **(env or {})}
        full_env.pop("MAKEFLAGS", None)
        full_env.pop("MFLAGS", None)
        result = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout)
        if check and result.returncode != 0:
            pytest.fail(f"{' '.join(cmd)} exited {result.returncode}\nstdout:\n{result.stdout}\n"
                        f"stderr:\n{result.stderr}")
        return result
    return run


def run_script(name: str, *args: str, check: bool = True, env: dict | None = None,
               timeout: float = 600, folder: Path = SCRIPTS) -> subprocess.CompletedProcess:
    """Run <folder>/<name>.py (default: scripts/) with the test interpreter."""
    cmd = [sys.executable, str(folder / f"{name}.py"), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, **(env or {})},
                            timeout=timeout)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(cmd)} exited {result.returncode}\nstdout:\n{result.stdout}\nstderr:\n{result.stderr}")
    return result


def shared_path(*parts: str) -> Path:
    """A file in ../shared, or skip the test when this checkout has none."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} not present")
    return path


def write_executable(path: Path, text: str) -> Path:
    """A script file the tests run as a stand-in command (fake python, mpirun, ...)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(path.stat().st_mode | stat.S_IXUSR | stat.S_IXGRP | stat.S_IXOTH)
    return path


@pytest.fixture(scope="session")
def slurm_cluster(tmp_path_factory):
    """A real Slurm cluster of two nodes (tests/slurm_cluster.py), started once per test session; SLURM_CONF
    points every sbatch/squeue/scancel of the tests and the makes they run at it."""
    from slurm_cluster import SlurmCluster
    cluster = SlurmCluster(tmp_path_factory.mktemp("slurm"))
    why = cluster.start()
    if why:
        pytest.skip(f"no real Slurm here: {why}")
    old = os.environ.get("SLURM_CONF")
    os.environ["SLURM_CONF"] = str(cluster.conf)
    yield cluster
    cluster.stop()
    if old is None:
        os.environ.pop("SLURM_CONF", None)
    else:
        os.environ["SLURM_CONF"] = old


@pytest.fixture(scope="session")
def pbs_cluster(tmp_path_factory):
    """A real OpenPBS of two nodes (tests/pbs_cluster.py: built once per machine, started once per test session,
    stopped at its end, also when a test failed). Its clients are wrappers in `pbs_cluster.bin`; put that folder
    first on PATH (the `real_pbs` fixture of tests/test_pbs.py does)."""
    import atexit
    from pbs_cluster import PBSCluster
    cluster = PBSCluster(tmp_path_factory.mktemp("pbs"))
    atexit.register(cluster.stop)           # should the session end without its teardown
    why = cluster.start()
    if why:
        pytest.skip(f"no real PBS here: {why}")
    yield cluster
    cluster.stop()


@pytest.fixture(scope="session")
def pretrained(tmp_path_factory):
    """A pretrained checkpoint written by megatron-core's own save path (tests/train_helpers.py)."""
    from train_helpers import pretrained_checkpoint
    return pretrained_checkpoint(tmp_path_factory)


@pytest.fixture
def setup(exp_dir, tmp_path, pretrained):
    """What make train needs: data, list, tokenizer file, fake Megatron (train_helpers.TrainSetup)."""
    from train_helpers import TrainSetup
    return TrainSetup(exp_dir, tmp_path, pretrained)


@pytest.fixture
def launch(setup, tmp_path, monkeypatch):
    """A fake mpirun and python on PATH, and an ENV_DIR whose activate.sh sets MEGATRON_PATH:
    (ENV_DIR, the file the fake mpirun records its launch into)."""
    from train_helpers import fake_launch
    record = tmp_path / "launch.json"
    for name, value in fake_launch(tmp_path / "bin", tmp_path / "env", record).items():
        monkeypatch.setenv(name, value)
    return tmp_path / "env", record
