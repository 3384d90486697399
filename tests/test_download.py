"""make download: the real snapshot_download against a local server speaking the hub's endpoints."""
from __future__ import annotations

import json

import pytest

from acquire_helpers import DOLMINO, files_below, run, script_env, state
from hub_server import HubFile, HubServer, repo_from_tree
from pipeline.datasets import load_dataset
from pipeline.sample import generate


@pytest.fixture(scope="module")
def sample_source(tmp_path_factory):
    """The built-in dolmino-shaped sample as it would sit on the hub, plus a README."""
    root = tmp_path_factory.mktemp("hub") / "repo"
    sample = generate(root, docs=4)
    return root, sample


@pytest.fixture
def hub(sample_source):
    root, _ = sample_source
    repo = repo_from_tree("allenai/dolmino-mix-1124", root)
    repo.commit = load_dataset(DOLMINO).revision     # the pinned revision of the real description
    repo.files["README.md"] = HubFile(b"# dolmino-mix-1124\n")
    with HubServer(repo) as server:
        yield server


def expected_files(sample_source) -> list[str]:
    _, sample = sample_source
    return sorted(f.path for f in sample.files if not f.test_split)


def download(exp_dir, hub, *args, check=True, **env):
    # the sample on the test hub is a partial dolmino (12 of 247 dclm folders): accepted on purpose
    return run("download", "--exp-dir", str(exp_dir), "--dataset", DOLMINO, "--allow-partial", *args, check=check,
               env=script_env(HF_ENDPOINT=hub.url, HF_HOME=str(exp_dir.parent / "hf-home"), **env))


def test_download_fetches_described_files_then_transfers_nothing(make, exp_dir, hub, sample_source):
    root, _ = sample_source
    first = make("download", f"HF_ENDPOINT={hub.url}", "DOWNLOAD_WORKERS=4", "ALLOW_PARTIAL=1",
                 env={"HF_TOKEN": "hf_test_token", "HF_HOME": str(exp_dir.parent / "hf-home"),
                      "HF_HUB_DISABLE_PROGRESS_BARS": "1"})
    raw = exp_dir / DOLMINO
    wanted = expected_files(sample_source)
    assert files_below(raw) == wanted, "exactly the described files: no gsm8k test split, no README"
    for rel in wanted:
        assert (raw / rel).read_bytes() == (root / rel).read_bytes(), rel
    assert sorted(hub.file_gets()) == wanted, "each file transferred once"
    listing = [p for _, p, _, _ in hub.requests if "/tree/" in p]
    assert any("cursor=" in p for p in listing), "the listing is paginated and every page was read"
    hub_side = [auth for _, p, _, auth in hub.requests if p.startswith(("/api/datasets/", "/datasets/"))]
    assert hub_side and all(auth == "Bearer hf_test_token" for auth in hub_side), "HF_TOKEN is sent to the hub"
    assert all(auth is None for _, p, _, auth in hub.requests if p.startswith("/cdn/")), "but not to the CDN"
    done = json.loads((state(exp_dir, DOLMINO, "download") / "done.json").read_text())
    assert done["files"] == len(wanted) and done["revision"] == hub.repo.commit and done["verified_sizes"]
    manifest = json.loads((state(exp_dir, DOLMINO, "download") / "manifest.json").read_text())
    assert [f["path"] for f in manifest["files"]] == wanted
    assert "checked against the hub" in first.stdout

    hub.requests.clear()
    again = download(exp_dir, hub)
    assert "already complete" in again.stdout
    assert hub.requests == [], "a complete download makes no request at all"

    # without the sentinel (e.g. killed after the transfers): the listing is read, no file is fetched
    (state(exp_dir, DOLMINO, "download") / "done.json").unlink()
    download(exp_dir, hub)
    assert hub.file_gets() == []
    assert (state(exp_dir, DOLMINO, "download") / "done.json").is_file()


def test_broken_transfer_leaves_no_corrupt_file_and_rerun_completes(exp_dir, hub, sample_source):
    root, _ = sample_source
    broken_lfs, broken_plain = "data/dclm/0003/dclm-0001.json.zst", "data/math/tulu_math/personahub_math_v5/0000.jsonl"
    hub.faults = {broken_lfs: "truncate", broken_plain: "truncate"}
    failed = download(exp_dir, hub, check=False)
    assert failed.returncode != 0
    assert "re-run to resume" in failed.stderr
    raw = exp_dir / DOLMINO
    assert not (raw / broken_lfs).exists() and not (raw / broken_plain).exists()
    for rel in files_below(raw):
        assert (raw / rel).read_bytes() == (root / rel).read_bytes(), f"{rel} is corrupt"
    leftovers = [p for p in raw.rglob("*") if p.is_file() and p.name.endswith(".incomplete")]
    assert leftovers == []
    assert not (state(exp_dir, DOLMINO, "download") / "done.json").exists()

    hub.faults.clear()
    before = len(hub.file_gets())
    download(exp_dir, hub)
    refetched = hub.file_gets()[before:]
    assert set([broken_lfs, broken_plain]) <= set(refetched)
    assert len(refetched) < len(expected_files(sample_source)), "complete files are not fetched again"
    for rel in expected_files(sample_source):
        assert (raw / rel).read_bytes() == (root / rel).read_bytes()


def test_size_mismatch_is_reported(exp_dir, hub):
    name = "data/wiki/wiki-0000.json.gz"
    hub.listed_size[name] = len(hub.repo.files[name].data) + 7
    result = download(exp_dir, hub, check=False)
    assert result.returncode != 0
    assert f"{name}: size mismatch" in result.stderr
    assert not (state(exp_dir, DOLMINO, "download") / "done.json").exists()


def test_verify_catches_same_size_corruption_and_rerun_refetches(exp_dir, hub, sample_source):
    root, _ = sample_source
    download(exp_dir, hub)
    raw = exp_dir / DOLMINO
    lfs_file, plain_file = "data/pes2o/pes2o-0000.json.gz", "data/math/mathcoder2-synthmath/ajibawa-2023/0000.jsonl"
    for rel in (lfs_file, plain_file):
        data = bytearray((raw / rel).read_bytes())
        data[len(data) // 2] ^= 0xFF
        (raw / rel).write_bytes(bytes(data))
    result = download(exp_dir, hub, "--verify", "1", check=False)
    assert result.returncode != 0
    assert f"{lfs_file}: sha256 mismatch" in result.stderr
    assert f"{plain_file}: git blob sha1 mismatch" in result.stderr
    download(exp_dir, hub, "--verify", "1")
    for rel in (lfs_file, plain_file):
        assert (raw / rel).read_bytes() == (root / rel).read_bytes()
    done = json.loads((state(exp_dir, DOLMINO, "download") / "done.json").read_text())
    assert done["verified_hashes"] is True


def test_include_narrows_the_download(exp_dir, hub, sample_source):
    download(exp_dir, hub, "--include", "data/math/tinyGSM-MIND/**, data/wiki/*")
    assert files_below(exp_dir / DOLMINO) == [
        "data/math/tinyGSM-MIND/2students/0000.jsonl.gz", "data/math/tinyGSM-MIND/problem-solving/0000.jsonl.gz",
        "data/wiki/wiki-0000.json.gz"]
    nothing = download(exp_dir, hub, "--include", "data/nothing/*", check=False)
    assert nothing.returncode != 0 and "INCLUDE" in nothing.stderr


def test_hub_error_names_the_repository_and_endpoint(exp_dir, hub):
    hub.repo.repo_id = "someone/else"           # the server no longer knows allenai/dolmino-mix-1124
    result = download(exp_dir, hub, check=False)
    assert result.returncode != 0
    assert hub.url in result.stderr and "allenai/dolmino-mix-1124" in result.stderr
    assert "dolmino-mix-1124.yaml" in result.stderr
